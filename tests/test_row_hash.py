"""The split's row hash (row_hash) against a plain Python computation of the same formula,
and the properties the split relies on: a row's hash depends on its values only."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes.preprocess import row_hash

M64 = (1 << 64) - 1
P = 0x100000001B3


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _string_reference(b: bytes) -> int:
    poly, power = 0, 1
    for c in b:
        poly = (poly + (c + 1) * power) & M64
        power = (power * P) & M64
    return _mix(poly ^ ((len(b) * 0xD6E8FEB86659FD93) & M64))


_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "é" * 3, "x" * 65_535, "y" * 65_537, "z" * 140_000]),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(_TEXT, min_size=1, max_size=40), st.integers(0, 3))
def test_string_hashes_follow_the_formula_wherever_the_value_sits(words, skip):
    """Short and long values (past one and two vectorized chunks), in a sliced array."""
    arr = pa.array(["pad"] * skip + words)[skip:]
    got = row_hash.string_hashes(arr).tolist()
    assert got == [_string_reference(w.encode()) for w in words]


def test_a_rows_hash_depends_on_its_values_only():
    f = np.array([1.5, 0.0, 1.5, -0.0, 0.0], dtype=np.float32)
    s = pa.array(["a", "b", "a", "b", "b"])
    present = np.array([True, True, True, True, False])
    cols = [("f", "float32", f, present), ("s", "string", s, None)]
    h = row_hash.row_hashes(cols).tolist()
    assert h[0] == h[2]  # identical rows
    assert len({h[0], h[1], h[3], h[4]}) == 4  # -0.0 is not 0.0; a missing 0.0 is neither
    # The same row alone, or among others in another order, hashes the same.
    for i in range(5):
        alone = [(n, dt, v[i : i + 1], None if p is None else p[i : i + 1]) for n, dt, v, p in cols]
        assert row_hash.row_hashes(alone).tolist() == [h[i]]
    renamed = [("g", *cols[0][1:]), cols[1]]
    assert row_hash.row_hashes(renamed).tolist()[0] != h[0]
    ints = [("f", "int64", np.array([1, 0, 1, 0, 0]), present), cols[1]]
    assert row_hash.row_hashes(ints).tolist()[1] != h[1]  # the type counts too


def test_row_hashes_refuse_what_the_encoder_refuses():
    with pytest.raises(ValueError):
        row_hash.row_hashes([("x", "float64", np.zeros(2))])
    with pytest.raises(ValueError):
        row_hash.row_hashes([("x" * 101, "float32", np.zeros(2, np.float32))])
