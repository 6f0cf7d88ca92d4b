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
