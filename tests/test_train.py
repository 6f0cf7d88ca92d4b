"""The trainer: exact resume after SIGKILL, steps per loop, user models, warm start, gs://
model dirs, corrupt checkpoints and bad input. Distributed runs with several processes are
tested in test_local_cluster.py; here every strategy path that runs in one process."""

import dataclasses
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.conftest import REPO, run_tfpipes, sample_dataset, tfpipes_exe
from tfpipes.errors import UserError
from tfpipes.sample_data import write_csv

pytestmark = pytest.mark.slow

SMALL = ["--hidden", "16,8", "--batch-size", "32", "--log-every", "10"]
LOSS_SCALE = "optimizer/dynamic_scale/.ATTRIBUTES/VARIABLE_VALUE"  # LossScaleOptimizer's


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """A small classification data set (string, int and float features), 2 shards per split."""
    return sample_dataset(tmp_path_factory.mktemp("train-data"), 1500, 11, num_shards=2)


@pytest.fixture(scope="module")
def data_rows(data) -> str:
    """The same rows in the per-row record layout (``--layout rows``)."""
    from tfpipes.preprocess import PreprocessConfig, preprocess

    src, out = os.path.join(os.path.dirname(data), "data.csv"), data + "-rows"
    preprocess(PreprocessConfig(src, out, "label", num_shards=2, progress=False, layout="rows"))
    return out


def _cfg(data, model_dir, **kw):
    from tfpipes.training import TrainConfig

    base = dict(hidden=(16, 8), batch_size=32, log_every=10, progress=False)
    return TrainConfig(data, str(model_dir), **{**base, **kw})


def _state(model_dir: str, step: int | None = None) -> dict:
    """Every tensor of the newest (or step's) checkpoint but the iterator and the save counter:
    the model's weights, the optimizer's slots and step counters, the global step."""
    import tensorflow as tf

    ckpt_dir = os.path.join(model_dir, "checkpoints")
    prefix = tf.train.latest_checkpoint(ckpt_dir)
    if step is not None:
        prefix = os.path.join(ckpt_dir, f"ckpt-{step}")
    reader = tf.train.load_checkpoint(prefix)
    keys = [
        k
        for k, dtype in reader.get_variable_to_dtype_map().items()
        if dtype != tf.variant and k.split("/")[0] in ("model_variables", "optimizer", "step")
    ]
    assert any(k.startswith("model_variables/") for k in keys)
    return {k: reader.get_tensor(k) for k in keys}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    diff = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not diff, f"{len(diff)} of {len(a)} tensors differ, e.g. {diff[:3]}"


def _start(args, cwd):
    """Start `tfpipes train`; a thread feeds its stderr lines into a queue."""
    p = subprocess.Popen(
        [tfpipes_exe(), *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in p.stderr], daemon=True).start()
    return p, lines


def _interrupt(args, cwd, sig, after_lines: int, delay: float) -> tuple[int | None, str]:
    """Run `tfpipes train`, send ``sig`` ``delay`` s after its ``after_lines``-th progress line.
    Returns (exit code, stderr); the code is None if the run ended before the signal."""
    p, lines = _start(args, cwd)
    out, seen, sent = [], 0, False
    deadline = time.monotonic() + 120
    try:
        while p.poll() is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                continue
            out.append(line)
            seen += line.startswith("step ")
            if seen >= after_lines:
                time.sleep(delay)
                p.send_signal(sig)
                sent = True
                break
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    time.sleep(0.1)
    while not lines.empty():
        out.append(lines.get())
    return (p.returncode if sent else None), "".join(out)


