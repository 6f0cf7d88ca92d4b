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
from tfpipes.preprocess.csv_blocks import count_lines, quoted_spans

FLOAT32_MAX = 3.4028234663852886e38


class BadBlock(Exception):
    """A problem in a block (fail mode): the message names file, line and column."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line, at most 300 characters: what an error quotes."""
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")


INT_RE = r"^[ \t]*-?[0-9]+[ \t]*$"
FLOAT_RE = r"^[ \t]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$"
_NONFINITE_RE = r"^[ \t]*[+-]?(nan|inf|infinity)[ \t]*$"
BLANK_RE = r"^[ \t]*$"
_int_re, _float_re = re.compile(INT_RE), re.compile(FLOAT_RE)
_nonfinite_re = re.compile(_NONFINITE_RE, re.IGNORECASE)


def check_cell(value: str, dtype: str) -> str | None:
    """Why ``value`` is not a valid ``dtype`` cell (Arrow's rules), or None."""
    if dtype == "string":
        return None
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
    """(column or None, why) for the first problem in one parsed row, or None."""
    if len(row) != len(plan.header):
        return None, f"expected {len(plan.header)} fields, got {len(row)}"
    for name, value in zip(plan.header, row):
        if name == plan.label and re.match(BLANK_RE, value):
            return name, "missing label"
        problem = check_cell(value, plan.types[name])
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


def convert_column(arr, dtype: str, typed: bool, is_label: bool):
    """(values, mask of bad rows or None) for one column: numpy for numbers, Arrow for text."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(arr)
    if dtype == "string":
        values = arr.cast(pa.string()) if not pa.types.is_string(arr.type) else arr
        if is_label:
            blank = pc.match_substring_regex(values, BLANK_RE).to_numpy(zero_copy_only=False)
            return values, (blank if blank.any() else None)
        return values, None
    if typed:
        a = arr.to_numpy(zero_copy_only=False)
        if dtype == "int64":
            return a.astype(np.int64, copy=False), None
        if a.dtype == np.float32:  # parsed as float32: past its range is infinity
            finite = np.isfinite(a)
            return a, (None if finite.all() else ~finite)
        bad = ~(np.abs(a) <= FLOAT32_MAX)  # NaN, infinities, float32 overflow
        return a.astype(np.float32), (bad if bad.any() else None)
    # Skip mode after a failed typed parse: every cell is text; keep the ones Arrow would take.
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
    return a.astype(np.int64, copy=False) if dtype == "int64" else a, (bad if bad.any() else None)
