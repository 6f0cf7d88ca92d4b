"""Shared fixtures. Servers the tests need are started by the plugins below and always stopped."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings

import pytest

pytest_plugins = ["tests.gcs_fixtures", "tests.kfp_api_server", "tests.docker_fixtures"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _stream_handlers() -> set:
    """Every logger's handlers that write to a stream, pytest's own left out."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return {
        (getattr(lg, "name", "root"), h)
        for lg in loggers
        for h in getattr(lg, "handlers", ())
        if isinstance(h, logging.StreamHandler) and not type(h).__module__.startswith("_pytest")
    }


@pytest.fixture(autouse=True)
def _no_leaked_log_handler(request):
    """A stream handler a test leaves on a logger keeps the stream it was made with, which
    capture closes when the test ends: a later test's log line then fails with "I/O operation
    on closed file" far from the cause. Remove it, and name the test that left it."""
    before = _stream_handlers()
    yield
    for name, handler in _stream_handlers() - before:
        logging.getLogger(None if name == "root" else name).removeHandler(handler)
        warnings.warn(f"{request.node.nodeid} left {handler!r} on logger {name!r}", stacklevel=1)


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