def test_killed_and_restarted_run_ends_with_identical_weights(data, outside_dir):
    """SIGKILL (and one SIGTERM) at random moments, restart with the same arguments each time:
    the final checkpoint equals an uninterrupted run's, every weight and optimizer slot."""
    d = str(outside_dir)
    seed = int(time.time())
    rng = random.Random(seed)
    common = [*SMALL, "--data", data, "--train-steps", "300", "--checkpoint-every", "20"]
    # A small shuffle buffer: the buffer is part of every checkpoint (the iterator state).
    common += ["--steps-per-loop", "5", "--max-to-keep", "2", "--seed", "7", "--shuffle-buffer"]
    common += ["300"]

    args = ["train", *common, "--model-dir", "killed"]
    interrupted = []
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        code, err = _interrupt(args, d, sig, rng.randint(1, 6), rng.uniform(0, 0.03))
        if code is None:
            break  # finished before the signal: fine, the comparison below still holds
        interrupted.append((sig, code, err))
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, err
        else:  # preemption: a checkpoint at the current step, then the retryable exit code
            assert code == 138 and "stopped by SIGTERM" in err and "Traceback" not in err, err
    assert len(interrupted) >= 2, f"seed {seed}: the runs ended before they could be killed"
    final = run_tfpipes(*args, cwd=d, timeout=300)
    assert final.returncode == 0, final.stderr
    assert "resumed from" in final.stderr, final.stderr
    from tfpipes.training import train  # the uninterrupted reference, the same code in-process

    ref = _cfg(data, os.path.join(d, "ref"), train_steps=300, checkpoint_every=300, seed=7)
    train(dataclasses.replace(ref, steps_per_loop=50, shuffle_buffer=300))
    try:
        _assert_same(_state(os.path.join(d, "ref"), 300), _state(os.path.join(d, "killed"), 300))
    except AssertionError as e:
        raise AssertionError(f"random seed {seed}: {e}") from None
    assert len([f for f in os.listdir(os.path.join(d, "killed", "checkpoints"))]) <= 5


@pytest.mark.parametrize(
    "cache,layout", [(False, "blocks"), (False, "rows"), (True, "blocks")],
    ids=["streaming", "streaming-rows", "cache"],
)  # fmt: skip
def test_steps_per_loop_1_and_50_give_the_same_weights(request, tmp_path, cache, layout):
    """Also across a resume: the 50-steps run stops at 70 and a new run goes on to 120 (with
    --cache the data position is the step count; streaming, the iterator's saved state), in
    either record layout (the kill test runs on the default, blocks)."""
    from tfpipes.training import train

    data = request.getfixturevalue("data" if layout == "blocks" else "data_rows")

    def cfg(name, spl, steps):
        return _cfg(data, tmp_path / name, train_steps=steps, steps_per_loop=spl, cache=cache)

    assert train(cfg("m1", 1, 120)).metrics["accuracy"] > 0.5
    assert train(cfg("m50", 50, 70)).final_step == 70
    r = train(cfg("m50", 50, 120))
    assert (r.start_step, r.steps_run, r.final_step) == (70, 50, 120)
    _assert_same(_state(str(tmp_path / "m1")), _state(str(tmp_path / "m50")))


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(data, tmp_path, caplog):
    from tfpipes.training import train

    m = tmp_path / "m"
    train(_cfg(data, m, train_steps=40, checkpoint_every=20))
    shard = m / "checkpoints" / "ckpt-40.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    r = train(_cfg(data, m, train_steps=60, checkpoint_every=20))
    assert (r.start_step, r.final_step) == (20, 60)
    assert any("ckpt-40 is corrupt" in rec.getMessage() for rec in caplog.records)


