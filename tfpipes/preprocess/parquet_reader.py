"""Reading Parquet: a file streamed as record batches, and each batch's typed, validated
columns.

Parquet files keep their own types (integers -> int64 numeric, booleans -> int64 boolean,
dates and timestamps -> int64 epoch seconds, floats and decimals -> float32, the rest ->
string); nulls are missing values; NaN and infinities are bad rows, located by row number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from tfpipes import storage
from tfpipes.errors import UserError
from tfpipes.preprocess.blocks import Block, Plan
from tfpipes.preprocess.csv_reader import Columns, finish_columns
from tfpipes.preprocess.inference import MAX_LABEL_VALUES, BlockProfile, arrow_family
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

    def profile(self, label: str) -> BlockProfile:
        """The first pass over a Parquet file: families from its own types, the row count
        from its metadata, the label's distinct values from reading that column alone."""
        import pyarrow as pa
        import pyarrow.compute as pc

        labels: set = set()
        try:
            for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[label]):
                col = batch.column(0)
                if pa.types.is_dictionary(col.type):
                    col = col.dictionary_decode()
                if len(labels) < MAX_LABEL_VALUES:
                    labels.update(pc.unique(col.drop_null()).to_pylist())
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: cannot read ({one_line(e)})") from None
        cols = {f.name: (arrow_family(f.type), 0, 0, "null") for f in self.schema}
        return BlockProfile(self._file.metadata.num_rows, cols, sorted(labels, key=str))

    def blocks(self) -> Iterator[Block]:
        import pyarrow as pa

        first = 1
        try:
            for batch in self._file.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                yield Block(self.path, first, batch, "", parquet=True)
                first += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{self.path}: cannot read ({one_line(e)})") from None


def parquet_columns(plan: Plan, block: Block) -> Columns:
    """Typed, validated columns of a Parquet batch; nulls are missing values.

    Raises BadBlock (fail mode) naming the file, row and column of the first bad value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batch = block.data
    skip = plan.on_bad_row == "skip"
    if list(batch.schema.names) != list(plan.header):
        raise BadBlock(f"{block.path}: columns {batch.schema.names} differ from {plan.header}")
    n = batch.num_rows
    out = Columns({}, {})
    bad = np.zeros(n, dtype=bool)
    first_bad = None
    for name in plan.header:
        arr = batch.column(name)
        dtype, kind = plan.types[name], plan.kind(name)
        try:
            arr = _to_stored(arr, dtype, kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise BadBlock(
                f"{block.path}: column {name!r}: cannot convert {batch.column(name).type} to "
                f"{kind or dtype} ({one_line(e)})"
            ) from None
        text_kind = kind if pa.types.is_string(arr.type) and dtype == "int64" else ""
        values, bad_here, present = convert_column(
            arr, dtype, True, name == plan.label, text_kind, plan.formats.get(name, "")
        )
        if bad_here is not None:
            i = int(np.flatnonzero(bad_here)[0])
            if not skip:
                value = pc.take(arr, [i])[0].as_py()
                what = f"{value!r} is not a finite float32 (NaN and infinity are not allowed)"
                if text_kind:
                    what = f"{value!r} is not a valid {text_kind}"
                raise BadBlock(f"{block.path}: row {block.first + i}: column {name!r}: {what}")
            first_bad = i if first_bad is None else min(first_bad, i)
            bad |= bad_here
        out.values[name], out.present[name] = values, present

    def locate(plan, block):
        lp = out.present[plan.label]
        if plan.on_missing_label == "fail" and lp is not None and not lp.all():
            i = int(np.flatnonzero(~lp)[0])
            return f"{block.path}: row {block.first + i}: column {plan.label!r}: missing label"
        if first_bad is not None:
            return f"{block.path}: row {block.first + first_bad}: NaN, infinite or invalid value"
        return None

    return finish_columns(plan, block, out, bad, 0, locate)


def _to_stored(arr, dtype: str, kind: str):
    """A Parquet column cast to what its schema entry stores (text kept for text kinds)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if dtype == "int64" and (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        secs = arr.cast(pa.timestamp("s", tz=t.tz if pa.types.is_timestamp(t) else None))
        return secs.cast(pa.int64())
    if pa.types.is_boolean(t) and dtype != "string":
        return arr.cast(pa.int64())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if dtype == "int64" and kind in ("boolean", "timestamp"):
            return arr.cast(pa.string())
    if pa.types.is_floating(t) and dtype == "float32":
        return pc.cast(arr, pa.float64())
    target = {"int64": pa.int64(), "float32": pa.float64(), "string": pa.string()}[dtype]
    return arr.cast(target)
