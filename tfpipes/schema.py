"""The data set's schema: what preprocess wrote and what train and export read.

``schema.json`` names each feature with its dtype and shape, the label column and the task it
implies (integer or string label: classification; float label: regression).
"""

from __future__ import annotations

import dataclasses
import json

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.layout import DTYPES, SCHEMA

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # one of DTYPES
    shape: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Schema:
    """Features (label excluded), the label column, and the task the label implies."""

    features: tuple[Feature, ...]
    label: Feature
    task: str  # "classification" | "regression"
    num_classes: int = 0  # classification only
    label_vocabulary: tuple[str, ...] = ()  # string labels only: index = class id

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def to_json(self) -> str:
        d = {
            "version": SCHEMA_VERSION,
            "features": [dataclasses.asdict(f) | {"shape": list(f.shape)} for f in self.features],
            "label": dataclasses.asdict(self.label) | {"shape": list(self.label.shape)},
            "task": self.task,
            "num_classes": self.num_classes,
            "label_vocabulary": list(self.label_vocabulary),
        }
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "schema.json") -> Schema:
        try:
            d = json.loads(text)
            feats = tuple(
                Feature(f["name"], f["dtype"], tuple(f.get("shape", ()))) for f in d["features"]
            )
            lab = d["label"]
            schema = cls(
                features=feats,
                label=Feature(lab["name"], lab["dtype"], tuple(lab.get("shape", ()))),
                task=d["task"],
                num_classes=int(d.get("num_classes", 0)),
                label_vocabulary=tuple(d.get("label_vocabulary", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"{where}: not a tfpipes schema ({e.__class__.__name__}: {e})"
            ) from None
        for f in (*schema.features, schema.label):
            if f.dtype not in DTYPES:
                raise UserError(f"{where}: feature {f.name!r} has unknown dtype {f.dtype!r}")
        return schema


def load_schema(data_dir: str) -> Schema:
    path = storage.join(data_dir, SCHEMA)
    if not storage.exists(path):
        raise UserError(f"{path}: no {SCHEMA}; is {data_dir} a tfpipes data set?")
    return Schema.from_json(storage.read_text(path), where=path)


def load_forced_types(path: str) -> dict[str, str]:
    """Read a user's type overrides: a tfpipes schema.json, or a JSON object {column: dtype}."""
    text = storage.read_text(path)
    try:
        d = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if isinstance(d, dict) and "features" in d:
        s = Schema.from_json(text, where=path)
        return {f.name: f.dtype for f in (*s.features, s.label)}
    if not isinstance(d, dict) or not all(v in DTYPES for v in d.values()):
        raise UserError(f"{path}: expected {{column: dtype}} with dtype in {', '.join(DTYPES)}")
    return dict(d)