def test_custom_layer_user_model_trains_and_exports(data, outside_dir):
    """A model defined outside the package (tests/user_models), with custom layers that build
    their own weights, found through PYTHONPATH as a user's package would be."""
    import tensorflow as tf

    d = str(outside_dir)
    env = {"PYTHONPATH": REPO}
    p = run_tfpipes(
        "train", *SMALL, "--data", data, "--model-dir", "m", "--train-steps", "150",
        "--model", "tests.user_models.custom_layer:build_fn", cwd=d, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    metrics = json.load(open(os.path.join(d, "m", "metrics.json")))
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.2, metrics
    state = _state(os.path.join(d, "m"))
    shapes = sorted(v.shape for k, v in state.items() if k.startswith("model_variables/"))
    assert (16, 16) in shapes and () in shapes  # the residual block's weights and its scale
    from tfpipes.export import ExportConfig, export

    # The user names their module to export it too: a model dir does not choose what to import.
    export(
        ExportConfig(
            os.path.join(d, "m"),
            os.path.join(d, "exp"),
            version=1,
            data=data,
            model="tests.user_models.custom_layer:build_fn",
        )
    )
    loaded = tf.saved_model.load(os.path.join(d, "exp", "1"))
    out = loaded.signatures["predict"](
        x1=tf.constant([0.5]), x2=tf.constant([-1.0]), x3=tf.constant([0.0]),
        x4=tf.constant([1.0]), count=tf.constant([3], tf.int64), color=tf.constant(["red"]),
    )  # fmt: skip
    assert out["logits"].shape == (1, 3)


def test_user_model_errors_are_one_line(data, tmp_path):
    from tfpipes.training import train

    for model, message in (
        ("tests.user_models.custom_layer:wrong_outputs", r"needs \[batch, 3\]"),
        ("tests.user_models.nosuch:build", "cannot import"),
        ("tests.user_models.custom_layer:nosuch", "has no function 'nosuch'"),
        ("nosuch", "unknown model"),
    ):
        with pytest.raises(UserError, match=message):
            train(_cfg(data, tmp_path / "m", model=model, train_steps=5))
    assert not (tmp_path / "m" / "checkpoints").exists() or not os.listdir(
        tmp_path / "m" / "checkpoints"
    )


def test_warm_start_from_a_model_dir_and_from_an_export(data, tmp_path):
    from tfpipes.export import ExportConfig, export
    from tfpipes.training import train

    src = tmp_path / "src"
    before = train(_cfg(data, src, train_steps=50)).metrics["accuracy"]
    export(ExportConfig(str(src), str(tmp_path / "exp"), version=1, data=data))
    want = {k: v for k, v in _state(str(src)).items() if k.startswith("model_variables/")}
    for name, source in (("from_dir", src), ("from_export", tmp_path / "exp" / "1")):
        r = train(_cfg(data, tmp_path / name, train_steps=0, warm_start_from=str(source)))
        assert r.final_step == 0
        got = {k: v for k, v in _state(str(tmp_path / name)).items() if k in want}
        _assert_same(want, got)
    # Training on continues from the loaded weights, with a fresh optimizer and step: 30 more
    # steps end about where 50 did, or better (a fresh model after 30 steps is well below:
    # 0.42 against 0.50 here, 0.57 warm-started).
    r = train(_cfg(data, tmp_path / "more", train_steps=30, warm_start_from=str(src)))
    assert (r.start_step, r.final_step) == (0, 30)
    assert r.metrics["accuracy"] > before - 0.03, (r.metrics, before)
    # a model of another shape is refused before anything is written
    with pytest.raises(UserError, match="different model options"):
        train(_cfg(data, tmp_path / "bad", hidden=(4,), warm_start_from=str(src)))
    with pytest.raises(UserError, match="holds no weight|does not fit"):
        train(_cfg(data, tmp_path / "bad", hidden=(4,), warm_start_from=str(tmp_path / "exp/1")))
    with pytest.raises(UserError, match="not a model directory"):
        train(_cfg(data, tmp_path / "bad", warm_start_from=str(tmp_path)))
    assert not (tmp_path / "bad" / "model_config.json").exists()


def test_model_dir_of_another_data_set_or_input_mode_is_refused(data, tmp_path):
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.training import train

    m = tmp_path / "m"
    train(_cfg(data, m, train_steps=20, checkpoint_every=20))
    before = sorted(os.listdir(m / "checkpoints"))
    write_csv(str(tmp_path / "reg.csv"), 300, "regression", seed=2)
    other = str(tmp_path / "reg")
    preprocess(PreprocessConfig(str(tmp_path / "reg.csv"), other, "label", num_shards=1))
    with pytest.raises(UserError, match="different data set schema"):
        train(_cfg(other, m, train_steps=40))
    with pytest.raises(UserError, match="different setting of --cache"):
        train(_cfg(data, m, train_steps=40, cache=True))
    assert sorted(os.listdir(m / "checkpoints")) == before


@pytest.mark.gcs
def test_gs_model_dir_holds_checkpoints_and_logs_and_resumes(data, gcs_bucket):
    from tfpipes import storage
    from tfpipes.training import train

    model_dir = f"{gcs_bucket}/runs/m"
    r = train(_cfg(data, model_dir, train_steps=40, checkpoint_every=20, max_to_keep=1))
    assert r.final_step == 40 and r.logs == f"{model_dir}/logs"
    ckpts = storage.listdir(f"{model_dir}/checkpoints")
    assert ckpts == ["checkpoint", "ckpt-40.data-00000-of-00001", "ckpt-40.index"]
    assert storage.listdir(f"{model_dir}/logs") == ["eval", "train"]
    assert storage.listdir(f"{model_dir}/logs/train")[0].startswith("events.out.tfevents")
    assert json.loads(storage.read_text(f"{model_dir}/metrics.json"))["step"] == 40
    assert storage.exists(f"{model_dir}/model_config.json")
    r = train(_cfg(data, model_dir, train_steps=60, checkpoint_every=20, max_to_keep=1))
    assert (r.start_step, r.final_step) == (40, 60)
    assert "ckpt-60.index" in storage.listdir(f"{model_dir}/checkpoints")
    assert "ckpt-40.index" not in storage.listdir(f"{model_dir}/checkpoints")


def test_a_resumed_gs_run_names_the_gs_location_not_its_local_mirror(data, gcs_bucket, caplog):
    """Leftover fixed (issue 12): "resumed from /tmp/tfpipes-model-.../ckpt-20" named the
    local mirror, which is gone when the run ends; the log and the result name the model dir
    the user gave."""
    import logging

    from tfpipes.training import train

    model_dir = f"{gcs_bucket}/runs/resumed"
    train(_cfg(data, model_dir, train_steps=20, checkpoint_every=20))
    caplog.set_level(logging.INFO, logger="tfpipes.train")
    r = train(_cfg(data, model_dir, train_steps=40, checkpoint_every=20))
    resumed = [rec.getMessage() for rec in caplog.records if "resumed from" in rec.getMessage()]
    assert resumed == [f"resumed from {model_dir}/checkpoints/ckpt-20 at step 20"], resumed
    assert r.checkpoint == f"{model_dir}/checkpoints/ckpt-40"


def test_summaries_hold_loss_learning_rate_throughput_and_eval_metrics(data, tmp_path):
    import tensorflow as tf

    from tfpipes.training import train

    train(_cfg(data, tmp_path / "m", train_steps=20, checkpoint_every=20))
    tags: dict[str, set] = {"train": set(), "eval": set()}
    for split in tags:
        logdir = tmp_path / "m" / "logs" / split
        for f in os.listdir(logdir):
            for event in tf.compat.v1.train.summary_iterator(str(logdir / f)):
                tags[split].update(v.tag for v in event.summary.value)
    assert {"loss", "learning_rate", "examples_per_second"} <= tags["train"]
    assert {"loss", "accuracy"} <= tags["eval"]


def test_multi_worker_strategy_in_one_process_saves_and_resumes(data, outside_dir):
    """MultiWorkerMirroredStrategy with a one-worker TF_CONFIG on 127.0.0.1: the plain-iterator
    path, the chief's checkpoint and the resume (several processes: test_local_cluster.py)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        "TF_CONFIG": json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
        )
    }
    d = str(outside_dir)
    args = ["train", *SMALL, "--data", data, "--model-dir", "m", "--strategy", "multi_worker"]
    p = run_tfpipes(*args, "--train-steps", "30", cwd=d, env=env, timeout=300)
    assert p.returncode == 0 and "strategy: multi_worker" in p.stderr, p.stderr
    p = run_tfpipes(*args, "--train-steps", "60", cwd=d, env=env, timeout=300)
    assert p.returncode == 0 and "ckpt-30 at step 30" in p.stderr, p.stderr
    assert not [f for f in os.listdir(d) if f.startswith("_tmp_worker")]


MIRRORED_SCRIPT = """
import sys, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from tfpipes import strategy as strategy_lib, training as train_lib
strategy_lib.create_strategy = lambda res: tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
data, root = sys.argv[1], sys.argv[2]
precision = sys.argv[3]
for name, steps in (("straight", 60), ("resumed", 20), ("resumed", 60)):
    r = train_lib.train(train_lib.TrainConfig(data, f"{root}/{name}", hidden=(16, 8),
        batch_size=32, train_steps=steps, checkpoint_every=20, log_every=10,
        strategy="mirrored", mixed_precision=precision, progress=False))
    print(name, r.start_step, r.final_step)
"""


@pytest.mark.parametrize("precision", ["", "float16"], ids=["float32", "float16"])
def test_two_replica_mirrored_resume_skips_to_the_same_batches(data, tmp_path, precision):
    """Two replicas in one process need a distributed iterator, which TF cannot checkpoint:
    the resumed run rebuilds the pipeline and skips what was consumed; same weights. (Two
    CPU devices need a process of their own; the strategy is the one TF would pick for two
    GPUs, substituted for create_strategy's.) float16: what a multi-GPU run with
    --mixed-precision does, the loss scale kept across replicas and the resume."""
    p = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, data, str(tmp_path), precision],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:3] == ["straight 0 60", "resumed 0 20", "resumed 20 60"]
    straight = _state(str(tmp_path / "straight"))
    _assert_same(straight, _state(str(tmp_path / "resumed")))
    assert (LOSS_SCALE in straight) == (precision == "float16")


def test_mixed_precision_trains_and_exports_float32_outputs(data, outside_dir):
    """--mixed-precision on the CPU computes the body in bfloat16 (float16 with loss scaling
    on a GPU); the model still learns, and the export's outputs are float32."""
    import tensorflow as tf

    d = str(outside_dir)
    p = run_tfpipes(
        "train", *SMALL, "--data", data, "--model-dir", "m", "--train-steps", "150",
        "--mixed-precision", cwd=d, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    metrics = json.load(open(os.path.join(d, "m", "metrics.json")))
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.2, metrics
    from tfpipes.export import ExportConfig, export

    r = export(ExportConfig(os.path.join(d, "m"), os.path.join(d, "exp"), version=1, data=data,
                            tolerance=1e-2))  # fmt: skip
    out = tf.saved_model.load(r.path).signatures["predict"](
        x1=tf.constant([0.5]), x2=tf.constant([-1.0]), x3=tf.constant([0.0]),
        x4=tf.constant([1.0]), count=tf.constant([3], tf.int64), color=tf.constant(["red"]),
    )  # fmt: skip
    assert out["logits"].dtype == tf.float32 and out["probabilities"].dtype == tf.float32


def test_float16_with_loss_scaling_resumes_exactly_and_exports_float32(data, outside_dir):
    """--mixed-precision float16, the GPU's setting, run on the CPU: the loss scale lives in
    the checkpoint, a resumed run ends with the weights, slots and scale of an uninterrupted
    one, the export computes in float32, and resuming in another precision is refused."""
    import tensorflow as tf

    d = str(outside_dir)

    def run(model_dir, steps, precision="float16"):
        return run_tfpipes(
            "train", *SMALL, "--data", data, "--model-dir", model_dir, "--train-steps", steps,
            "--checkpoint-every", "20", "--mixed-precision", precision, cwd=d, timeout=300,
        )  # fmt: skip

    for model_dir, steps in (("straight", "60"), ("resumed", "20"), ("resumed", "60")):
        p = run(model_dir, steps)
        assert p.returncode == 0, p.stderr
        assert "float16 compute, float32 weights, dynamic loss scaling" in p.stderr
    straight = _state(os.path.join(d, "straight"))
    assert straight[LOSS_SCALE] > 1  # dynamic scaling on (2**15 at the start)
    _assert_same(straight, _state(os.path.join(d, "resumed")))

    before = sorted(os.listdir(os.path.join(d, "resumed", "checkpoints")))
    p = run("resumed", "80", "bfloat16")
    assert p.returncode == 2, p.stderr
    assert "--mixed-precision" in p.stderr and '"float16"' in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(os.path.join(d, "resumed", "checkpoints"))) == before

    from tfpipes.export import ExportConfig, export

    r = export(ExportConfig(os.path.join(d, "straight"), os.path.join(d, "exp"), version=1,
                            data=data, tolerance=1e-2))  # fmt: skip
    out = tf.saved_model.load(r.path).signatures["predict"](
        x1=tf.constant([0.5]), x2=tf.constant([-1.0]), x3=tf.constant([0.0]),
        x4=tf.constant([1.0]), count=tf.constant([3], tf.int64), color=tf.constant(["red"]),
    )  # fmt: skip
    assert out["logits"].dtype == tf.float32


def test_mixed_precision_dtype_is_checked(data, tmp_path):
    from tfpipes.training import train

    with pytest.raises(UserError, match="--mixed-precision 'float8'"):
        train(_cfg(data, tmp_path / "m", mixed_precision="float8"))
    assert not (tmp_path / "m").exists()


def test_jit_compiles_the_train_step_with_xla(data, outside_dir):
    """--jit with TensorFlow's switch that lets auto-clustering act on the CPU as it does on a
    GPU: XLA compiles a cluster holding the model's and the optimizer's variables (the dump
    names its resource arguments), and the model still learns and exports."""
    d = str(outside_dir)
    env = {
        "TF_XLA_FLAGS": "--tf_xla_cpu_global_jit",
        "XLA_FLAGS": f"--xla_dump_to={os.path.join(d, 'xla')}",
    }
    p = run_tfpipes(
        "train", *SMALL, "--data", data, "--model-dir", "m", "--train-steps", "150", "--jit",
        cwd=d, env=env, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "no GPU is visible" not in p.stderr
    resource_args = {
        int(m.group(1))
        for f in os.listdir(os.path.join(d, "xla"))
        if (m := re.search(r"cluster_\d+__XlaCompiledKernel_true__.*XlaNumResourceArgs_(\d+)", f))
    }
    # The MLP has 6 weights, Adam 2 slots each + iteration and learning rate: one cluster
    # updates them all.
    assert resource_args and max(resource_args) >= 18, sorted(resource_args)
    metrics = json.load(open(os.path.join(d, "m", "metrics.json")))
    assert metrics["accuracy"] > metrics["majority_baseline_accuracy"] + 0.2, metrics


def test_float16_overflow_lowers_the_loss_scale_and_a_resume_keeps_it(tmp_path):
    """Targets in the thousands overflow float16 gradients at the initial loss scale (2**15):
    the LossScaleOptimizer skips those steps and halves its scale. The scale and the count
    of applied steps are part of the state a resumed run must end with, bit for bit."""
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.training import train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 3))
    y = 3000 * x[:, 0] - 2000 * x[:, 1] + rng.normal(size=1200)
    lines = ["a,b,c,y"] + [f"{r[0]:.5f},{r[1]:.5f},{r[2]:.5f},{t:.3f}" for r, t in zip(x, y)]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    data = str(tmp_path / "data")
    preprocess(PreprocessConfig(str(tmp_path / "r.csv"), data, "y", num_shards=2, progress=False))

    def run(name, steps):
        cfg = _cfg(data, tmp_path / name, train_steps=steps, checkpoint_every=20)
        return train(dataclasses.replace(cfg, hidden=(16,), mixed_precision="float16"))

    run("straight", 60)
    run("resumed", 20)
    assert run("resumed", 60).start_step == 20
    straight = _state(str(tmp_path / "straight"))
    applied = straight["optimizer/inner_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]
    assert straight[LOSS_SCALE] < 2**15 and applied < 60, (straight[LOSS_SCALE], applied)
    _assert_same(straight, _state(str(tmp_path / "resumed")))


# --- one cadence for every runner: what the controller guarantees, with a stand-in runner ----


class _FakeRunner:
    """A runner that trains nothing: its step advances by what it is asked (plus ``overshoot``,
    as a parameter-server runner's may), its loss falls; it records every call."""

    def __init__(self, restored="", start=0, chunk=None, overshoot=0, model_dir=None):
        self.restored, self._step, self.chunk, self.overshoot = restored, start, chunk, overshoot
        self.saves_on_sigterm = True
        self.model_dir = model_dir
        self.calls: list = []
        self.config_at_save: list[bool] = []

    @property
    def step(self):
        return self._step

    @property
    def learning_rate(self):
        return 0.25

    def train(self, n):
        self.calls.append(("train", n))
        self._step += n + self.overshoot
        return 1.0 / self._step

    def save(self, step):
        self.calls.append(("save", step))
        self.config_at_save.append(
            os.path.exists(os.path.join(self.model_dir, "model_config.json"))
        )
        return os.path.join(self.model_dir, "checkpoints", f"ckpt-{step}")

    def evaluate(self, checkpoint):
        return {"examples": 10, "loss": 0.5, "accuracy": 0.9, "step": self._step}

    def log_suffix(self):
        return " (steps by worker:0 1)"

    def errors(self, resume_from):
        import contextlib

        return contextlib.nullcontext()


def _tags(logdir) -> dict[str, dict[int, float]]:
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict[str, dict[int, float]] = {}
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()
    for tag in acc.Tags()["tensors"]:
        out[tag] = {
            e.step: float(tf.constant(tensor_util.make_ndarray(e.tensor_proto)))
            for e in acc.Tensors(tag)
        }
    return out


def test_a_resumed_run_removes_what_an_interrupted_save_left(tmp_path):
    """A kill while TensorFlow writes the state file (as checkpoint.tmp<32 hex>, then renamed)
    or a sharded save (ckpt-N_temp/) leaves them behind: the next run's store removes those,
    and nothing else (a user's file of a similar name stays)."""
    from tfpipes.checkpoints import CheckpointStore

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ("checkpoint.tmp" + "8077975e418d4cfcbef62ceac3a4f5fd")).write_text("x")
    (ckpts / "ckpt-20_temp").mkdir()
    (ckpts / "ckpt-20_temp" / "part-00000").write_text("x")
    keep = ["checkpoint", "ckpt-10.index", "checkpoint.tmp-notes", "checkpoint.tmpABC"]
    for name in keep:
        (ckpts / name).write_text("mine")
    CheckpointStore(str(tmp_path)).close()
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(keep)


def _cadence(tmp_path, runner, **kw):
    from tfpipes.checkpoints import CheckpointStore
    from tfpipes.training import controller

    cfg = _cfg("unused", tmp_path, **kw)
    store = CheckpointStore(str(tmp_path))
    writer = controller.MetricWriter(store.logs_dir)
    checkpoints = controller.Checkpoints(str(tmp_path), {"model": 1}, runner, store, chief=True)
    return controller.Cadence(cfg, runner, writer, checkpoints), writer, checkpoints


def test_the_cadence_writes_every_summary_and_checkpoint_for_any_runner(tmp_path):
    """Drift fixed: the parameter-server loop wrote no learning_rate summary; now one cadence
    serves every runner. A runner that overshoots (ps closures applied twice) still gets a log
    line, summaries and a checkpoint at every boundary it passes, and the final eval."""
    runner = _FakeRunner(overshoot=1, model_dir=str(tmp_path))
    cadence, writer, checkpoints = _cadence(
        tmp_path, runner, train_steps=50, log_every=10, checkpoint_every=20
    )
    assert cadence.run()[0] >= 50
    writer.eval(runner.evaluate(checkpoints.last))
    train_tags = _tags(tmp_path / "logs" / "train")
    assert {"loss", "learning_rate", "examples_per_second"} <= train_tags.keys()
    assert train_tags["learning_rate"] == dict.fromkeys(train_tags["loss"], 0.25)
    assert {"loss", "accuracy"} <= _tags(tmp_path / "logs" / "eval").keys()
    saves = [s for kind, s in runner.calls if kind == "save"]
    assert len(saves) == 3 and saves[-1] == runner.step  # two boundaries and the end


def test_the_cadence_chunks_to_the_boundaries_as_the_runner_allows(tmp_path):
    runner = _FakeRunner(chunk=7, model_dir=str(tmp_path))
    cadence, _, _ = _cadence(tmp_path, runner, train_steps=30, log_every=10, checkpoint_every=20)
    cadence.run()
    assert runner.calls == [
        ("train", 7), ("train", 3), ("train", 7), ("train", 3), ("save", 20),
        ("train", 7), ("train", 3), ("save", 30),
    ]  # fmt: skip


def test_model_config_is_written_with_the_first_checkpoint_for_any_runner(tmp_path):
    """Drift fixed: "model_config.json with the first checkpoint" was decided two ways (a
    flag in one loop, "no checkpoint in the manager yet" in the other). One rule now: the
    chief writes it right before this run's first checkpoint, never earlier."""
    runner = _FakeRunner(model_dir=str(tmp_path))
    cadence, _, checkpoints = _cadence(tmp_path, runner, train_steps=0)
    assert not (tmp_path / "model_config.json").exists()
    cadence.run()  # nothing to train: still one checkpoint, and the config with it
    assert runner.config_at_save == [True]
    assert json.loads((tmp_path / "model_config.json").read_text()) == {"model": 1}
    # a resumed run at its target saves nothing, and writes nothing
    (tmp_path / "model_config.json").unlink()
    resumed = _FakeRunner(
        restored=str(tmp_path / "checkpoints" / "ckpt-0"), model_dir=str(tmp_path)
    )
    _cadence(tmp_path, resumed, train_steps=0)[0].run()
    assert resumed.calls == [] and not (tmp_path / "model_config.json").exists()


def test_sigterm_saves_and_stops_with_a_retryable_error_for_any_runner(tmp_path):
    from tfpipes.errors import RetryableError

    runner = _FakeRunner(chunk=5, model_dir=str(tmp_path))
    cadence, _, _ = _cadence(tmp_path, runner, train_steps=100, checkpoint_every=50)
    train_once = runner.train

    def preempted(n):
        os.kill(os.getpid(), signal.SIGTERM)
        return train_once(n)

    runner.train = preempted
    with pytest.raises(RetryableError, match="stopped by SIGTERM .* at step 5; checkpoint"):
        cadence.run()
    assert runner.calls == [("train", 5), ("save", 5)]


def test_every_runner_checks_the_run_key_on_resume(tmp_path):
    """Drift fixed: the parameter-server path built its compatibility config without ``run``,
    so a PS resume never checked --cache or the precision. Both runners now build it with
    compat.model_config, which always has it."""
    from tfpipes.models import ModelSpec
    from tfpipes.schema import Feature, Schema
    from tfpipes.training import compat

    schema = Schema((Feature("x", "float32"),), Feature("y", "int64"), "classification", 2)
    cfg = _cfg("d", tmp_path)
    assert cfg.model_spec == ModelSpec("mlp", (16, 8), 0.0)
    config = compat.model_config(cfg, schema, {}, "")
    assert config["run"] == {"cache": False, "mixed_precision": ""}
    compat.write_model_config(str(tmp_path), config)
    compat.check_compatible(str(tmp_path), config)
    cached = compat.model_config(dataclasses.replace(cfg, cache=True), schema, {}, "")
    with pytest.raises(UserError, match="different setting of --cache"):
        compat.check_compatible(str(tmp_path), cached)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_regularization_losses_in_the_compute_dtype_do_not_break_any_step(data, policy):
    """Drift fixed: the parameter-server step summed the model's regularization losses without
    casting them to float32, so a loss in the compute dtype (an activity regularizer under
    mixed precision) failed there. Both steps take their loss from step.replica_loss."""
    import keras
    import tensorflow as tf

    from tfpipes.input_pipeline import make_dataset
    from tfpipes.manifest import verify_dataset
    from tfpipes.models import ModelSpec, build_model
    from tfpipes.schema import load_schema
    from tfpipes.training import step as step_lib
    from tfpipes.training.ps_runner import PSTrainer

    manifest, schema = verify_dataset(data), load_schema(data)
    from tfpipes.layout import read_stats

    stats = read_stats(data)
    batch = next(iter(make_dataset(data, manifest, "train", schema, 8, training=False)))
    spec = ModelSpec("tests.user_models.regularized:build_fn", (16,), 0.0)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_model(spec, schema, stats)
        model(batch[0], training=True)
        assert {x.dtype for x in model.losses} != {tf.float32}  # what the cast is for
        loss = step_lib.replica_loss(model, True, batch, 8)
        assert loss.dtype == tf.float32 and np.isfinite(float(loss))
        ps = PSTrainer(tf.distribute.get_strategy(), spec, schema, stats, "adam", 1e-3, 8)
        assert np.isfinite(float(ps.replica_step(batch)))
    finally:
        keras.config.set_dtype_policy(previous)


def test_the_peer_timeout_of_the_config_bounds_every_wait(data, tmp_path, monkeypatch):
    """``TrainConfig.peer_timeout`` is what the peer waits use (read once in train(), passed
    down), over $TFPIPES_PEER_TIMEOUT; under MWMS and under parameter servers."""
    from tfpipes.errors import RetryableError
    from tfpipes.training import train

    monkeypatch.setenv("TFPIPES_PEER_TIMEOUT", "120")
    monkeypatch.setenv("GRPC_FAIL_FAST", "")  # restored after: the ps path sets it
    ports = []
    for _ in range(3):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    a, b, c = (f"127.0.0.1:{p}" for p in ports)
    clusters = {
        "mwms": ({"worker": [a, b]}, {"type": "worker", "index": 1}, "worker:0"),
        "ps": ({"chief": [a], "worker": [b], "ps": [c]}, {"type": "chief", "index": 0}, "ps:0"),
    }
    for cluster, task, missing in clusters.values():
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        t = time.monotonic()
        with pytest.raises(RetryableError, match=f"{missing} at .* unreachable after 1.5 s"):
            train(_cfg(data, tmp_path / "m", peer_timeout=1.5))
        assert time.monotonic() - t < 30
    assert not (tmp_path / "m" / "model_config.json").exists()
