"""A model directory is data, not code (issue 12).

``export`` and a resumed ``train`` import a user model module (``package.module:build_fn``)
only when the user names it; a ``model_config.json`` naming one is checked against what the
user named, and refused, with nothing imported, when the user named none or another. The
current directory is never added to ``sys.path``. Each user module here writes a file when it
is imported, which proves whether its code ran.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid

import pytest

from tests.conftest import sample_dataset
from tfpipes import cli
from tfpipes.errors import UserError

pytestmark = pytest.mark.slow

USER_MODULE = textwrap.dedent(
    """
    import keras, os
    open(os.path.join(os.path.dirname(__file__), "IMPORTED"), "a").write("x")

    def build_fn(num_outputs, **_):
        return keras.layers.Dense(num_outputs)
    """
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return sample_dataset(tmp_path_factory.mktemp("data"), 300, 5, num_shards=1)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """(module name, the file its import writes): a fresh module on ``sys.path``."""
    pkg = tmp_path / "site"
    pkg.mkdir()
    name = f"user_model_{uuid.uuid4().hex[:8]}"
    (pkg / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(pkg))
    yield name, pkg / "IMPORTED"
    sys.modules.pop(name, None)


def _forget(name: str, marker) -> None:
    """Make the next import of ``name`` run its code again, and clear its marker."""
    sys.modules.pop(name, None)
    if marker.exists():
        marker.unlink()


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_export_imports_the_user_module_only_when_the_user_names_it(
    data, tmp_path, user_module, capsys
):
    from tfpipes.export import ExportConfig, export
    from tfpipes.training import TrainConfig, train

    name, marker = user_module
    model = f"{name}:build_fn"
    model_dir = str(tmp_path / "m")
    train(TrainConfig(data, model_dir, model=model, train_steps=10, progress=False))
    assert marker.exists()  # training imported it: the user named it
    _forget(name, marker)

    # No --model: refused in one line, the module's code never ran, nothing exported.
    base = tmp_path / "serving"
    code = cli.main(["export", "--model-dir", model_dir, "--export-base", str(base)])
    err = _one_line_error(capsys, code)
    assert "model_config.json" in err and f"--model {model}" in err, err
    assert not marker.exists() and name not in sys.modules
    assert not base.exists()

    # Another model named: refused the same way.
    for other in ("mlp", "other_pkg.mod:build_fn"):
        with pytest.raises(UserError, match=f"--model {other}: .* was trained with {model}"):
            export(ExportConfig(model_dir, str(base), 1, data, model=other))
        assert not marker.exists() and name not in sys.modules

    # The matching module named: imported (it is the user's choice) and exported.
    r = export(ExportConfig(model_dir, str(base), 1, data, model=model))
    assert marker.exists() and r.verified_examples > 0
    assert (base / "1" / "saved_model.pb").exists()


def test_a_resume_without_the_user_module_named_is_refused_before_any_import(
    data, tmp_path, user_module, capsys
):
    from tfpipes.training import TrainConfig, train

    name, marker = user_module
    model_dir = str(tmp_path / "m")
    train(TrainConfig(data, model_dir, model=f"{name}:build_fn", train_steps=10, progress=False))
    _forget(name, marker)
    before = sorted(os.listdir(os.path.join(model_dir, "checkpoints")))
    code = cli.main(["train", "--data", data, "--model-dir", model_dir, "--train-steps", "20"])
    err = _one_line_error(capsys, code)
    assert "holds checkpoints of a different model options" in err, err
    assert not marker.exists() and name not in sys.modules
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints"))) == before


def test_the_current_directory_is_never_put_on_the_path(tmp_path, monkeypatch):
    """A module next to where tfpipes runs (e.g. planted in a shared data directory) is not
    imported: the user puts their package on PYTHONPATH or installs it."""
    from tfpipes.models import resolve_build_fn

    name = f"cwd_model_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    path_before = list(sys.path)
    with pytest.raises(UserError, match="put its package on PYTHONPATH or install it"):
        resolve_build_fn(f"{name}:build_fn")
    assert sys.path == path_before
    assert not (tmp_path / "IMPORTED").exists() and name not in sys.modules
