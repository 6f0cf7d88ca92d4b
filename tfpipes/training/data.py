"""The committed data set a run trains on: verified, its schema and statistics read, once."""

from __future__ import annotations

import dataclasses

from tfpipes import layout, storage
from tfpipes import manifest as manifest_lib
from tfpipes.errors import UserError
from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """A data set on local disk (``storage.local_dir`` of ``TrainConfig.data``)."""

    root: str
    manifest: DatasetManifest
    schema: Schema
    stats: dict

    @classmethod
    def load(cls, root: str) -> TrainingData:
        """Verify the data set in ``root`` against its manifest and check that its records
        parse with its schema; UserError naming the file otherwise."""
        from tfpipes.input_pipeline import check_records
        from tfpipes.schema import load_schema

        manifest = manifest_lib.verify_dataset(root)
        schema = load_schema(root)
        stats = layout.read_stats(root)
        check_stats(stats, storage.join(root, layout.STATS))
        check_records(root, manifest, schema)
        return cls(root, manifest, schema, stats)


def check_stats(stats: dict, where: str) -> None:
    """UserError naming ``where`` unless ``stats`` has the shape the model reads: ``features``
    an object of per-feature objects whose ``mean`` and ``std``, where present, are numbers."""
    features = stats.get("features", {})
    if not isinstance(features, dict):
        raise UserError(f"{where}: 'features' must be a JSON object of per-feature statistics")
    for name, feature in features.items():
        if not isinstance(feature, dict):
            raise UserError(f"{where}: features[{name!r}] must be a JSON object")
        for key in ("mean", "std"):
            value = feature.get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{where}: features[{name!r}][{key!r}] must be a number")
