"""Reading CSV blocks with Arrow: column types from the first MB, and each block's typed,
validated columns.

A block (cut by :mod:`tfpipes.preprocess.csv_blocks`) is parsed by Arrow's C++ CSV reader,
single-threaded (the pool gives each worker its own block), float32 straight away. In skip
mode a block Arrow cannot type is parsed again as text and its bad cells masked.
"""

from __future__ import annotations

import numpy as np

from tfpipes.preprocess.blocks import Block, Plan, arrow_to_dtype
from tfpipes.preprocess.csv_blocks import row_end
from tfpipes.preprocess.validation import bad_block, convert_column, locate_problem, one_line

INFER_BYTES = 1 << 20  # column types come from the rows in the first MB


def infer_csv_types(block: Block, header: list[str]) -> dict[str, str]:
    """Column dtypes from Arrow's inference on the rows in the first MB of the first block
    (rows it cannot parse are left for the block's own validation to report)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    data = block.data
    if len(data) > INFER_BYTES:  # the rows in the first MB, as Arrow's own reader does
        data = data[: row_end(data[:INFER_BYTES], ord(block.delimiter), eof=False) or len(data)]
    try:
        data.decode("utf-8")  # Arrow's bad-row callback fails on undecodable rows
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(
                column_names=header, use_threads=False, block_size=len(data) + 1
            ),
            parse_options=pcsv.ParseOptions(
                delimiter=block.delimiter,
                newlines_in_values=True,
                invalid_row_handler=lambda row: "skip",
            ),
            convert_options=pcsv.ConvertOptions(
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
        return {f.name: arrow_to_dtype(f.type) for f in table.schema}
    except (pa.ArrowInvalid, UnicodeDecodeError):
        # Types cannot be told from a block Arrow rejects; the block's validation names the
        # problem (every column is a string until then).
        return {h: "string" for h in header}


def read_csv_block(plan: Plan, block: Block, typed: bool):
    """Arrow's parse of a CSV block: (table, rows dropped for a wrong field count)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    # float32 straight away: a value past float32's range parses as infinity and is reported
    arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}
    types = {n: arrow[t] if typed else pa.string() for n, t in plan.types.items()}
    bad_rows = []

    def on_invalid(row) -> str:
        bad_rows.append(row)
        return "skip"

    table = pcsv.read_csv(
        pa.py_buffer(block.data),
        read_options=pcsv.ReadOptions(
            column_names=list(plan.header), use_threads=False, block_size=len(block.data) + 1
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=block.delimiter,
            # without a quote in the block, quoting cannot matter: the simpler lexer is faster
            quote_char='"' if b'"' in block.data else False,
            newlines_in_values=True,
            invalid_row_handler=on_invalid if plan.on_bad_row == "skip" else None,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            null_values=[],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    return table, len(bad_rows)


def csv_columns(plan: Plan, block: Block):
    """Typed, validated columns of a CSV block: (columns, keep mask or None, skipped, note)."""
    import pyarrow as pa

    skip = plan.on_bad_row == "skip"
    if skip:
        try:  # Arrow's bad-row callback cannot show undecodable rows: not a row-level problem
            block.data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad_block(plan, block, f"not UTF-8 text ({e.reason})") from None
    try:
        table, dropped = read_csv_block(plan, block, typed=True)
        typed = True
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        if not skip:
            raise bad_block(plan, block, one_line(e)) from None
        try:
            table, dropped = read_csv_block(plan, block, typed=False)
        except (pa.ArrowInvalid, UnicodeDecodeError) as e2:
            raise bad_block(plan, block, one_line(e2)) from None  # not row-level: cannot skip
        typed = False
    n = table.num_rows
    cols, bad = {}, np.zeros(n, dtype=bool)
    for name in plan.header:
        arr = table.column(name).combine_chunks()
        values, bad_here = convert_column(arr, plan.types[name], typed, name == plan.label)
        cols[name] = values
        if bad_here is not None:
            if not skip:
                raise bad_block(plan, block, f"column {name!r}: invalid values")
            bad |= bad_here
    keep = None
    note = None
    skipped = dropped + int(bad.sum())
    if skipped:
        keep = ~bad if bad.any() else None
        note = locate_problem(plan, block)
    return cols, keep, skipped, note
