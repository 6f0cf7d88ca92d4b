"""Reading CSV blocks with Arrow: each block's typed, validated columns.

A block (cut by :mod:`tfpipes.preprocess.csv_blocks`) is parsed by Arrow's C++ CSV reader,
single-threaded (the pool gives each worker its own block), float32 straight away, with the
missing tokens (``--na-values``) read as nulls (a quoted cell is text: ``"NA"`` is the string
NA in a string column). Boolean and timestamp columns are read as text
and converted by :mod:`.cell_kinds`. In skip mode a block Arrow cannot type is parsed again as
text and its bad cells masked. Column types come from the first pass
(:mod:`tfpipes.preprocess.inference`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfpipes.preprocess.blocks import Block, Plan
from tfpipes.preprocess.validation import bad_block, convert_column, locate_problem, one_line


@dataclasses.dataclass
class Columns:
    """A block's validated columns: values, which rows have each value (None: all), the rows
    to keep (None: all), rows skipped as bad, the first bad row's location, and rows dropped
    for a missing label."""

    values: dict
    present: dict
    keep: np.ndarray | None = None
    skipped: int = 0
    note: str | None = None
    missing_label: int = 0


def arrow_read(block: Block, header, na_values, on_invalid=None, column_types=None):
    """``pyarrow.csv.read_csv`` of one block as preprocess parses every block (inference's
    sample and the main pass alike): the given header, missing-value tokens that a quoted cell
    never is, ``on_invalid`` for rows of a wrong field count (None: an error).
    UnicodeDecodeError for a block that is not UTF-8 when ``on_invalid`` is given: Arrow
    decodes a bad row's text for the callback, and cannot raise that decode's error (it
    prints a traceback and goes on)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if on_invalid is not None and not block.data.isascii():
        block.data.decode("utf-8")
    return pcsv.read_csv(
        pa.py_buffer(block.data),
        read_options=pcsv.ReadOptions(
            column_names=list(header), use_threads=False, block_size=len(block.data) + 1
        ),
        parse_options=pcsv.ParseOptions(
            delimiter=block.delimiter,
            # without a quote in the block, quoting cannot matter: the simpler lexer is faster
            quote_char='"' if b'"' in block.data else False,
            newlines_in_values=True,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=column_types,
            null_values=list(na_values),
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        ),
    )


def read_csv_block(plan: Plan, block: Block, typed: bool):
    """Arrow's parse of a CSV block: (table, rows dropped for a wrong field count)."""
    import pyarrow as pa

    # float32 straight away: a value past float32's range parses as infinity and is reported
    arrow = {"int64": pa.int64(), "float32": pa.float32(), "string": pa.string()}
    types = {
        n: arrow[t] if typed and plan.kind(n) not in ("boolean", "timestamp") else pa.string()
        for n, t in plan.types.items()
    }
    bad_rows = []

    def on_invalid(row) -> str:
        bad_rows.append(row)
        return "skip"

    handler = on_invalid if plan.on_bad_row == "skip" else None
    table = arrow_read(block, plan.header, plan.na_values, handler, types)
    return table, len(bad_rows)


def csv_columns(plan: Plan, block: Block) -> Columns:
    """Typed, validated columns of a CSV block. Raises BadBlock (fail mode) for bad input."""
    import pyarrow as pa

    skip = plan.on_bad_row == "skip"
    try:
        table, dropped = read_csv_block(plan, block, typed=True)
        typed = True
    except UnicodeDecodeError as e:  # from arrow_read's check (skip mode): not row-level
        raise bad_block(plan, block, f"not UTF-8 text ({e.reason})") from None
    except pa.ArrowInvalid as e:
        if not skip:
            raise bad_block(plan, block, one_line(e)) from None
        try:
            table, dropped = read_csv_block(plan, block, typed=False)
        except pa.ArrowInvalid as e2:
            raise bad_block(plan, block, one_line(e2)) from None  # not row-level: cannot skip
        typed = False
    n = table.num_rows
    out = Columns({}, {})
    bad = np.zeros(n, dtype=bool)
    for name in plan.header:
        arr = table.column(name).combine_chunks()
        values, bad_here, present = convert_column(
            arr,
            plan.types[name],
            typed,
            name == plan.label,
            plan.kind(name),
            plan.formats.get(name, ""),
        )
        out.values[name], out.present[name] = values, present
        if bad_here is not None:
            if not skip:
                raise bad_block(plan, block, f"column {name!r}: invalid values")
            bad |= bad_here & (present if present is not None else True)
    return finish_columns(plan, block, out, bad, dropped, locate_problem)


def finish_columns(plan: Plan, block: Block, out: Columns, bad, dropped: int, locate) -> Columns:
    """Drop the rows with a missing label (or fail on the first one) and the bad rows (skip
    mode): fills ``keep``, ``skipped``, ``note`` and ``missing_label``."""
    from tfpipes.preprocess.validation import BadBlock

    label_present = out.present[plan.label]
    no_label = np.zeros(len(bad), dtype=bool) if label_present is None else ~label_present
    if no_label.any() and plan.on_missing_label == "fail":
        raise BadBlock(locate(plan, block) or f"{block.path}: missing label")
    bad &= ~no_label  # a row without a label is dropped for that, whatever else is wrong
    out.missing_label = int(no_label.sum())
    out.skipped = dropped + int(bad.sum())
    if out.skipped or out.missing_label:
        out.keep = ~(bad | no_label)
    if out.skipped:
        out.note = locate(plan, block)
    out.present[plan.label] = None
    return out
