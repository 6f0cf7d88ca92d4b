"""The tfpipes image for the Docker tests (a pytest plugin listed in tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "tfpipes:latest"


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def tfpipes_image() -> str:
    """``tfpipes:latest`` (and ``tfpipes:<version>``) for the current sources.

    Always runs docker/build.sh: it starts the engine if needed and rebuilds only what changed,
    so with nothing changed it returns in about a second.
    """

    def build() -> subprocess.CompletedProcess:
        return subprocess.run(
            [os.path.join(REPO, "docker", "build.sh")],  # tags tfpipes:<version> and :latest
            capture_output=True,
            text=True,
            timeout=700,
        )

    result = build()
    if result.returncode != 0:
        # One retry: a cold build fetches packages (apt, PyPI) and can meet a transient
        # failure. The first failure stays visible in the test log.
        warnings.warn(
            f"docker/build.sh exited {result.returncode}; retrying once\n"
            f"{_tail(result.stdout, 20)}\n{_tail(result.stderr, 40)}",
            stacklevel=1,
        )
        result = build()
    build = result
    assert build.returncode == 0, (
        f"docker/build.sh exited {build.returncode}\n"
        f"stdout:\n{_tail(build.stdout)}\nstderr:\n{_tail(build.stderr)}"
    )
    return IMAGE
