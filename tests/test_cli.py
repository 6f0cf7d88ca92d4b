"""The command line and the package layout: fast help, no kfp in the library, installable."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO, run_tfpipes

LIBRARY_MODULES = [
    "tfpipes.storage",
    "tfpipes.gcs",
    "tfpipes.preprocess",
    "tfpipes.preprocess.example_codec",
    "tfpipes.manifest",
    "tfpipes.schema",
    "tfpipes.input_pipeline",
    "tfpipes.models",
    "tfpipes.strategy",
    "tfpipes.training",
    "tfpipes.checkpoints",
    "tfpipes.export",
    "tfpipes.cluster",
    "tfpipes.cluster.tfjob",
    "tfpipes.cluster.jobs",
    "tfpipes.cluster.local",
]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return set(out.split())


def test_help_imports_neither_tensorflow_nor_kfp(tmp_path):
    mods = _modules_after("from tfpipes.cli import build_parser; build_parser().format_help()")
    assert "tensorflow" not in mods and "kfp" not in mods and "google.cloud.storage" not in mods
    p = run_tfpipes("--help", cwd=str(tmp_path), timeout=60)
    assert p.returncode == 0
    for cmd in ("preprocess", "train", "export", "compile", "run-local", "demo"):
        assert cmd in p.stdout
        sub = run_tfpipes(cmd, "--help", cwd=str(tmp_path), timeout=60)
        assert sub.returncode == 0 and "usage: tfpipes " + cmd in sub.stdout


def test_library_never_imports_kfp():
    mods = _modules_after("; ".join(f"import {m}" for m in LIBRARY_MODULES))
    assert "tensorflow" in mods  # the import really happened
    assert not {m for m in mods if m == "kfp" or m.startswith("kfp.")}


def test_bad_flag_is_one_line_error(tmp_path):
    p = run_tfpipes(
        "train",
        "--data",
        "x",
        "--model-dir",
        "y",
        "--batch-size",
        "0",
        cwd=str(tmp_path),
        timeout=120,
    )
    assert p.returncode == 2 and "--batch_size must be at least 1" not in p.stderr
    assert "--batch-size must be at least 1" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
def test_wheel_holds_library_components_and_pipelines(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            REPO,
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    for required in (
        "tfpipes/cli.py",
        "tfpipes/training/__init__.py",
        "tfpipes/commands/steps.py",
        "tfpipes_components/steps.py",
        "tfpipes_pipelines/training.py",
    ):
        assert required in names, sorted(names)
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert (
        entry
        and "tfpipes = tfpipes.cli:main"
        in zipfile.ZipFile(tmp_path / wheel).read(entry[0]).decode()
    )
