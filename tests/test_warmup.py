"""TF Serving warmup requests: every export writes ``assets.extra/tf_serving_warmup_requests``,
which parses with TF Serving's own protos (``tensorflow-serving-api``, installed with --no-deps
by scripts/test-tools.sh) and whose requests run against the exported signatures."""

import os

import numpy as np
import pytest

from tfpipes import warmup


def _serving_protos():
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        pytest.fail("tensorflow-serving-api is not installed; run scripts/test-tools.sh")
    return prediction_log_pb2


def test_the_encoder_writes_what_the_serving_protos_read():
    import tensorflow as tf

    prediction_log_pb2 = _serving_protos()
    long_name = "f" * 200  # lengths over 127 bytes take a two-byte varint
    tensor = tf.make_tensor_proto(np.arange(100, dtype=np.float32))
    log = prediction_log_pb2.PredictionLog.FromString(
        warmup.predict_log("predict", {long_name: tensor.SerializeToString(), "b": b""})
    )
    assert log.WhichOneof("log_type") == "predict_log"
    request = log.predict_log.request
    assert request.model_spec.signature_name == "predict"
    assert set(request.inputs) == {long_name, "b"}
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs[long_name]), np.arange(100))


@pytest.mark.slow
def test_export_writes_warmup_requests_that_run_against_its_signatures(tmp_path):
    import tensorflow as tf

    from tfpipes.export import ExportConfig, export
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.records import dataset_row_records
    from tfpipes.sample_data import write_csv
    from tfpipes.training import TrainConfig, train

    prediction_log_pb2 = _serving_protos()
    write_csv(str(tmp_path / "data.csv"), 400, "classification", seed=4)
    data = str(tmp_path / "data")
    preprocess(
        PreprocessConfig(str(tmp_path / "data.csv"), data, "label", num_shards=1, progress=False)
    )
    model_dir = str(tmp_path / "model")
    train(TrainConfig(data, model_dir, hidden=(8,), batch_size=32, train_steps=10, progress=False))
    r = export(ExportConfig(model_dir, str(tmp_path / "serving"), version=3, data=data))

    path = os.path.join(r.path, "assets.extra", "tf_serving_warmup_requests")
    logs = [
        prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        for raw in tf.data.TFRecordDataset(path)
    ]
    assert len(logs) == 2 * warmup.DEFAULT_ROWS  # one request per signature per row
    loaded = tf.saved_model.load(r.path)
    eval_rows = dataset_row_records(data, "eval", warmup.DEFAULT_ROWS)
    expected = loaded.signatures["serving_default"](examples=tf.constant(eval_rows))

    signatures = []
    for i, log in enumerate(logs):
        request = log.predict_log.request
        name = request.model_spec.signature_name
        signatures.append(name)
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        got = loaded.signatures[name](**inputs)  # TF Serving's replay, in Python
        row = i // 2
        if name == "serving_default":
            assert inputs["examples"].numpy().tolist() == [eval_rows[row]]  # real eval rows
        for key in ("probabilities", "class_ids"):
            np.testing.assert_allclose(got[key].numpy()[0], expected[key].numpy()[row], rtol=1e-5)
    assert signatures == ["serving_default", "predict"] * warmup.DEFAULT_ROWS
