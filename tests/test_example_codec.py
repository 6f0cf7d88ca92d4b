"""The numpy Example encoder against TensorFlow's own parser and TFRecord reader."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes import example_codec

tf = pytest.importorskip("tensorflow")

floats = st.floats(width=32, allow_nan=False, allow_infinity=False)
ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
texts = st.text(max_size=300)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(floats, ints, texts, floats), min_size=1, max_size=30))
def test_encoded_examples_parse_back_exactly(rows):
    cols = [
        ("f", "float32", np.array([r[0] for r in rows], dtype=np.float32)),
        ("i", "int64", np.array([r[1] for r in rows], dtype=np.int64)),
        ("s", "string", np.array([r[2] for r in rows], dtype=object)),
        ("g_long_feature_name_" * 4, "float32", np.array([r[3] for r in rows], dtype=np.float32)),
    ]
    flat, offsets = example_codec.encode_examples(cols)
    assert len(offsets) == len(rows) + 1
    for k, r in enumerate(rows):
        ex = tf.train.Example.FromString(flat[offsets[k] : offsets[k + 1]].tobytes())
        f = ex.features.feature
        assert f["f"].float_list.value[0] == np.float32(r[0])
        assert f["i"].int64_list.value[0] == r[1]
        assert f["s"].bytes_list.value[0] == r[2].encode("utf-8")
        assert f["g_long_feature_name_" * 4].float_list.value[0] == np.float32(r[3])
        assert set(f.keys()) == {c[0] for c in cols}


def test_framed_records_read_by_tfrecorddataset(tmp_path):
    n = 257
    cols = [
        ("x", "float32", np.linspace(-1, 1, n).astype(np.float32)),
        ("k", "int64", np.arange(n) * 1000 - 5),
    ]
    flat, offsets = example_codec.encode_examples(cols)
    frames, starts = example_codec.frame_records(flat, offsets)
    assert starts[-1] == len(frames)
    path = tmp_path / "x.tfrecord"
    path.write_bytes(frames)
    got = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert got == [flat[offsets[i] : offsets[i + 1]].tobytes() for i in range(n)]
    # the header helper agrees with the framing
    assert frames[:12] == example_codec.frame_header(int(offsets[1]))


def test_corrupted_frame_is_detected_by_tensorflow(tmp_path):
    flat, offsets = example_codec.encode_examples([("x", "float32", np.ones(3, np.float32))])
    frames, _ = example_codec.frame_records(flat, offsets)
    bad = bytearray(frames)
    bad[20] ^= 0xFF  # inside the first record's data
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(bad))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
