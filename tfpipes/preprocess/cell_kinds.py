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
    k = len(enc.dictionary)
    vals = np.zeros(k + 1, dtype=np.int64)
    bad_word = np.zeros(k + 1, dtype=bool)
    rest = np.arange(k)  # the words Python converts
    if kind == "timestamp" and not fmt and k:
        fast, epoch = iso_seconds(enc.dictionary)
        vals[:k][fast] = epoch
        rest = np.flatnonzero(~fast)
    conv = bool_value if kind == "boolean" else (lambda w: timestamp_value(w, fmt))
    for i, w in zip(rest.tolist(), enc.dictionary.take(pa.array(rest)).to_pylist()):
        v = conv(w)
        vals[i], bad_word[i] = (0, True) if v is None else (v, False)
    idx = enc.indices.fill_null(k).to_numpy(zero_copy_only=False)
    return vals[idx], bad_word[idx]


# Digit positions of the two ISO 8601 forms converted in numpy: YYYY-MM-DD and
# YYYY-MM-DD?HH:MM:SS with T or a space for ?; every other form goes through Python.
_DATE_DIGITS = (0, 1, 2, 3, 5, 6, 8, 9)
_TIME_DIGITS = (11, 12, 14, 15, 17, 18)
_MONTH_DAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def iso_seconds(words) -> tuple[np.ndarray, np.ndarray]:
    """(mask, epoch seconds of the masked words) for the words of an Arrow string array that
    are a valid ``YYYY-MM-DD`` or ``YYYY-MM-DD[T ]HH:MM:SS`` exactly (no spaces around, no
    zone): what :func:`timestamp_value` gives for them, a few numpy operations for all of
    them instead of a Python call each. The other words (other forms, or invalid dates such
    as 2023-02-29) are left to :func:`timestamp_value`."""
    n = len(words)
    off = np.frombuffer(words.buffers()[1], dtype=np.int32)[words.offset : words.offset + n + 1]
    buf = words.buffers()[2]
    data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
    lens = np.diff(off)
    if words.null_count:
        lens = np.where(words.is_null().to_numpy(zero_copy_only=False), 0, lens)
    mask = np.zeros(n, dtype=bool)
    out = np.zeros(0, dtype=np.int64)
    sel = np.flatnonzero((lens == 10) | (lens == 19))
    if not len(sel):
        return mask, out
    with_time = lens[sel] == 19
    width = 19 if with_time.any() else 10
    pos = np.minimum(off[sel, None] + np.arange(width), len(data) - 1)
    c = data[pos].astype(np.int64)  # bytes past a 10-character word are masked off below
    d = c - 48
    ok = (c[:, 4] == 45) & (c[:, 7] == 45)
    ok &= ((d[:, list(_DATE_DIGITS)] >= 0) & (d[:, list(_DATE_DIGITS)] <= 9)).all(axis=1)
    y = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
    m = d[:, 5] * 10 + d[:, 6]
    day = d[:, 8] * 10 + d[:, 9]
    secs = np.zeros(len(sel), dtype=np.int64)
    if width == 19:
        t = d[:, list(_TIME_DIGITS)]
        hh, mm, ss = t[:, 0] * 10 + t[:, 1], t[:, 2] * 10 + t[:, 3], t[:, 4] * 10 + t[:, 5]
        ok_time = (c[:, 10] == 84) | (c[:, 10] == 32)  # T or a space
        ok_time &= (c[:, 13] == 58) & (c[:, 16] == 58) & ((t >= 0) & (t <= 9)).all(axis=1)
        ok_time &= (hh < 24) & (mm < 60) & (ss < 60)
        ok &= np.where(with_time, ok_time, True)
        secs = np.where(with_time, hh * 3600 + mm * 60 + ss, 0)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    mdays = _MONTH_DAYS[np.clip(m, 0, 12)] + ((m == 2) & leap)
    ok &= (y >= 1) & (m >= 1) & (m <= 12) & (day >= 1) & (day <= mdays)
    mask[sel[ok]] = True
    return mask, _days_from_civil(y[ok], m[ok], day[ok]) * 86400 + secs[ok]


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
