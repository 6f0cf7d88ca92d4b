"""Timestamp cells: the numpy path for the common ISO 8601 forms gives exactly what Python's
parser gives, and leaves every other word (other forms, impossible dates) to it."""

import datetime as dt

import numpy as np
import pyarrow as pa

from tfpipes.preprocess.cell_kinds import convert_text, timestamp_value


def test_iso_dates_in_numpy_equal_pythons_and_bad_dates_stay_bad():
    rng = np.random.default_rng(0)
    words = ["0001-01-01", "9999-12-31T23:59:59", "1969-12-31 23:59:59", "2024-02-29"]
    words += ["2023-02-29", "1900-02-29", "2000-02-29", "2024-04-31", "2024-13-01", "0000-01-01"]
    words += ["2024-01-01T24:00:00", "2024-01-01T12:60:00", "2024-01-01T12:00:60", "2024-1-01"]
    words += ["2024-01-01Z", " 2024-01-01", "2024-01-01T12:00:00+01:00", "2024-01-01T12:00:00.5"]
    words += ["2024-01-01_12:00:00", "20240101", "2024-01-01T12", "", "date", "2024-01-0a"]
    for _ in range(3000):  # random days and times, some of them impossible
        y, m, d = int(rng.integers(1, 10000)), int(rng.integers(0, 14)), int(rng.integers(0, 33))
        w = f"{y:04d}-{m:02d}-{d:02d}"
        if rng.random() < 0.5:
            w += f"T{int(rng.integers(0, 25)):02d}:{int(rng.integers(0, 61)):02d}:00"
        words.append(w)
    arr = pa.array(words + [None]).slice(1)  # an offset and a null, as Arrow hands them over
    values, bad = convert_text(arr, "timestamp")
    for w, v, b in zip(arr.to_pylist(), values.tolist(), bad.tolist()):
        want = timestamp_value(w) if w is not None else 0
        assert (b, v) == ((True, 0) if want is None else (False, want)), w
    assert values[0] == (dt.datetime(9999, 12, 31, 23, 59, 59) - dt.datetime(1970, 1, 1)) // (
        dt.timedelta(seconds=1)
    )
    assert bad.sum() > 500 and (~bad).sum() > 1000  # both sides exercised
