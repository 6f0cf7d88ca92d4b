"""A block record's string column laid out with numpy (block_codec._string_elements) against
the plain protobuf encoding of its elements, wherever the values sit and whichever are
missing."""

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes.preprocess import block_codec
from tfpipes.warmup import _varint  # plain protobuf varints, the reference


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.text(max_size=10), st.sampled_from(["x" * 200, "é" * 9000])), st.booleans()
        ),
        max_size=30,
    ),
    st.integers(0, 2),
    st.booleans(),
)
def test_string_elements_are_the_protobuf_bytes(cells, skip, with_missing):
    words = [w for w, _ in cells]
    present = np.array([p or not with_missing for _, p in cells], dtype=bool)
    arr = pa.array(["pad"] * skip + words)[skip:]
    flat, offsets = block_codec._string_elements(arr, present if with_missing else None)
    expected = [
        b"\x0a" + _varint(len(w.encode()) if p else 0) + (w.encode() if p else b"")
        for w, p in zip(words, present)
    ]
    assert flat.tobytes() == b"".join(expected)
    assert np.diff(offsets).tolist() == [len(e) for e in expected]
