"""TensorFlow's early C++ notices follow TF_CPP_MIN_LOG_LEVEL: the lines TensorFlow prints while
it loads, before it applies the level (on CPUs where it turns oneDNN on by itself, its notice
shows at any level), are held and written back without the ones the level hides.

Which notices a real TensorFlow prints depends on the CPU, so the mechanism is proven with a
stand-in ``tensorflow`` package that prints the same kinds of lines while it is imported; the
real import is covered by the quiet tests of test_docker.py and test_local_cluster.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tfpipes.tf_log import hidden_notice

ONEDNN = (
    b"I0000 00:00:1796194487.780454    4282 port.cc:153] oneDNN custom operations are on. You "
    b"may see slightly different numerical results."
)
PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
GUARD = b"I1202 06:14:08.803210    4897 cpu_feature_guard.cc:227] This TensorFlow binary is ..."
GUARD_TAIL = b"To enable the following instructions: AVX2 AVX512F FMA, in other operations, ..."
WARN = b"W1202 06:14:08.803210    4897 loader.cc:12] Could not find a file"
ERROR = b"E1202 06:14:08.803210    4897 context.cc:911] Failed to remove function remotely"
OURS = b"a line of the program's own"
PY_ABSL = b"I1202 07:30:01.123456 140234567 train.py:10] a Python script's own absl line"

LINES = [PREAMBLE, ONEDNN, GUARD, GUARD_TAIL, WARN, ERROR, OURS, PY_ABSL]


@pytest.mark.parametrize(
    ("level", "shown"),
    [
        (None, LINES),  # TensorFlow's own default: everything
        ("0", LINES),
        ("1", [WARN, ERROR, OURS, PY_ABSL]),
        ("2", [ERROR, OURS, PY_ABSL]),
        ("3", [ERROR, OURS, PY_ABSL]),  # errors are TensorFlow's own to hide: it does at 3
        ("x", LINES),
    ],
)
def test_the_level_hides_exactly_its_notices(level, shown):
    assert [x for x in LINES if not hidden_notice(x + b"\n", level)] == shown


def _fake_tensorflow(tmp_path) -> str:
    """A ``tensorflow`` package that writes every kind of line to file descriptor 2 while it is
    imported, as TensorFlow's C++ code does, and one more line after (at its first use)."""
    pkg = tmp_path / "tensorflow"
    pkg.mkdir(exist_ok=True)
    body = "".join(f"os.write(2, {x!r} + b'\\n')\n" for x in LINES)
    (pkg / "__init__.py").write_text(
        "import os\n" + body + "def later():\n    os.write(2, b'after the import\\n')\n"
    )
    return str(tmp_path)


@pytest.mark.parametrize(("level", "shown"), [("2", [ERROR, OURS, PY_ABSL]), ("0", LINES)])
def test_a_tfpipes_process_imports_tensorflow_with_its_level(tmp_path, level, shown):
    script = textwrap.dedent(
        """
        import sys
        import tfpipes
        print("before", file=sys.stderr, flush=True)
        import tensorflow
        print("imported", file=sys.stderr, flush=True)
        tensorflow.later()
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": level, "PYTHONPATH": _fake_tensorflow(tmp_path)}
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env=env, timeout=60, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    # in order, nothing lost but the hidden notices; after the import nothing is held back
    assert p.stderr.splitlines() == [b"before", *shown, b"imported", b"after the import"]


def test_the_local_cluster_drops_its_tasks_hidden_notices(tmp_path):
    from tests.test_local_cluster import Capture
    from tfpipes.cluster.local import run_cluster

    env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _fake_tensorflow(tmp_path)}
    script = "import tensorflow; print('done', flush=True)"  # no tfpipes: a user's own script
    out = Capture()
    result = run_cluster(
        lambda t, i: [sys.executable, "-c", script], workers=1, timeout=50, out=out, env=env
    )
    assert result.exit_code == 0, out.lines
    assert out.of("worker:0") == [x.decode() for x in (ERROR, OURS, PY_ABSL)] + ["done"], out.lines


def _run(
    tmp_path, script: str, stderr=subprocess.PIPE, body: str = ""
) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _fake_tensorflow(tmp_path)}
    if body:
        with open(tmp_path / "tensorflow" / "__init__.py", "a") as f:
            f.write(body)
    return subprocess.run(
        [sys.executable, "-c", script], stderr=stderr, env=env, timeout=60, cwd=tmp_path
    )


def test_a_crash_during_the_import_loses_no_line(tmp_path):
    """An error TensorFlow prints just before it aborts while loading still reaches stderr."""
    p = _run(tmp_path, "import tfpipes, tensorflow", body="os.abort()\n")
    assert p.returncode != 0
    assert p.stderr.splitlines() == [ERROR, OURS, PY_ABSL], p.stderr


def test_a_probe_before_the_import_leaves_the_filter_in_place(tmp_path):
    script = (
        "import importlib.util, tfpipes; importlib.util.find_spec('tensorflow'); import tensorflow"
    )
    p = _run(tmp_path, script)
    assert p.returncode == 0 and p.stderr.splitlines() == [ERROR, OURS, PY_ABSL], p.stderr


def test_the_import_works_without_a_python_stderr(tmp_path):
    """A process whose sys.stderr is None (a daemon's, say) imports TensorFlow as before."""
    script = "import sys; sys.stderr = None; import tfpipes, tensorflow"
    assert _run(tmp_path, script, stderr=subprocess.DEVNULL).returncode == 0
