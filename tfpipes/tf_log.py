"""How loud TensorFlow's C++ layer is, in this process and in every process tfpipes starts.

TensorFlow's C++ code logs through absl before any Python runs: ``absl::InitializeLog``,
``cpu_feature_guard`` ("This TensorFlow binary is optimized to use ..."), oneDNN notices,
``Started server with target: grpc://...``. Which of them appear depends on the CPU, so they must
reach a terminal only when asked for (``-vv``), and no test may depend on them. TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL`` once, when it is first imported: 0 shows everything, 1 hides INFO,
2 hides WARNING too (errors still show), 3 hides errors as well. Some lines come before it
applies the level (oneDNN's notice on CPUs where TensorFlow turns oneDNN on by itself, at any
level): :func:`quiet_tensorflow_import` filters those, for every process that imports tfpipes
first, and the local-cluster launcher drops them from its tasks' output.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import MutableMapping

TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "2"
VERBOSE_TF_LOG_LEVEL = "0"


def tf_log_level(verbose: int, current: str | None = None) -> str:
    """The ``TF_CPP_MIN_LOG_LEVEL`` for a command run with ``verbose`` ``-v`` flags.

    ``-vv`` (or more): 0, everything. Otherwise at least 2: a quieter ``current`` value (the
    user's own 3) is kept, a louder one (0, 1, or anything unreadable) is raised to 2.
    """
    if verbose >= 2:
        return VERBOSE_TF_LOG_LEVEL
    try:
        if current is not None and int(current) > int(QUIET_TF_LOG_LEVEL):
            return str(int(current))
    except ValueError:
        pass
    return QUIET_TF_LOG_LEVEL


def set_tf_log_level(verbose: int, environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``TF_CPP_MIN_LOG_LEVEL`` in ``environ`` (this process's environment, which every
    process it starts inherits) by :func:`tf_log_level`; returns the value.

    Call it before TensorFlow is imported: TensorFlow reads the variable only then.
    """
    level = tf_log_level(verbose, environ.get(TF_LOG_ENV))
    environ[TF_LOG_ENV] = level
    return level


# TensorFlow's C++ notices as absl prints them, "I1202 06:14:08.803210  4897 port.cc:153] ..."
# (INFO and WARNING from a .cc source: a Python script's own absl lines name a .py file; before
# absl is initialized the time reads "00:00:<seconds since 1970>"), absl's "WARNING: All log
# messages before absl::InitializeLog() ..." line, and the second line of cpu_feature_guard's.
_NOTICE = re.compile(rb"^([IW])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+\.cc:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_CPU_GUARD_TAIL = b"To enable the following instructions:"
# How long the import waits for the forwarder to pass on the last lines (see _notices_filtered)
FORWARD_WAIT_S = 2.0


def _level(level: str | None) -> int:
    try:
        return int(level or 0)
    except ValueError:
        return 0


def hidden_notice(line: bytes, level: str | None) -> bool:
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` ``level`` hides TensorFlow C++ log line ``line``."""
    n = _level(level)
    if n < 1:
        return False
    if line.startswith((_ABSL_PREAMBLE, _CPU_GUARD_TAIL)):
        return True
    m = _NOTICE.match(line)
    return bool(m) and (m.group(1) == b"I" or n >= 2)


def forward_notices(level: str) -> None:
    """The forwarder's loop: stdin's lines to stderr, without the notices ``level`` hides,
    each as soon as it is complete; the rest at end of input."""
    rest = b""
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            break
        *lines, rest = (rest + data).split(b"\n")
        kept = b"".join(x + b"\n" for x in lines if not hidden_notice(x, level))
        _write_all(2, kept)
    if rest and not hidden_notice(rest, level):
        _write_all(2, rest)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


@contextlib.contextmanager
def _notices_filtered(level: str | None):
    """While the block runs, file descriptor 2 is a pipe to a forwarder process that writes
    every line but the notices ``level`` hides to the real stderr, as each line comes. A
    process, not a thread: the import holds the GIL while TensorFlow's libraries load, and a
    crash there (a fatal error TensorFlow prints, then aborts) must not lose the lines; the
    forwarder ends when the pipe's last writer does. After the block the forwarder is given
    FORWARD_WAIT_S to pass on the last lines, so that they come before what follows. Nothing
    is filtered where that cannot be set up (no stderr, no process)."""
    import subprocess

    if sys.stderr is None or _level(level) < 1:  # nothing to filter, or nowhere to write
        yield
        return
    fd = None
    try:
        os.fstat(2)
        sys.stderr.flush()
        read, write = os.pipe()
        pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        forwarder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from tfpipes.tf_log import forward_notices as f; f({level!r})",
            ],
            stdin=read,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([pkg, *sys.path])},
        )
        os.close(read)
        fd = os.dup(2)
        os.dup2(write, 2)
        os.close(write)
    except (OSError, ValueError, subprocess.SubprocessError):
        if fd is not None:
            os.close(fd)
        yield
        return
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(fd, 2)
        os.close(fd)
        try:
            forwarder.wait(FORWARD_WAIT_S)
        except subprocess.TimeoutExpired:
            pass  # a process started meanwhile holds the pipe: the forwarder serves it on


class _QuietTensorFlowImport:
    """A meta path finder for the first ``import tensorflow`` in the process: the module runs
    with TensorFlow's early notices filtered (:func:`quiet_tensorflow_import`). It stays in
    ``sys.meta_path`` until the import runs (a ``find_spec`` probe alone leaves it there)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or "tensorflow" in sys.modules:
            return None
        import importlib.util

        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run, finder = spec.loader.exec_module, self

        def exec_module(module):
            sys.meta_path[:] = [f for f in sys.meta_path if f is not finder]
            with _notices_filtered(os.environ.get(TF_LOG_ENV)):
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def quiet_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` of this process honour ``TF_CPP_MIN_LOG_LEVEL``
    for the lines TensorFlow's C++ code prints while it loads.

    Some print before TensorFlow applies the level: on CPUs where it turns oneDNN on by
    itself (AVX-512 VNNI ones, say), "oneDNN custom operations are on" and absl's
    "before absl::InitializeLog" line show at any level, 3 included. While the import runs,
    stderr goes through a filter that drops the notices the level hides (INFO at 1, INFO and
    WARNING at 2 or more; errors and everything else pass, as they come; at 0, TensorFlow's
    own default, nothing is filtered). Nothing to do once TensorFlow is imported. Called when
    :mod:`tfpipes` is imported, so every tfpipes process (the CLI, a KFP step, a pod) imports
    TensorFlow through it.
    """
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
