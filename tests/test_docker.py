"""The tfpipes image, built by docker/build.sh and run by the Docker engine.

Nothing here is skipped: with no engine (none answering and .ci/docker-engine.sh cannot start
one) the build fixture fails, and so does every test. Containers always run with
``--network none``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tfpipes import __version__

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "tfpipes:latest"

# The timeout covers the session fixture's build in whichever test comes first: on a fresh
# machine that installs the engine, debootstraps the base and fills the wheelhouse (minutes).
pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def run_in_image(image: str, *command: str, user: str | None = None) -> subprocess.CompletedProcess:
    """``docker run --rm --network none [--user USER] IMAGE COMMAND``; text output, both streams."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", "none", *(["--user", user] if user else []), image]
        + list(command),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def test_tfpipes_help_runs(tfpipes_image):
    out = _ok(run_in_image(tfpipes_image, "tfpipes", "--help")).stdout
    assert out.startswith("usage: tfpipes")


def test_runs_as_uid_1000_not_root(tfpipes_image):
    assert _ok(run_in_image(tfpipes_image, "id", "-u")).stdout.strip() == "1000"


def test_python3_is_the_venv_with_kfp_tensorflow_and_tfpipes(tfpipes_image):
    # KFP components run `python3 -m kfp.dsl.executor_main` and install nothing at run time.
    script = (
        "import sys, kfp, kfp.dsl.executor_main, tensorflow, tfpipes; "
        "print(sys.prefix, tfpipes.__version__)"
    )
    out = _ok(run_in_image(tfpipes_image, "python3", "-c", script)).stdout.split()
    assert out == ["/opt/venv", __version__]


