"""The one exception type for a user's mistake.

Anything raised as :class:`UserError` is shown as a single line and a non-zero exit by the CLI
and the KFP component entry points; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input, a bad flag, a missing file, a schema mismatch: something the user can fix.

    The message is one line that names what is wrong and where (file, line, column, flag).
    ``exit_code`` lets callers map classes of failure to process exit codes (for example a
    retryable infrastructure failure >= 128 for Kubernetes restart policies).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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


# Exit codes, shared by the CLI, the components and the TFJob restart policy: 1-127 are
# permanent failures (2: the user's mistake), >= 128 retryable (the Training Operator's
# ``restartPolicy: ExitCode`` restarts a pod only for those).
EXIT_USER_ERROR = 2
EXIT_RETRYABLE = 138


class RetryableError(UserError):
    """The environment failed, not the input: a peer or object storage was unreachable, the
    task was preempted. Running again (it resumes from the last checkpoint) may succeed."""

    def __init__(self, message: str, exit_code: int = EXIT_RETRYABLE) -> None:
        super().__init__(message, exit_code)
