"""Reading Parquet: a file streamed as record batches, and each batch's typed, validated
columns.

Parquet files keep their own types (integers and booleans -> int64, floats and decimals ->
float32, the rest -> string); nulls, NaN and infinities are bad rows, located by row number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import Block, Plan
from tfpipes.preprocess.validation import BadBlock, convert_column, one_line

PARQUET_BATCH_ROWS = 65_536


class ParquetInput:
    """One Parquet file streamed as record batches of ``PARQUET_BATCH_ROWS`` rows."""

    def __init__(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self._stack = contextlib.ExitStack()
        try:
            if storage.is_remote(path):
                raw = self._stack.enter_context(storage.open_read(path))
                self._file = pq.ParquetFile(pa.PythonFile(raw, mode="r"))
            else:
                self._file = pq.ParquetFile(storage.normalize(path))
        except (pa.ArrowException, OSError) as e:
            self._stack.close()
            raise UserError(f"{path}: not a readable Parquet file ({one_line(e)})") from None
        self.schema = self._file.schema_arrow
        self.header = list(self.schema.names)
        if len(set(self.header)) != len(self.header):
            self._stack.close()
            raise UserError(f"{path}: duplicate column names {self.header}")
        self.bytes = storage.size(path)

    def close(self) -> None:
        self._stack.close()

    def blocks(self) -> Iterator[Block]:
        import pyarrow as pa

        first = 1
        try:
            for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield Block(self.path, first, batch, "", parquet=True)
                first += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: cannot read ({one_line(e)})") from None


def parquet_columns(plan: Plan, block: Block):
    """Typed, validated columns of a Parquet batch: (columns, keep mask or None, skipped, note).

    Raises BadBlock (fail mode) naming the file, row and column of the first bad value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batch = block.data
    skip = plan.on_bad_row == "skip"
    if list(batch.schema.names) != list(plan.header):
        raise BadBlock(f"{block.path}: columns {batch.schema.names} differ from {plan.header}")
    n = batch.num_rows
    cols, bad = {}, np.zeros(n, dtype=bool)
    for name in plan.header:
        arr = batch.column(name)
        dtype = plan.types[name]
        target = {"int64": pa.int64(), "float32": pa.float64(), "string": pa.string()}[dtype]
        try:
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if pa.types.is_boolean(arr.type) and dtype != "string":
                arr = arr.cast(pa.int64())
            arr = arr.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise BadBlock(
                f"{block.path}: column {name!r}: cannot convert {batch.column(name).type} to "
                f"{dtype} ({one_line(e)})"
            ) from None
        null = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
        if null is not None:
            arr = arr.fill_null(pa.scalar("" if dtype == "string" else 0, target))
        values, bad_here = convert_column(arr, dtype, True, name == plan.label)
        if null is not None:
            bad_here = null if bad_here is None else (bad_here | null)
        if bad_here is not None and not skip:
            i = int(np.flatnonzero(bad_here)[0])
            if null is not None and null[i]:
                what = "missing label" if name == plan.label else "missing value"
            elif dtype == "string":
                what = "missing label"  # an empty one
            else:
                value = pc.take(arr, [i])[0].as_py()
                what = f"{value!r} is not a finite float32 (NaN and infinity are not allowed)"
            raise BadBlock(f"{block.path}: row {block.first + i}: column {name!r}: {what}")
        if bad_here is not None:
            bad |= bad_here
        cols[name] = values
    skipped = int(bad.sum())
    note = None
    if skipped:
        i = int(np.flatnonzero(bad)[0])
        note = f"{block.path}: row {block.first + i}: missing, NaN or infinite value"
    return cols, (~bad if skipped else None), skipped, note
