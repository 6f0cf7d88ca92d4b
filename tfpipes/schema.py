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

SCHEMA_VERSION = 1  # written when no feature has a kind; 2 with kinds


# What a feature is, which decides how the model encodes it (schema.json v2). A v1 schema has no
# kinds: numeric for float32/int64, categorical for string (Feature.effective_kind).
KINDS = ("numeric", "categorical", "id", "boolean", "timestamp")
# The stored dtypes each kind allows: booleans are 0/1 and timestamps epoch seconds (UTC).
KIND_DTYPES = {
    "numeric": ("float32", "int64"),
    "categorical": ("string", "int64"),
    "id": ("string", "int64"),
    "boolean": ("int64",),
    "timestamp": ("int64",),
}


@dataclasses.dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # one of DTYPES: what the tf.train.Example stores
    shape: tuple[int, ...] = ()
    kind: str = ""  # one of KINDS; "" (v1): from the dtype
    format: str = ""  # timestamps: the input's strptime format ("" for ISO 8601)

    @property
    def effective_kind(self) -> str:
        return self.kind or ("categorical" if self.dtype == "string" else "numeric")

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.kind:
            d["kind"] = self.kind
        if self.format:
            d["format"] = self.format
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Feature:
        """A feature from its JSON object; ValueError when a field has the wrong type."""
        for key in ("name", "dtype"):
            if not isinstance(d[key], str) or not d[key]:
                raise ValueError(f"feature {key} {d[key]!r}: expected a non-empty string")
        shape = d.get("shape", ())
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(n, int) and not isinstance(n, bool) for n in shape
        ):
            raise ValueError(f"feature {d['name']!r}: shape {shape!r} is not a list of integers")
        return cls(
            d["name"],
            d["dtype"],
            tuple(d.get("shape", ())),
            str(d.get("kind", "")),
            str(d.get("format", "")),
        )


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
        kinds = any(f.kind or f.format for f in (*self.features, self.label))
        d = {
            "version": 2 if kinds else SCHEMA_VERSION,
            "features": [f.to_dict() for f in self.features],
            "label": self.label.to_dict(),
            "task": self.task,
            "num_classes": self.num_classes,
            "label_vocabulary": list(self.label_vocabulary),
        }
        return json.dumps(d, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "schema.json") -> Schema:
        try:
            d = json.loads(text)
            schema = cls(
                features=tuple(Feature.from_dict(f) for f in d["features"]),
                label=Feature.from_dict(d["label"]),
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
            if f.kind and f.dtype not in KIND_DTYPES.get(f.kind, ()):
                allowed = KIND_DTYPES.get(f.kind)
                raise UserError(
                    f"{where}: feature {f.name!r}: kind {f.kind!r} "
                    + (f"needs dtype {' or '.join(allowed)}" if allowed else "is unknown")
                    + f" (choose from {', '.join(KINDS)})"
                )
        return schema


def load_schema(data_dir: str) -> Schema:
    path = storage.join(data_dir, SCHEMA)
    if not storage.exists(path):
        raise UserError(f"{path}: no {SCHEMA}; is {data_dir} a tfpipes data set?")
    return Schema.from_json(storage.read_text(path), where=path)


def load_forced_types(path: str) -> dict[str, str]:
    """The dtypes a user's overrides (:func:`load_overrides`) name, by column."""
    return {k: v["dtype"] for k, v in load_overrides(path).items() if v.get("dtype")}


def load_overrides(path: str) -> dict[str, dict]:
    """Read a user's overrides of some columns: a tfpipes schema.json, a JSON object
    ``{column: dtype}``, or ``{column: {"dtype": ..., "kind": ..., "format": ...}}`` (any of the
    three keys may be left out). Returns ``{column: {"dtype", "kind", "format"}}`` with ""
    for what is not given; UserError naming the file and column for anything else."""
    text = storage.read_text(path)
    try:
        d = json.loads(text)
    except ValueError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if isinstance(d, dict) and "features" in d:
        s = Schema.from_json(text, where=path)
        return {
            f.name: {"dtype": f.dtype, "kind": f.kind, "format": f.format}
            for f in (
                *s.features,
                s.label,
            )
        }
    shape = (
        f"expected {{column: dtype}} with dtype in {', '.join(DTYPES)}, or {{column: "
        '{"dtype": ..., "kind": ..., "format": ...}}'
    )
    if not isinstance(d, dict):
        raise UserError(f"{path}: {shape}")
    out = {}
    for col, v in d.items():
        v = {"dtype": v} if isinstance(v, str) else v
        if not isinstance(v, dict) or set(v) - {"dtype", "kind", "format"}:
            raise UserError(f"{path}: column {col!r}: {shape}")
        dtype, kind, fmt = (v.get(k, "") for k in ("dtype", "kind", "format"))
        if not all(isinstance(x, str) for x in (dtype, kind, fmt)):
            raise UserError(f"{path}: column {col!r}: dtype, kind and format are strings")
        if dtype and dtype not in DTYPES:
            raise UserError(f"{path}: column {col!r}: {shape}")
        if kind and kind not in KINDS:
            raise UserError(
                f"{path}: column {col!r}: kind {kind!r} is not one of {', '.join(KINDS)}"
            )
        if kind and dtype and dtype not in KIND_DTYPES[kind]:
            raise UserError(
                f"{path}: column {col!r}: kind {kind!r} needs dtype "
                + " or ".join(KIND_DTYPES[kind])
            )
        if fmt and kind not in ("", "timestamp"):
            raise UserError(f"{path}: column {col!r}: a format is for timestamps only")
        out[col] = {"dtype": dtype, "kind": kind or ("timestamp" if fmt else ""), "format": fmt}
    return out
