"""The split hash's row CRCs computed from the values (row_crc) against the CRC32C of the
records the per-row layout writes (whose bytes test_example_codec parses back with TF)."""

import google_crc32c
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes.preprocess import example_codec, row_crc


def _record_crcs(columns) -> list[int]:
    flat, offsets = example_codec.encode_examples(columns)
    buf = flat.tobytes()
    return [google_crc32c.value(buf[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]


row = st.tuples(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=9),
    st.text(max_size=40) | st.sampled_from(["", "x" * 300, "é" * 70]),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(row, min_size=1, max_size=40))
def test_row_crcs_equal_the_crcs_of_the_serialized_records(rows):
    cols = [
        ("f", "float32", np.array([r[0] for r in rows], np.float32), [r[4][0] for r in rows]),
        ("g", "float32", np.array([r[0] * 2 for r in rows], np.float32), None),
        ("i", "int64", np.array([r[1] for r in rows], np.int64), [r[4][1] for r in rows]),
        ("s", "string", pa.array([r[3] for r in rows]), [r[4][2] for r in rows]),
        ("k" * 100, "int64", np.array([r[2] for r in rows], np.int64), None),
        ("t", "string", pa.array([r[3][::-1] for r in rows]), None),
    ]
    cols = [(n, d, v, None if p is None else np.array(p, bool)) for n, d, v, p in cols]
    assert row_crc.example_crcs(cols).tolist() == _record_crcs(cols)
    # any single column (fixed widths, varying widths, every cell missing or none)
    for c in cols:
        assert row_crc.example_crcs([c]).tolist() == _record_crcs([c])


def test_row_crcs_of_a_wide_fixed_row_and_long_strings():
    rng = np.random.default_rng(3)
    n = 3000
    words = pa.array([f"w{i}" * (i % 50) for i in rng.integers(0, 4000, n)])
    cols = [(f"f{j}", "float32", rng.normal(size=n).astype(np.float32)) for j in range(60)]
    cols += [
        ("date", "int64", rng.integers(1.5e9, 1.7e9, n), rng.random(n) > 0.1),
        ("label", "int64", rng.integers(0, 300, n)),  # one- and two-byte varints
        ("text", "string", words, rng.random(n) > 0.5),
        ("long", "string", pa.array(["z" * int(k) for k in rng.integers(0, 70_000, n)])),
    ]
    got = row_crc.example_crcs(cols)
    assert got.dtype == np.uint32
    assert got.tolist() == _record_crcs(cols)
    assert got.tolist() == example_codec.ExampleBatch(cols).crcs().tolist()


def test_row_crcs_refuse_what_the_encoder_refuses():
    with pytest.raises(ValueError, match="unknown dtype"):
        row_crc.example_crcs([("x", "float64", np.zeros(2))])
    with pytest.raises(ValueError, match="longer than 100 bytes"):
        row_crc.example_crcs([("x" * 101, "float32", np.zeros(2, np.float32))])
