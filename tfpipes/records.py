"""Per-row ``tf.train.Example`` records of a data set, whatever its record layout.

Export verification, the warmup requests for TF Serving, the gate's evaluation and the demo
send per-row Examples to a SavedModel, as TF Serving's clients do. A "rows" data set holds
them as they are; a "blocks" data set (``layout.RECORD_LAYOUTS``) holds blocks of rows column
by column, and :func:`iter_row_records` rebuilds each row's record from its block with the
codec preprocess writes per-row records with: the same bytes a "rows" data set of the same
input holds, missing cells left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from tfpipes.errors import UserError
from tfpipes.layout import BLOCK_MISSING_KEY
from tfpipes.manifest import DatasetManifest
from tfpipes.schema import Schema

_BLOCKS_PER_READ = 16


def iter_row_records(
    root: str, manifest: DatasetManifest, schema: Schema, split: str, limit: int | None = None
) -> Iterator[list[bytes]]:
    """Lists of serialized per-row Examples of ``split`` (local data set ``root``), in shard
    order, at most ``limit`` rows in all. UserError for a corrupt shard."""
    import tensorflow as tf

    files = [os.path.join(root, p) for p in manifest.shard_paths(split)]
    if not files or limit == 0:
        return
    ds = tf.data.TFRecordDataset(files, compression_type=manifest.compression or None)
    left = limit if limit is not None else -1
    per = 1024 if manifest.layout == "rows" else _BLOCKS_PER_READ
    try:
        for records in ds.batch(per):
            rows = (
                list(records.numpy())
                if manifest.layout == "rows"
                else rows_of_blocks(records, schema)
            )
            if left >= 0:
                rows = rows[:left]
                left -= len(rows)
            yield rows
            if left == 0:
                return
    except tf.errors.DataLossError as e:
        from tfpipes.errors import first_line

        raise UserError(f"{root}: corrupt {split} shard ({first_line(e)})") from None


def read_row_records(
    root: str, manifest: DatasetManifest, schema: Schema, split: str, limit: int | None = None
) -> list[bytes]:
    """:func:`iter_row_records` as one list."""
    return [r for rows in iter_row_records(root, manifest, schema, split, limit) for r in rows]


def dataset_row_records(root: str, split: str, limit: int | None = None) -> list[bytes]:
    """:func:`read_row_records` of the committed local data set ``root`` (its manifest and
    schema read here)."""
    from tfpipes.manifest import read_manifest
    from tfpipes.schema import load_schema

    return read_row_records(root, read_manifest(root), load_schema(root), split, limit)


def row_record_dataset(root: str, manifest: DatasetManifest, schema: Schema, split: str, batch):
    """A ``tf.data`` pipeline of batches of ``batch`` serialized per-row Examples."""
    import tensorflow as tf

    def rows():
        for part in iter_row_records(root, manifest, schema, split):
            yield from part

    ds = tf.data.Dataset.from_generator(rows, output_signature=tf.TensorSpec([], tf.string))
    return ds.batch(batch)


def rows_of_blocks(records, schema: Schema) -> list[bytes]:
    """The per-row serialized Examples of serialized block records (a 1-D string tensor)."""
    import tensorflow as tf

    from tfpipes.input_pipeline import block_spec
    from tfpipes.preprocess.example_codec import encode_examples

    spec = block_spec(schema)
    spec[BLOCK_MISSING_KEY] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
    parsed = tf.io.parse_example(records, spec)
    columns = (*schema.features, schema.label)
    label = parsed[schema.label.name]
    splits = label.row_splits.numpy()
    n = int(splits[-1])
    if n == 0:
        return []
    present = np.ones((n, len(columns)), dtype=bool)
    missing = parsed[BLOCK_MISSING_KEY]
    cells = missing.flat_values.numpy()
    if len(cells):
        block = np.repeat(np.arange(len(splits) - 1), np.diff(missing.row_splits.numpy()))
        rows = splits[block] + cells // len(columns)
        present[rows, cells % len(columns)] = False
    cols = []
    for c, f in enumerate(columns):
        values = parsed[f.name].flat_values.numpy()
        if len(values) != n:
            raise UserError(f"block records: feature {f.name!r} has {len(values)} values, not {n}")
        cols.append((f.name, f.dtype, values, present[:, c]))
    flat, offsets = encode_examples(cols)
    data = flat.tobytes()
    return [data[offsets[i] : offsets[i + 1]] for i in range(n)]
