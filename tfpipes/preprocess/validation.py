"""Validation with locations: which cells are bad, and one line naming file, line and column.

Arrow finds that a block is bad; :func:`locate_problem` then re-reads just that block with
Python's ``csv`` module to name the first bad row (file:line: column 'x': why), so a bad row at
the end of a large file is reported in milliseconds. :func:`convert_column` turns a parsed
column into numpy or Arrow values plus the mask of rows Arrow's rules reject (NaN, infinity,
float32 overflow, an empty label), for the CSV and the Parquet reader alike.
"""

from __future__ import annotations

import csv
import io
import re

import numpy as np

from tfpipes.errors import location
from tfpipes.preprocess.blocks import Block, Plan
from tfpipes.preprocess.cell_kinds import check_text, convert_text
from tfpipes.preprocess.csv_blocks import MAX_ROW_BYTES, count_lines, quoted_spans

FLOAT32_MAX = 3.4028234663852886e38
# The csv module's default field limit (128 KiB) is far below what a block may hold; hitting it
# hid the real problem of a block behind "field larger than field limit" (issue 12).
csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES + 1))


class BadBlock(Exception):
    """A problem in a block (fail mode): the message names file, line and column."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line, at most 300 characters: what an error quotes."""
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


INT_RE = r"^[ \t]*-?[0-9]+[ \t]*$"
FLOAT_RE = r"^[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$"
NONFINITE_RE = r"^[ \t]*[+-]?(nan|inf|infinity)[ \t]*$"
BLANK_RE = r"^[ \t]*$"
_int_re, _float_re = re.compile(INT_RE), re.compile(FLOAT_RE)
_nonfinite_re = re.compile(NONFINITE_RE, re.IGNORECASE)


def check_cell(value: str, dtype: str, kind: str = "", fmt: str = "") -> str | None:
    """Why ``value`` (a present cell, not a missing token) is not a valid ``dtype`` cell of
    ``kind`` (Arrow's rules for numbers, :mod:`.cell_kinds` for booleans and timestamps), or
    None."""
    if dtype == "string":
        return None
    if kind in ("boolean", "timestamp"):
        return check_text(value, kind, fmt)
    if re.match(BLANK_RE, value):
        return "empty value"
    if dtype == "int64":
        if not _int_re.match(value):
            return f"{value!r} is not an integer"
        if not -(2**63) <= int(value) < 2**63:
            return f"{value!r} overflows int64"
        return None
    if _nonfinite_re.match(value):
        return f"{value!r} is not a finite number (NaN and infinity are not allowed)"
    if not _float_re.match(value):
        return f"{value!r} is not a number"
    if not abs(float(value)) <= FLOAT32_MAX:
        return f"{value!r} overflows float32"
    return None


def row_problem(plan: Plan, row: list[str]) -> tuple[str | None, str] | None:
    """(column or None, why) for the first problem in one parsed row, or None. A missing cell
    is no problem, except a missing label with ``--on-missing-label=fail``."""
    if len(row) != len(plan.header):
        return None, f"expected {len(plan.header)} fields, got {len(row)}"
    na = plan.na_values
    for name, value in zip(plan.header, row):
        if name == plan.label and (value in na or re.match(BLANK_RE, value)):
            if plan.on_missing_label == "fail":
                return name, "missing label (--on-missing-label=drop drops such rows)"
    for name, value in zip(plan.header, row):
        if value in na or name == plan.label and re.match(BLANK_RE, value):
            continue
        problem = check_cell(value, plan.types[name], plan.kind(name), plan.formats.get(name, ""))
        if problem:
            return name, problem
    return None


