"""The committed data set a run trains on: verified, its schema and statistics read, once."""

from __future__ import annotations

import dataclasses

from tfpipes import layout
from tfpipes import manifest as manifest_lib
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
        check_records(root, manifest, schema)
        return cls(root, manifest, schema, stats)
