"""End to end through the installed `tfpipes` command, from a directory outside the repository."""

import json
import os
import re

import numpy as np
import pytest

from tests.conftest import run_tfpipes
from tests.test_pipeline_spec import TASKS
from tfpipes.sample_data import write_csv

pytestmark = pytest.mark.slow


def _ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def _checkpoint_predictions(model_dir: str, records: list[bytes]) -> np.ndarray:
    """The checkpoint model's outputs, rebuilt from the library (not from the export)."""
    import tensorflow as tf

    from tfpipes.input_pipeline import feature_spec
    from tfpipes.models import ModelSpec, build_model, checkpoint_objects
    from tfpipes.schema import Schema

    cfg = json.load(open(os.path.join(model_dir, "model_config.json")))
    schema = Schema.from_json(json.dumps(cfg["schema"]))
    model = build_model(ModelSpec.from_json(json.dumps(cfg["model"])), schema, cfg["stats"])
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    status = tf.train.Checkpoint(**checkpoint_objects(model)).restore(latest)
    status.assert_existing_objects_matched()
    status.expect_partial()
    feats = tf.io.parse_example(tf.constant(records), feature_spec(schema, with_label=False))
    return model(feats).numpy()


def _eval_records(data_dir: str) -> list[bytes]:
    from tfpipes.records import dataset_row_records

    return dataset_row_records(data_dir, "eval")


def _preprocess_csv(d: str, rows: int, task: str, seed: int, shards: int) -> None:
    """``rows`` rows of ``task`` sample data (``seed``) in ``d``/data.csv, and `tfpipes
    preprocess` of it into ``d``/data (label ``label``, ``shards`` shards)."""
    write_csv(os.path.join(d, "data.csv"), rows, task, seed=seed)
    args = ["--source", "data.csv", "--output", "data", "--label", "label"]
    _ok(run_tfpipes("preprocess", *args, "--num-shards", str(shards), cwd=d))


def _train_on_csv(d: str, rows: int, task: str, seed: int, shards: int, *train_args: str) -> dict:
    """:func:`_preprocess_csv`, then `tfpipes train` of ``data`` into ``model`` with
    ``train_args``, in ``d``. Returns the model's metrics."""
    _preprocess_csv(d, rows, task, seed, shards)
    _ok(run_tfpipes("train", "--data", "data", "--model-dir", "model", *train_args, cwd=d))
    return json.load(open(os.path.join(d, "model", "metrics.json")))


def _export(d: str, base: str, version: int):
    """`tfpipes export` of ``model`` (verified on ``data``) to ``base/version``, in ``d``."""
    args = ["--model-dir", "model", "--export-base", base, "--data", "data"]
    return _ok(run_tfpipes("export", *args, "--version", str(version), cwd=d))


def test_mlp_classification_learns_and_export_matches_checkpoint(outside_dir):
    import tensorflow as tf

    d = str(outside_dir)
    metrics = _train_on_csv(
        d, 4000, "classification", 3, 4, "--model", "mlp", "--hidden", "32,16",
        "--train-steps", "500", "--batch-size", "64",
    )  # fmt: skip
    assert metrics["step"] == 500
    assert metrics["accuracy"] > 0.85, metrics  # chance is 1/3
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.3
    p = _export(d, "serving/demo", 7)
    assert "serving/demo/7" in p.stderr
    saved = os.path.join(d, "serving", "demo", "7")
    assert os.path.exists(os.path.join(saved, "saved_model.pb"))
    assert os.listdir(os.path.join(d, "serving", "demo")) == ["7"]  # no staging leftovers

    records = _eval_records(os.path.join(d, "data"))
    assert len(records) == metrics["examples"]
    loaded = tf.saved_model.load(saved)
    assert set(loaded.signatures) == {"serving_default", "predict"}
    served = loaded.signatures["serving_default"](examples=tf.constant(records))
    want = _checkpoint_predictions(os.path.join(d, "model"), records)
    np.testing.assert_allclose(served["logits"].numpy(), want, atol=1e-5)
    # the raw-feature signature agrees too
    from tfpipes.input_pipeline import feature_spec
    from tfpipes.schema import load_schema

    schema = load_schema(os.path.join(d, "data"))
    feats = tf.io.parse_example(tf.constant(records), feature_spec(schema, with_label=False))
    raw = loaded.signatures["predict"](**feats)
    np.testing.assert_allclose(raw["logits"].numpy(), want, atol=1e-5)
    assert (raw["class_ids"].numpy() == want.argmax(axis=1)).all()


