"""How loud TensorFlow's C++ layer is, in this process and in every process tfpipes starts.

TensorFlow's C++ code logs through absl before any Python runs: ``absl::InitializeLog``,
``cpu_feature_guard`` ("This TensorFlow binary is optimized to use ..."), oneDNN notices,
``Started server with target: grpc://...``. Which of them appear depends on the CPU, so they must
reach a terminal only when asked for (``-vv``), and no test may depend on them. TensorFlow reads
``TF_CPP_MIN_LOG_LEVEL`` once, when it is first imported: 0 shows everything, 1 hides INFO,
2 hides WARNING too (errors still show), 3 hides errors as well.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

TF_LOG_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "2"
VERBOSE_TF_LOG_LEVEL = "0"
# On some CPUs only (AVX-512 VNNI ones, say) TensorFlow turns its oneDNN ops on by default, and
# then prints "oneDNN custom operations are on" (with absl's "before absl::InitializeLog" line)
# before any log level applies: TF_CPP_MIN_LOG_LEVEL=3 does not hide it. Those ops also round
# differently from the other CPUs' kernels. Off unless the user's environment says otherwise:
# no notice, and the same numbers on every node (a run resumed on another machine type goes
# on exactly). Whatever the verbosity: -vv must not change the results.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_DEFAULT = "0"


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
    process it starts inherits) by :func:`tf_log_level`, and ``TF_ENABLE_ONEDNN_OPTS`` to
    :data:`ONEDNN_DEFAULT` unless it is set; returns the level.

    Call it before TensorFlow is imported: TensorFlow reads the variable only then.
    """
    level = tf_log_level(verbose, environ.get(TF_LOG_ENV))
    environ[TF_LOG_ENV] = level
    environ.setdefault(ONEDNN_ENV, ONEDNN_DEFAULT)
    return level
