"""Cells of the kinds stored as int64 but written as text: booleans and timestamps.

A boolean cell is one of ``true/false, yes/no, t/f, y/n`` in any case (and ``1/0`` when the
column is declared boolean); it is stored as 1 or 0. A timestamp cell is an ISO 8601 date or
date-time (``2024-03-01``, ``2024-03-01T12:30:00``, ``... 12:30:00.5+01:00``, ``...Z``), or
text in the schema's strptime ``format``; it is stored as int64 seconds since the epoch, UTC (a
value without a zone is taken as UTC, fractions of a second are dropped).

The array converters return ``(int64 values, bad mask)`` over the present cells, so that the
readers report the first bad cell with its location; :func:`check_text` is the one-cell check
the csv re-read uses, with the same rules.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

BOOL_TRUE = ("true", "yes", "t", "y")
BOOL_FALSE = ("false", "no", "f", "n")
BOOL_WORDS = frozenset(BOOL_TRUE + BOOL_FALSE)  # what inference takes for a boolean column
DECLARED_TRUE, DECLARED_FALSE = BOOL_TRUE + ("1",), BOOL_FALSE + ("0",)
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def bool_value(text: str) -> int | None:
    """1 or 0 for a boolean cell, None if it is not one."""
    t = text.strip().lower()
    if t in DECLARED_TRUE:
        return 1
    if t in DECLARED_FALSE:
        return 0
    return None


def timestamp_value(text: str, fmt: str = "") -> int | None:
    """Epoch seconds (UTC) of an ISO 8601 date/date-time or of ``fmt``; None if it is neither."""
    t = text.strip()
    try:
        d = _dt.datetime.strptime(t, fmt) if fmt else _dt.datetime.fromisoformat(t)
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return int((d - _EPOCH) // _dt.timedelta(seconds=1))


def check_text(value: str, kind: str, fmt: str = "") -> str | None:
    """Why ``value`` is not a cell of ``kind`` (boolean or timestamp), or None."""
    if kind == "boolean" and bool_value(value) is None:
        return f"{value!r} is not a boolean (true/false, yes/no, t/f, y/n, 1/0)"
    if kind == "timestamp" and timestamp_value(value, fmt) is None:
        want = f"a date/time in the format {fmt!r}" if fmt else "an ISO 8601 date or date-time"
        return f"{value!r} is not {want}"
    return None


def convert_text(arr, kind: str, fmt: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, bad mask) of an Arrow string array of ``kind`` cells; nulls give 0 and
    are not bad (they are missing values, handled by the caller).

    Converted per distinct value: a column of dates or flags has far fewer distinct values than
    rows, and Python's ISO 8601 parser handles zones and fractions Arrow's cast rejects.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(arr).combine_chunks() if isinstance(arr, pa.ChunkedArray) else None
    enc = enc if enc is not None else pc.dictionary_encode(arr)
    words = enc.dictionary.to_pylist()
    conv = bool_value if kind == "boolean" else (lambda w: timestamp_value(w, fmt))
    table = [conv(w) for w in words]
    vals = np.array([0 if v is None else v for v in table] + [0], dtype=np.int64)
    bad_word = np.array([v is None for v in table] + [False], dtype=bool)
    idx = enc.indices.fill_null(len(words)).to_numpy(zero_copy_only=False)
    return vals[idx], bad_word[idx]
