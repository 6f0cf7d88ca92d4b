"""A full disk while writing a checkpoint is the environment failing (issue 12): exit 138 in
one line naming the directory, never a traceback. The disk is real: a 2 MiB tmpfs."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import run_tfpipes
from tfpipes.preprocess import PreprocessConfig, preprocess
from tfpipes.sample_data import write_csv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_checkpoint_on_a_full_disk_exits_138_in_one_line(tmp_path, small_disk):
    write_csv(str(tmp_path / "d.csv"), 500, seed=1)
    preprocess(PreprocessConfig(str(tmp_path / "d.csv"), str(tmp_path / "data"), "label"))
    model_dir = str(small_disk / "model")
    # 512x512 weights with Adam's two slots: about 3 MiB per checkpoint, over the 2 MiB disk.
    p = run_tfpipes(
        "train", "--data", str(tmp_path / "data"), "--model-dir", model_dir,
        "--hidden", "512,512", "--train-steps", "20", "--checkpoint-every", "10",
        cwd=str(tmp_path),
    )  # fmt: skip
    assert p.returncode == 138, p.stderr
    (line,) = [ln for ln in p.stderr.splitlines() if "error:" in ln]
    assert "no space left on device while writing a checkpoint" in line
    assert os.path.join(model_dir, "checkpoints") in line and "Traceback" not in p.stderr
