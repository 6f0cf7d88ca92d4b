"""The error hierarchy, the exit codes, and the one wrapper that turns errors into exit codes.

Two kinds of failure reach a user as a single line and a non-zero exit, never a traceback:

- :class:`UserError` (exit 2): bad input, a bad flag, a missing file, a schema mismatch:
  something the user can fix. Permanent: running again without a change fails again.
- :class:`RetryableError` (exit 138): the environment failed, not the input: object storage or
  a peer was unreachable, the task was preempted. Running again (it resumes from the last
  checkpoint) may succeed. Not a ``UserError``: ``except UserError`` never swallows an outage.

Both derive from :class:`TfpipesError`, which carries the exit code. Any other exception is a
bug and keeps its traceback (exit 1). Every entry point (the CLI and each KFP component body)
runs its work under :func:`exit_on_error`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

# Exit codes, shared by the CLI, the components and every launcher's restart policy: 1-127 are
# permanent failures (1: a bug, 2: the user's mistake), >= 128 retryable (the Training
# Operator's ``restartPolicy: ExitCode`` and a Job's ``podFailurePolicy`` restart only those).
EXIT_OK = 0
EXIT_FAILURE = 1  # a bug: permanent, the traceback is in the log
EXIT_USER_ERROR = 2
EXIT_TIMEOUT = 124  # as timeout(1): a bounded wait ran out
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_RETRYABLE = 138
RETRYABLE_MIN = 128


def is_retryable(exit_code: int) -> bool:
    """Whether a restart policy on exit codes restarts a task that exited with this code."""
    return exit_code >= RETRYABLE_MIN


class TfpipesError(Exception):
    """A failure shown to the user as one line (the message) and ``exit_code``."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UserError(TfpipesError):
    """Bad input, a bad flag, a missing file, a schema mismatch: something the user can fix.

    The message is one line that names what is wrong and where (file, line, column, flag).
    """

    exit_code = EXIT_USER_ERROR


class RetryableError(TfpipesError):
    """The environment failed, not the input: a peer or object storage was unreachable, the
    task was preempted. Running again (it resumes from the last checkpoint) may succeed."""

    exit_code = EXIT_RETRYABLE


class WaitTimeout(TfpipesError):
    """A bounded wait (``--timeout``) ran out while the awaited thing was still going."""

    exit_code = EXIT_TIMEOUT


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (TensorFlow's ``message`` when it has one),
    or its class name when the message is empty: what a one-line error quotes."""
    text = (getattr(e, "message", None) or str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def location(path: str, line: int | None = None, column: int | str | None = None) -> str:
    """Format ``path:line: column NAME`` the way every error message names a place."""
    out = str(path)
    if line is not None:
        out += f":{line}"
    if column is not None:
        out += f": column {column!r}" if isinstance(column, str) else f":{column}"
    return out


@contextlib.contextmanager
def exit_on_error(name: str) -> Iterator[None]:
    """Run an entry point's work: a :class:`TfpipesError` becomes ``name: error: <message>`` on
    stderr and ``SystemExit(exit_code)``; Ctrl-C exits 130. Anything else propagates (a bug)."""
    try:
        yield
    except TfpipesError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
