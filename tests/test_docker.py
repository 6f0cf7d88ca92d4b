"""The tfpipes image, built by docker/build.sh and run by the Docker engine.

Nothing here is skipped: with no engine (none answering and .ci/docker-engine.sh cannot start
one) the build fixture fails, and so does every test. Containers always run with
``--network none``.
"""

from __future__ import annotations

import json
import os
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


@pytest.mark.slow
def test_run_local_docker_matches_subprocess(tfpipes_image, outside_dir):
    """The whole pipeline in containers (no network, nothing installed at run time) gives the
    same model as the subprocess runner: equal predictions on the eval split."""
    import re

    import numpy as np
    import tensorflow as tf

    from tests.conftest import run_tfpipes
    from tfpipes.manifest import read_manifest
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
            cwd=d,
            timeout=900,
        )
        assert p.returncode == 0, f"{runner}: exit {p.returncode}\n{p.stderr[-4000:]}"
        arts[runner] = dict(
            re.findall(r"^\s+(examples|model|metrics|exported)\s+(\S+)$", p.stderr, re.M)
        )
        assert set(arts[runner]) == {"examples", "model", "metrics", "exported"}, p.stderr
    log = open(os.path.join(d, "root-docker", "run-local.log")).read()
    assert "Found image 'tfpipes:" in log and "pip install" not in log
    data = arts["subprocess"]["examples"]
    files = [os.path.join(data, p) for p in read_manifest(data).shard_paths("eval")]
    records = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(files)])
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