def locate_problem(plan: Plan, block: Block) -> str | None:
    """Re-read a CSV block with Python's csv module: the first bad row as a one-line message
    naming file, line and column, or None if the module finds nothing wrong."""
    data: bytes = block.data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = block.first + count_lines(data[: e.start])
        return f"{location(block.path, line)}: not UTF-8 text ({e.reason})"
    starts, ends = quoted_spans(data, ord(block.delimiter))
    open_line = None
    if starts and ends[-1] == len(data):
        open_line = block.first + count_lines(data[: starts[-1]])
    # Not strict: like Arrow, text after a closing quote joins the field.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=block.delimiter)
    try:
        for row in reader:
            line = block.first - 1 + reader.line_num
            if open_line is not None and line >= open_line:
                break
            if not row:
                continue  # a blank line; Arrow skips them too
            found = row_problem(plan, row)
            if found:
                column, problem = found
                return f"{location(block.path, line, column)}: {problem}"
    except csv.Error as e:
        return f"{location(block.path, block.first - 1 + reader.line_num)}: malformed CSV ({e})"
    if open_line is not None:
        return f"{location(block.path, open_line)}: unterminated quoted field"
    return None


def bad_block(plan: Plan, block: Block, cause: str) -> BadBlock:
    """The error for a block Arrow rejected: the located row when the csv re-read finds it,
    else ``cause`` at the block's first line."""
    found = locate_problem(plan, block) if not block.parquet else None
    if found:
        return BadBlock(found)
    where = location(block.path, block.first) if not block.parquet else block.path
    return BadBlock(f"{where}: {cause} (in the rows from here on)")


def convert_column(arr, dtype: str, typed: bool, is_label: bool, kind: str = "", fmt: str = ""):
    """(values, mask of bad rows or None, mask of present rows or None) for one column: numpy
    for numbers, Arrow for text. Nulls are missing cells (``present`` False, a placeholder
    value); a label that is only blanks is missing too. Booleans and timestamps arrive as text
    and leave as int64 (:mod:`.cell_kinds`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(arr)
    present = ~arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
    if dtype == "string":
        values = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
        if present is not None:
            values = values.fill_null("")
        if is_label:
            blank = pc.match_substring_regex(values, BLANK_RE).to_numpy(zero_copy_only=False)
            if blank.any():
                present = ~blank if present is None else present & ~blank
        return values, None, present
    if kind in ("boolean", "timestamp"):
        values, bad = convert_text(arr.cast(pa.string()), kind, fmt)
        return values, (bad if bad.any() else None), present
    if typed:
        if present is not None:
            arr = arr.fill_null(0)
        a = arr.to_numpy(zero_copy_only=False)
        if dtype == "int64":
            return a.astype(np.int64, copy=False), None, present
        if a.dtype == np.float32:  # parsed as float32: past its range is infinity
            finite = np.isfinite(a)
            return a, (None if finite.all() else ~finite), present
        bad = ~(np.abs(a) <= FLOAT32_MAX)  # NaN, infinities, float32 overflow
        return a.astype(np.float32), (bad if bad.any() else None), present
    # Skip mode after a failed typed parse: every cell is text; keep the ones Arrow would take.
    arr = arr.fill_null("0") if present is not None else arr
    ok = pc.match_substring_regex(arr, INT_RE if dtype == "int64" else FLOAT_RE)
    ok = ok.to_numpy(zero_copy_only=False)
    text = pc.utf8_trim(arr, " \t")
    target = pa.int64() if dtype == "int64" else pa.float64()
    filled = pc.if_else(pa.array(ok), text, pa.scalar("0"))
    try:
        a = filled.cast(target).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:  # an int64 overflow: fall back to Python for this column
        vals = filled.to_pylist()
        a = np.zeros(n, dtype=np.int64)
        for i, v in enumerate(vals):
            x = int(v)
            if -(2**63) <= x < 2**63:
                a[i] = x
            else:
                ok[i] = False
    bad = ~ok
    if dtype == "float32":
        bad |= ~(np.abs(a) <= FLOAT32_MAX)
        a = np.where(bad, 0.0, a).astype(np.float32)
    a = a.astype(np.int64, copy=False) if dtype == "int64" else a
    return a, (bad if bad.any() else None), present
