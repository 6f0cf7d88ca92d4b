"""Shared fixtures. Servers the tests need are started by the plugins below and always stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytest_plugins = ["tests.gcs_fixtures", "tests.kfp_api_server", "tests.docker_fixtures"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tfpipes_exe() -> str:
    """The installed console script (tests run the real command, as a user would)."""
    exe = shutil.which("tfpipes", path=os.path.dirname(sys.executable)) or shutil.which("tfpipes")
    assert exe, "the tfpipes console script is not installed (pip install -e .)"
    return exe


def run_tfpipes(*args: str, cwd: str, timeout: float = 600, env: dict | None = None):
    """Run ``tfpipes ARGS`` in ``cwd``; returns the CompletedProcess (text, both streams)."""
    return subprocess.run(
        [tfpipes_exe(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def sample_dataset(folder, rows: int, seed: int, **config) -> str:
    """``rows`` rows of classification sample data (``seed``) in ``folder``/data.csv,
    preprocessed into ``folder``/data (label ``label``, no progress bar; ``config``: other
    PreprocessConfig fields). Returns the data set's path."""
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.sample_data import write_csv

    source, out = os.path.join(folder, "data.csv"), os.path.join(folder, "data")
    write_csv(source, rows, "classification", seed=seed)
    preprocess(PreprocessConfig(source, out, "label", progress=False, **config))
    return out


@pytest.fixture
def outside_dir(tmp_path):
    """A working directory outside the repository."""
    assert not str(tmp_path).startswith(REPO)
    return tmp_path
