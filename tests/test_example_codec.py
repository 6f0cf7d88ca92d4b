"""The numpy Example encoder against TensorFlow's own parser and TFRecord reader."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from tfpipes.preprocess import example_codec

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


def _reference_crcs(frames: np.ndarray, starts: np.ndarray) -> list[int]:
    import google_crc32c

    return [
        google_crc32c.value(frames[starts[i] + 12 : starts[i + 1] - 4].tobytes())
        for i in range(len(starts) - 1)
    ]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(floats, floats, st.integers(0, 127)), min_size=1, max_size=50),
    st.lists(st.integers(0, 49), max_size=60),
)
def test_batch_frames_any_rows_in_any_order(rows, picks):
    """Fixed-width rows: CRCs from the values alone, and frames of any subset of rows in any
    order, equal to framing every row and picking them out."""
    n = len(rows)
    cols = [
        ("a", "float32", np.array([r[0] for r in rows], dtype=np.float32)),
        ("bb", "float32", np.array([r[1] for r in rows], dtype=np.float32)),
        ("label", "int64", np.array([r[2] for r in rows], dtype=np.int64)),
    ]
    idx = np.array([p % n for p in picks], dtype=np.int64)
    batch = example_codec.ExampleBatch(cols)
    crc = batch.crcs()  # computed before anything is framed
    sub_frames, sub_starts = batch.frames(idx)
    frames, starts, crc_all = example_codec.frame_examples(cols)
    assert list(crc) == list(crc_all) == _reference_crcs(frames, starts)
    want = b"".join(frames[starts[i] : starts[i + 1]].tobytes() for i in idx)
    assert sub_frames.tobytes() == want and sub_starts[-1] == len(want)


def test_frame_examples_read_by_tfrecorddataset(tmp_path):
    n = 300
    rng = np.random.default_rng(3)
    fixed = [
        ("x", "float32", rng.normal(size=n).astype(np.float32)),
        ("label", "int64", rng.integers(0, 5, n)),
    ]
    varying = fixed + [
        ("count", "int64", rng.integers(-(2**40), 2**40, n) >> rng.integers(0, 40, n)),
        ("s", "string", np.array(["", "a", "bb" * 100, "é"])[rng.integers(0, 4, n)]),
    ]
    for cols in (fixed, varying):
        frames, starts, crc = example_codec.frame_examples(cols)
        assert list(crc) == _reference_crcs(frames, starts)
        path = tmp_path / "x.tfrecord"
        path.write_bytes(frames.tobytes())
        got = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
        assert len(got) == n
        parsed = tf.io.parse_example(
            got,
            {
                name: tf.io.FixedLenFeature(
                    [], {"float32": tf.float32, "int64": tf.int64}.get(dt, tf.string)
                )
                for name, dt, _ in cols
            },
        )
        for name, dt, values in cols:
            if dt == "string":
                assert [v.decode() for v in parsed[name].numpy()] == list(values)
            else:
                np.testing.assert_array_equal(parsed[name].numpy(), values)
