"""TF Serving warmup requests written next to an export (``assets.extra/``).

TF Serving replays ``<version>/assets.extra/tf_serving_warmup_requests`` when it loads a
version, before the version serves: a TFRecord file of ``tensorflow.serving.PredictionLog``
records. Replaying real rows through every signature builds the graphs' kernels and caches, so
the first requests after a model switch are not the slow ones.

The records are encoded here from the protobuf wire format, field numbers as in TF Serving's
``prediction_log.proto``, ``predict.proto`` and ``model.proto``, so the runtime does not need
the ``tensorflow-serving-api`` package (its wheel requires the full ``tensorflow``, which
clashes with ``tensorflow-cpu``); the tests read the file back with that package's classes.
"""

from __future__ import annotations

import os

ASSETS_EXTRA = "assets.extra"  # a SavedModel's folder for files that are not graph assets
WARMUP_FILE = "tf_serving_warmup_requests"  # the name TF Serving looks for
DEFAULT_ROWS = 5

# Field numbers (tensorflow_serving/apis/*.proto).
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC = 1
_REQUEST_INPUTS = 2
_MODEL_SPEC_SIGNATURE_NAME = 3
_MAP_KEY, _MAP_VALUE = 1, 2  # a map<string, TensorProto> entry is a message of these two


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2: strings, bytes and messages)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def predict_log(signature: str, inputs: dict[str, bytes]) -> bytes:
    """A serialized ``PredictionLog`` holding a ``PredictRequest`` for ``signature`` whose
    inputs are serialized ``TensorProto``s by input name (sorted, so the bytes are stable)."""
    request = _field(_REQUEST_MODEL_SPEC, _field(_MODEL_SPEC_SIGNATURE_NAME, signature.encode()))
    for name in sorted(inputs):
        entry = _field(_MAP_KEY, name.encode()) + _field(_MAP_VALUE, inputs[name])
        request += _field(_REQUEST_INPUTS, entry)
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def write_warmup_requests(
    saved_model_dir: str, records: list[bytes], features: dict, rows: int = DEFAULT_ROWS
) -> str:
    """Write the warmup file of the (local, staged) SavedModel in ``saved_model_dir``.

    ``records``: serialized ``tf.train.Example`` rows (for ``serving_default``'s ``examples``);
    ``features``: the same rows parsed, one batch tensor per raw feature (``predict``'s inputs).
    The first ``rows`` rows become one single-row request per signature, each row's
    ``serving_default`` request before its ``predict`` one. Returns the file's path. Side
    effect: creates ``assets.extra/`` if missing. ValueError if there is no row.
    """
    import tensorflow as tf

    n = min(rows, len(records))
    if n < 1:
        raise ValueError("no rows to write warmup requests from")
    path = os.path.join(saved_model_dir, ASSETS_EXTRA, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(n):
            example = tf.make_tensor_proto([records[i]], dtype=tf.string)
            writer.write(predict_log("serving_default", {"examples": example.SerializeToString()}))
            raw = {
                name: tf.make_tensor_proto(tf.convert_to_tensor(value)[i : i + 1].numpy())
                for name, value in features.items()
            }
            writer.write(predict_log("predict", {k: v.SerializeToString() for k, v in raw.items()}))
    return path