def test_has_oci_labels(tfpipes_image):
    p = _ok(
        subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", tfpipes_image],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    labels = json.loads(p.stdout)
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == "tfpipes"
    assert labels[prefix + "version"] == __version__
    for key in ("source", "description", "licenses", "revision"):
        assert labels.get(prefix + key), f"label {prefix}{key} is missing or empty: {labels}"


def test_holds_no_wheels_pip_or_pip_caches(tfpipes_image):
    # As root, so that no directory is unreadable to the search.
    found = _ok(
        run_in_image(
            tfpipes_image,
            "sh",
            "-c",
            "find / -xdev \\( -name '*.whl' -o -path '*/.cache/pip' \\) -print",
            user="0",
        )
    ).stdout
    assert found == "", f"left in the image:\n{found}"
    # pip installed the venv from the build context; the venv itself has none.
    p = run_in_image(tfpipes_image, "python3", "-c", "import pip")
    assert p.returncode != 0 and "No module named 'pip'" in p.stderr


# TensorFlow's C++ INFO/WARNING notices (see tests/test_local_cluster.py::TF_NOTICE).
TF_NOTICE = re.compile(
    r"absl::InitializeLog|^\s*[IW]\d{4} \d\d:\d\d:\d\d|To enable the following instructions"
    r"|oneDNN|cpu_feature_guard",
    re.M,
)


def test_image_keeps_tensorflow_quiet(tfpipes_image):
    # Every container of the image (a KFP step on a cluster, a TFJob pod) starts quiet.
    script = (
        "import os, tensorflow as tf; tf.constant(1); print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    )
    p = _ok(run_in_image(tfpipes_image, "python3", "-c", script))
    assert p.stdout.strip() == "2"
    assert not TF_NOTICE.search(p.stderr), p.stderr


# Run by a step's container: who it is, what it sees, what it may write.
PROBE = """
import os, sys
src, warm, out, hidden, published = sys.argv[1:6]
print("uid", os.getuid(), "gid", os.getgid())
print("interfaces", sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]))
print("source", open(src).read().strip())
print("beside source", sorted(os.listdir(os.path.dirname(src))))
print("hidden visible", os.path.exists(hidden))
for name, path in (("source", src), ("warm", os.path.join(warm, "new"))):
    try:
        with open(path, "a") as f:
            f.write("x")
        print(name, "writable")
    except OSError as e:
        print(name, "not writable:", e.strerror)
with open(os.path.join(out, "written-by-step"), "w") as f:
    f.write("ok")
os.mkdir(os.path.join(published, "2"))  # a new version beside one of another owner
print("output written")
"""


def test_step_containers_run_unprivileged_with_exactly_the_named_paths(tfpipes_image, tmp_path):
    """docker_run_options on the real engine: a non-root uid (even when the host user is root),
    only lo, exactly the named paths mounted (inputs read-only, a missing output directory
    created and mounted itself, not its parent); written outputs end up the host user's."""
    from tfpipes_pipelines.training import (
        absolute_local_paths,
        docker_run_options,
        writable_for_containers,
    )

    import docker

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.csv").write_text("a,label")
    (inputs / "secret.txt").write_text("not for the step")  # beside the input, not named
    warm = tmp_path / "warm-model"
    warm.mkdir()
    (warm / "model_config.json").write_text("{}")
    # Writable by anyone: only the read-only mounts can keep the step from writing them.
    os.chmod(inputs / "data.csv", 0o666)
    os.chmod(warm, 0o777)
    outputs = tmp_path / "outputs"  # exists; the checkpoint dir inside it does not
    outputs.mkdir()
    # An existing output dir of someone else's: handed to the step's user for the run, then
    # given back to its owner.
    published = outputs / "published"
    published.mkdir()
    (published / "1").mkdir()
    other = 4242 if os.getuid() == 0 else os.getuid()
    if os.getuid() == 0:
        for path in (published, published / "1"):
            os.chown(path, other, other)
    params = absolute_local_paths(
        {
            "source": str(inputs / "data.csv"),
            "warm_start_from": str(warm),
            "checkpoint_dir": str(outputs / "ckpt" / "run1"),
            "publish_base": str(published),
            "cache_index": "gs://bucket/index",
        }
    )
    options = docker_run_options(params)
    ckpt = str(outputs / "ckpt" / "run1")
    assert os.path.isdir(ckpt)
    expected = {
        (str(inputs / "data.csv"), True),
        (str(warm), True),
        (ckpt, False),
        (str(published), False),
    }
    assert {(m["Source"], m["ReadOnly"]) for m in options["mounts"]} == expected
    assert options["network_mode"] == "none"
    client = docker.from_env()
    argv = ["python3", "-c", PROBE, params["source"], str(warm), ckpt, str(inputs / "secret.txt")]
    argv += [str(published)]
    with writable_for_containers([m["Source"] for m in options["mounts"] if not m["ReadOnly"]]):
        container = client.containers.run(tfpipes_image, argv, detach=True, **options)
        try:
            code = container.wait(timeout=120)["StatusCode"]
            log = container.logs().decode()
            container.reload()
            mounts = container.attrs["Mounts"]
        finally:
            container.remove(force=True)
    assert code == 0, log
    lines = log.splitlines()
    uid = int(lines[0].split()[1])
    assert uid != 0, log
    if os.getuid() == 0:
        assert lines[0] == "uid 1000 gid 1000", log
    assert "interfaces ['lo']" in lines, log
    assert "source a,label" in lines and "hidden visible False" in lines, log
    assert "beside source ['data.csv']" in lines, log
    assert "source not writable: Read-only file system" in lines, log
    assert "warm not writable: Read-only file system" in lines, log
    assert "output written" in lines, log
    # The engine's own view of the container's mounts: the named paths, nothing else.
    assert {(m["Source"], not m["RW"]) for m in mounts} == expected, mounts
    written = os.path.join(ckpt, "written-by-step")
    assert open(written).read() == "ok"
    assert (os.stat(written).st_uid, os.stat(ckpt).st_uid) == (os.getuid(), os.getuid())
    assert os.stat(os.path.join(published, "2")).st_uid == os.getuid()
    assert {os.stat(p).st_uid for p in (published, published / "1")} == {other}
    assert open(inputs / "data.csv").read() == "a,label"


@pytest.mark.slow
def test_demo_in_containers_is_quiet_and_runs_unprivileged(tfpipes_image, outside_dir):
    """`tfpipes demo --runner docker` with TF_CPP_MIN_LOG_LEVEL=0 in the user's environment:
    the whole pipeline runs in the image as a non-root user (the host user here is root), its
    outputs come back owned by the host user, and no TensorFlow C++ notice reaches the
    terminal (neither from the containers nor from the demo's own prediction)."""
    from tests.conftest import run_tfpipes

    d = str(outside_dir)
    p = run_tfpipes(
        "demo",
        "--runner",
        "docker",
        "--rows",
        "600",
        "--train-steps",
        "40",
        cwd=d,
        timeout=900,
        env={"TF_CPP_MIN_LOG_LEVEL": "0"},
    )
    assert p.returncode == 0, p.stderr[-4000:]
    terminal = p.stdout + p.stderr
    assert "demo: prediction for eval row 0" in terminal, terminal
    assert not TF_NOTICE.search(terminal), terminal
    root = os.path.join(d, "tfpipes-demo", "pipeline-root")
    owners = {os.lstat(os.path.join(r, n)).st_uid for r, ds, fs in os.walk(root) for n in ds + fs}
    assert owners == {os.getuid()}, owners


@pytest.mark.slow
def test_run_local_docker_matches_subprocess(tfpipes_image, outside_dir):
    """The whole pipeline in containers (no network, nothing installed at run time) gives the
    same model as the subprocess runner: equal predictions on the eval split."""
    import re

    import numpy as np
    import tensorflow as tf

    from tests.conftest import run_tfpipes
    from tfpipes.manifest import read_manifest
    from tfpipes.records import dataset_row_records
    from tfpipes.sample_data import write_csv

    d = str(outside_dir)
    write_csv(os.path.join(d, "data.csv"), 1200, seed=11)
    arts = {}
    for runner in ("subprocess", "docker"):
        p = run_tfpipes(
            "run-local",
            "--runner",
            runner,
            "--source",
            "data.csv",
            "--label",
            "label",
            "--train-steps",
            "120",
            "--num-shards",
            "2",
            "--version",
            "1",
            "--pipeline-root",
            f"root-{runner}",
            # Relative: the caller's directory, also for a step in a container.
            "--checkpoint-dir",
            f"ckpt-{runner}",
            cwd=d,
            timeout=900,
        )
        assert p.returncode == 0, f"{runner}: exit {p.returncode}\n{p.stderr[-4000:]}"
        arts[runner] = dict(
            re.findall(r"^\s+(examples|model|metrics|exported)\s+(\S+)$", p.stderr, re.M)
        )
        assert set(arts[runner]) == {"examples", "model", "metrics", "exported"}, p.stderr
        assert os.path.isfile(os.path.join(d, f"ckpt-{runner}", "model_config.json")), runner
        assert not TF_NOTICE.search(p.stdout + p.stderr), p.stderr
    log = open(os.path.join(d, "root-docker", "run-local.log")).read()
    assert "Found image 'tfpipes:" in log and "pip install" not in log
    data = arts["subprocess"]["examples"]
    records = tf.constant(dataset_row_records(data, "eval"))
    outs = {}
    for runner, a in arts.items():
        sig = tf.saved_model.load(os.path.join(a["exported"], "1")).signatures["serving_default"]
        outs[runner] = sig(examples=records)["probabilities"].numpy()
    np.testing.assert_allclose(outs["docker"], outs["subprocess"], atol=1e-5)
    # the data sets are byte-identical too
    for rel in read_manifest(data).shard_paths("train"):
        with (
            open(os.path.join(data, rel), "rb") as f1,
            open(os.path.join(arts["docker"]["examples"], rel), "rb") as f2,
        ):
            assert f1.read() == f2.read()


@pytest.mark.slow
def test_fanout_preprocess_in_containers_equals_single_process(tfpipes_image, outside_dir, capfd):
    """The fan-out (scans, plan, a ParallelFor of 3 parts, the Collected commit) through kfp.local's
    DockerRunner, each step in the image with no network: the same rows per split and the same
    statistics as single-process preprocess on the host."""
    import warnings

    from kfp import local
    from tfpipes_pipelines.fanout import fanout_preprocess
    from tfpipes_pipelines.training import docker_run_options, writable_for_containers

    from tests.test_preprocess_fanout import BLOCK, _check_same, _dataset, _single, _write_inputs

    d = str(outside_dir)
    src = _write_inputs(d)
    _single(src, os.path.join(d, "single"))
    single = _dataset(os.path.join(d, "single"))
    root = os.path.join(d, "root")
    os.makedirs(root)
    options = docker_run_options({"source": src})  # the input mounted read-only
    assert [(m["Source"], m["ReadOnly"]) for m in options["mounts"]] == [(src, True)]
    local.init(runner=local.DockerRunner(**options), pipeline_root=root, raise_on_error=True)
    with writable_for_containers([root]), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        task = fanout_preprocess(source=src, label="label", parts=3, num_shards=4, block_size=BLOCK)
    _check_same(task.output.path, single, 3)
    (run,) = os.listdir(root)
    steps = sorted(os.listdir(os.path.join(root, run)))
    scans = [s for s in steps if s.startswith("for-loop-1-iteration-")]  # the plan's read
    parts = [f"for-loop-2-iteration-{i}" for i in range(3)]
    assert len(scans) >= 3  # at least one range per plain CSV file
    # the scans, the plan, three parts, then the commit
    assert steps == sorted(["commit-op", *scans, *parts, "plan-op", "scan-list-op"]), steps
    assert "Found image 'tfpipes:" in capfd.readouterr().out  # the steps ran in the image
