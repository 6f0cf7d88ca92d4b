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
import tempfile
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
# (INFO and WARNING; before absl is initialized the time reads "00:00:<seconds since 1970>"),
# absl's "WARNING: All log messages before absl::InitializeLog() ..." line, and the second line
# of cpu_feature_guard's notice.
_NOTICE = re.compile(rb"^([IW])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"
_CPU_GUARD_TAIL = b"To enable the following instructions:"


def hidden_notice(line: bytes, level: str | None) -> bool:
    """Whether ``TF_CPP_MIN_LOG_LEVEL`` ``level`` hides TensorFlow C++ log line ``line``."""
    try:
        n = int(level or 0)
    except ValueError:
        n = 0
    if n < 1:
        return False
    if line.startswith((_ABSL_PREAMBLE, _CPU_GUARD_TAIL)):
        return True
    m = _NOTICE.match(line)
    return bool(m) and (m.group(1) == b"I" or n >= 2)


@contextlib.contextmanager
def _notices_filtered(level: str | None):
    """While the block runs, file descriptor 2 goes to a temporary file; after it, every line
    but the notices ``level`` hides is written to the real stderr, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [x for x in tmp.read().splitlines(True) if not hidden_notice(x, level)]
            if kept:
                os.write(2, b"".join(kept))


class _QuietTensorFlowImport:
    """A meta path finder for the first ``import tensorflow`` in the process: the module runs
    with TensorFlow's early notices filtered (:func:`quiet_tensorflow_import`)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path[:] = [f for f in sys.meta_path if f is not self]
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            with _notices_filtered(os.environ.get(TF_LOG_ENV)):
                run(module)

        spec.loader.exec_module = exec_module
        return spec


def quiet_tensorflow_import() -> None:
    """Make the first ``import tensorflow`` of this process honour ``TF_CPP_MIN_LOG_LEVEL``
    for the lines TensorFlow's C++ code prints while it loads.

    Some print before TensorFlow applies the level: on CPUs where it turns oneDNN on by
    itself (AVX-512 VNNI ones, say), "oneDNN custom operations are on" and absl's
    "before absl::InitializeLog" line show at any level, 3 included. The import's stderr
    output is held and written back without the notices the level hides (INFO at 1, INFO
    and WARNING at 2 or more; nothing is hidden at 0, TensorFlow's own default). Nothing to do
    once TensorFlow is imported. Called when :mod:`tfpipes` is imported, so every tfpipes
    process (the CLI, a KFP step, a pod) imports TensorFlow through it.
    """
    if "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