def test_linear_regression_beats_the_mean(outside_dir):
    d = str(outside_dir)
    m = _train_on_csv(
        d, 3000, "regression", 4, 2, "--model", "linear", "--optimizer", "sgd",
        "--learning-rate", "0.05", "--train-steps", "400",
    )  # fmt: skip
    assert m["mse"] < 0.1 * m["mean_baseline_mse"], m
    _export(d, "exp", 1)
    import tensorflow as tf

    out = tf.saved_model.load(os.path.join(d, "exp", "1")).signatures["serving_default"](
        examples=tf.constant(_eval_records(os.path.join(d, "data"))[:5])
    )
    assert out["predictions"].shape == (5,)


def test_resume_continues_from_the_checkpoint(outside_dir):
    d = str(outside_dir)
    _preprocess_csv(d, 1000, "classification", 5, 2)
    args = ["train", "--data", "data", "--model-dir", "model", "--checkpoint-every", "50"]
    first = _ok(run_tfpipes(*args, "--train-steps", "100", cwd=d))
    assert re.search(r"steps 0 -> 100 \(100 run\)", first.stderr), first.stderr
    second = _ok(run_tfpipes(*args, "--train-steps", "200", cwd=d))
    assert "resumed from" in second.stderr and "ckpt-100 at step 100" in second.stderr
    assert re.search(r"steps 100 -> 200 \(100 run\)", second.stderr), second.stderr
    ckpts = sorted(os.listdir(os.path.join(d, "model", "checkpoints")))
    assert "ckpt-200.index" in ckpts and "ckpt-150.index" in ckpts
    # a different model in the same directory is refused, nothing overwritten
    bad = run_tfpipes(*args, "--train-steps", "300", "--hidden", "8", cwd=d)
    assert bad.returncode != 0 and "different model options" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert "ckpt-250.index" not in os.listdir(os.path.join(d, "model", "checkpoints"))


def test_train_refuses_bad_inputs_clearly(outside_dir):
    d = str(outside_dir)
    os.makedirs(os.path.join(d, "notdata"))
    p = run_tfpipes("train", "--data", "notdata", "--model-dir", "m", cwd=d, timeout=120)
    assert p.returncode != 0 and "no manifest.json" in p.stderr and "Traceback" not in p.stderr
    _preprocess_csv(d, 200, "classification", 6, 1)
    p = run_tfpipes(
        "train", "--data", "data", "--model-dir", "m", "--model", "nosuch", cwd=d, timeout=120
    )
    assert p.returncode != 0 and "unknown model" in p.stderr and "Traceback" not in p.stderr
    # a shard that no longer matches its manifest
    shard = os.path.join(d, "data", "train", "part-00000-of-00001.tfrecord")
    with open(shard, "ab") as f:
        f.write(b"garbage")
    p = run_tfpipes("train", "--data", "data", "--model-dir", "m2", cwd=d, timeout=120)
    assert p.returncode != 0 and "part-00000-of-00001.tfrecord" in p.stderr
    assert "does not match" in p.stderr and not os.path.exists(os.path.join(d, "m2", "checkpoints"))


def test_export_refuses_to_publish_an_unverified_model(outside_dir):
    from tfpipes.errors import UserError
    from tfpipes.export import ExportConfig, export
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.training import TrainConfig, train

    d = str(outside_dir)
    write_csv(os.path.join(d, "data.csv"), 300, seed=8)
    preprocess(PreprocessConfig(os.path.join(d, "data.csv"), os.path.join(d, "data"), "label"))
    train(TrainConfig(os.path.join(d, "data"), os.path.join(d, "m"), train_steps=20))
    # A negative tolerance makes any difference (even 0) a failure: the gate is live.
    cfg = ExportConfig(
        os.path.join(d, "m"),
        os.path.join(d, "exp"),
        version=3,
        data=os.path.join(d, "data"),
        tolerance=-1.0,
    )
    with pytest.raises(UserError, match="nothing was published"):
        export(cfg)
    assert not os.path.exists(os.path.join(d, "exp", "3"))
    assert [p for p in os.listdir(os.path.join(d, "exp"))] == []


