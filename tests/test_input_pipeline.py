"""The in-memory input (--cache): every row once per epoch, a new order each epoch, batches
that run across epoch boundaries, features that stay with their row, and the same batches
from the trainer's own gather and from the tf.data pipeline that distributed runs use."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tfpipes.input_pipeline import InMemoryData  # noqa: E402

ROWS, B = 103, 8  # 103 is prime: batches straddle every epoch boundary


def _data(seed=5) -> InMemoryData:
    ids = tf.range(ROWS, dtype=tf.int64)
    packed = {"__float32__": tf.stack([tf.cast(ids, tf.float32), -tf.cast(ids, tf.float32)], 1)}
    return InMemoryData(packed, ids, B, seed)


def _ids(data: InMemoryData, first: int, n: int) -> np.ndarray:
    """The row ids of batches first .. first+n-1, checking that features travel with them."""
    out = []
    for g in range(first, first + n):
        feats, y = data.batch(tf.constant(g, tf.int64))
        x, y = feats["__float32__"].numpy(), y.numpy()
        assert x.shape == (B, 2) and y.shape == (B,)
        np.testing.assert_array_equal(x[:, 0], y)
        np.testing.assert_array_equal(x[:, 1], -y)
        out.append(y)
    return np.concatenate(out)


def test_every_row_once_per_epoch_in_a_new_order():
    stream = _ids(_data(), 0, (3 * ROWS) // B + 1)
    epochs = [stream[e * ROWS : (e + 1) * ROWS] for e in range(3)]
    for e in epochs:
        assert sorted(e) == list(range(ROWS))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[1], epochs[2])
    assert not np.array_equal(epochs[0], np.arange(ROWS))  # shuffled at all
    assert not np.array_equal(_ids(_data(seed=6), 0, 10), stream[: 10 * B])  # the seed counts


def test_the_tf_data_pipeline_yields_the_same_batches_from_any_start():
    data = _data()
    direct = _ids(data, 7, 30)  # batches 7..36 cross two epoch boundaries
    via_dataset = [y.numpy() for _, y in data.dataset(7).take(30)]
    np.testing.assert_array_equal(direct, np.concatenate(via_dataset))
    later = [y.numpy() for _, y in data.dataset(20).take(3)]
    np.testing.assert_array_equal(direct[13 * B : 16 * B], np.concatenate(later))