def test_compile_and_run_local(outside_dir):
    import yaml
    from kfp import components

    d = str(outside_dir)
    _ok(run_tfpipes("compile", "-o", "pipeline.yaml", cwd=d, timeout=120))
    spec = yaml.safe_load(open(os.path.join(d, "pipeline.yaml")))
    assert spec["pipelineInfo"]["name"] == "tfpipes-training"
    assert set(spec["root"]["dag"]["tasks"]) == TASKS  # the pipeline's root tasks
    loaded = components.load_component_from_file(os.path.join(d, "pipeline.yaml"))
    assert {"source", "label", "train_steps"} <= set(loaded.component_spec.inputs)
    for name in ("preprocess-op", "train-op", "export-op"):
        cmd = " ".join(spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]["command"])
        assert "pip install" not in cmd  # nothing is installed at run time

    write_csv(os.path.join(d, "data.csv"), 1500, seed=9)
    p = _ok(
        run_tfpipes(
            "run-local",
            "--source",
            "data.csv",
            "--label",
            "label",
            "--train-steps",
            "200",
            "--num-shards",
            "2",
            "--version",
            "1",
            "--pipeline-root",
            "root",
            cwd=d,
        )
    )
    arts = dict(re.findall(r"^\s+(examples|model|metrics|exported)\s+(\S+)$", p.stderr, re.M))
    assert set(arts) == {"examples", "model", "metrics", "exported"}, p.stderr
    assert os.path.exists(os.path.join(arts["examples"], "manifest.json"))
    assert os.path.exists(os.path.join(arts["model"], "checkpoints", "checkpoint"))
    assert json.load(open(arts["metrics"]))["step"] == 200
    assert os.path.exists(os.path.join(arts["exported"], "1", "saved_model.pb"))


def test_run_local_with_a_checkpoint_dir_outside_the_model_artifact(outside_dir):
    """--checkpoint-dir: the checkpoints go there (durable, what a preempted pod resumes from)
    and the model artifact holds only a pointer to it; run-local still succeeds."""
    d = str(outside_dir)
    write_csv(os.path.join(d, "data.csv"), 300, seed=5)
    ckpt = os.path.join(d, "ckpts")
    p = _ok(
        run_tfpipes(
            "run-local",
            "--source",
            "data.csv",
            "--label",
            "label",
            "--train-steps",
            "20",
            "--num-shards",
            "2",
            "--version",
            "1",
            "--checkpoint-dir",
            ckpt,
            "--pipeline-root",
            "root",
            cwd=d,
        )  # fmt: skip
    )
    arts = dict(re.findall(r"^\s+(examples|model|metrics|exported)\s+(\S+)$", p.stderr, re.M))
    assert os.path.exists(os.path.join(ckpt, "checkpoints", "checkpoint"))
    assert open(os.path.join(arts["model"], "MODEL_DIR")).read().strip() == ckpt
    assert os.path.exists(os.path.join(arts["exported"], "1", "saved_model.pb"))


def test_recurring_retrain_warm_starts_from_the_latest_published_version(outside_dir):
    """What a schedule passes: --warm-start-from latest:<publish base>. The first run (nothing
    published yet) starts fresh; later runs load the newest version's weights."""
    from tfpipes.export import ExportConfig, export
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.training import TrainConfig, train

    d = str(outside_dir)
    write_csv(os.path.join(d, "data.csv"), 400, seed=12)
    data = os.path.join(d, "data")
    preprocess(PreprocessConfig(os.path.join(d, "data.csv"), data, "label", num_shards=2))
    base = os.path.join(d, "published")
    first = train(
        TrainConfig(data, os.path.join(d, "run1"), train_steps=30, warm_start_from=f"latest:{base}")
    )
    assert first.final_step == 30
    export(ExportConfig(os.path.join(d, "run1"), base, version=20261101030000, data=data))
    train(TrainConfig(data, os.path.join(d, "run2"), train_steps=60, seed=7))
    export(ExportConfig(os.path.join(d, "run2"), base, version=20261102030000, data=data))
    p = run_tfpipes(
        "train",
        "--data",
        "data",
        "--model-dir",
        "run3",
        "--train-steps",
        "0",
        "--warm-start-from",
        f"latest:{base}",
        cwd=d,
    )
    _ok(p)
    assert "warm start: weights from" in p.stderr and "20261102030000" in p.stderr
    import tensorflow as tf

    def weights(model_dir):
        prefix = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        r = tf.train.load_checkpoint(prefix)
        return {
            k: r.get_tensor(k)
            for k in r.get_variable_to_shape_map()
            if k.startswith("model_variables/")
        }

    w2, w3 = weights(os.path.join(d, "run2")), weights(os.path.join(d, "run3"))
    assert w2.keys() == w3.keys() and w2
    for k in w2:
        np.testing.assert_array_equal(w2[k], w3[k])
