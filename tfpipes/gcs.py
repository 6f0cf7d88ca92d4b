"""The ``gs://`` backend of the storage layer (google-cloud-storage).

Only :mod:`tfpipes.storage` and :mod:`tfpipes.gcs_transfer` (many objects at once) call this
module, and only these two import ``google.cloud.storage``. Every function takes full
``gs://bucket/key`` URLs.

Contract shared by every function:

- One client per process (per emulator host and project), created on first use and shared by
  threads. ``STORAGE_EMULATOR_HOST`` points it at an emulator with anonymous credentials;
  otherwise it uses Application Default Credentials and ``GOOGLE_CLOUD_PROJECT`` if set.
- Transient failures (HTTP 408/429/5xx, refused or dropped connections, timeouts) are retried
  with jittered exponential backoff until ``TFPIPES_GCS_DEADLINE_S`` seconds (default 120) have
  passed since the operation began; then :class:`RetryableError` (exit 138)
  names the URL, the endpoint, the number of tries and the last cause. The library's own retries
  are switched off so that this deadline is the only one.
- A missing object, a missing bucket, a refused permission or a CRC32C mismatch is a
  :class:`UserError` (exit code 2) naming the URL or bucket.
- Every byte written or read whole is checked against the object's CRC32C.
"""

from __future__ import annotations

import base64
import fnmatch
import io
import os
import random
import threading
import time
from collections.abc import Callable
from typing import IO, TypeVar

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage as gcs_storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from tfpipes.errors import RetryableError, UserError

T = TypeVar("T")

# Storage unreachable or failing past the deadline: running the step again later is expected to
# succeed (the Training Operator's ExitCode restart policy recreates pods that exit >= 128).

DEFAULT_DEADLINE_S = 120.0
READ_CHUNK = 8 * 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 60.0
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_RETRYABLE_TYPES = (
    ConnectionError,  # builtin: refused, reset, aborted
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    auth_exceptions.TransportError,
)

# Test seam: called with the URL of each object right after it is uploaded and verified, from
# the uploading thread. Tests use it to observe the commit order and to cut the network midway.
after_upload: Callable[[str], None] | None = None

_client_lock = threading.Lock()
_clients: dict[tuple, gcs_storage.Client] = {}


# --- client and URLs -------------------------------------------------------------------------


def client() -> gcs_storage.Client:
    """The process's shared client for the current emulator host and project."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    project = os.environ.get("GOOGLE_CLOUD_PROJECT")
    # The pid is part of the key: a client's connection pool must not cross a fork.
    key = (os.getpid(), emulator, project)
    with _client_lock:
        c = _clients.get(key)
        if c is None:
            c = _make_client(emulator, project)
            _clients[key] = c
        return c


def _make_client(emulator: str | None, project: str | None) -> gcs_storage.Client:
    if emulator:
        from google.auth.credentials import AnonymousCredentials

        return gcs_storage.Client(project=project or "test", credentials=AnonymousCredentials())
    try:
        return gcs_storage.Client(project=project)
    except auth_exceptions.DefaultCredentialsError as e:
        raise UserError(
            "gs://: no Google Cloud credentials found; set GOOGLE_APPLICATION_CREDENTIALS, run "
            f"'gcloud auth application-default login' or use workload identity ({_first_line(e)})"
        ) from None


def reset_client() -> None:
    """Forget the cached clients (tests call this when they point the process elsewhere)."""
    with _client_lock:
        _clients.clear()


def _endpoint() -> str:
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def split(url: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` → ``("bucket", "a/b")``; the key may be empty."""
    if not url.startswith("gs://"):
        raise UserError(f"{url}: not a gs://bucket/key URL")
    bucket, _, key = url[len("gs://") :].partition("/")
    if not bucket:
        raise UserError(f"{url}: no bucket name in the URL")
    return bucket, key


def _dir_key(key: str) -> str:
    """The listing prefix for a "directory": ``a/b`` → ``a/b/``; the bucket root → ``""``."""
    key = key.rstrip("/")
    return key + "/" if key else ""


def _timeout() -> tuple[float, float]:
    return (min(_CONNECT_TIMEOUT_S, _deadline_s()), _READ_TIMEOUT_S)


def _deadline_s() -> float:
    raw = os.environ.get("TFPIPES_GCS_DEADLINE_S")
    if not raw:
        return DEFAULT_DEADLINE_S
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"TFPIPES_GCS_DEADLINE_S={raw!r}: expected a number of seconds") from None
    if value <= 0:
        raise UserError(f"TFPIPES_GCS_DEADLINE_S={raw!r}: expected a positive number of seconds")
    return value


# --- retries and errors ----------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _transient_cause(e: BaseException) -> str | None:
    """A short cause if ``e`` is worth retrying, else None."""
    if isinstance(e, api_exceptions.GoogleAPICallError):
        if e.code in _RETRYABLE_STATUS:
            return f"HTTP {e.code} {_first_line(e)}"
        return None
    if isinstance(e, InvalidResponse):
        status = getattr(e.response, "status_code", None)
        return f"HTTP {status}" if status in _RETRYABLE_STATUS else None
    if not isinstance(e, _RETRYABLE_TYPES):
        return None
    # requests wraps urllib3 wraps the socket error; the innermost names the cause plainly.
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset by the server"
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, ConnectionRefusedError) or "Connection refused" in str(arg):
                return "connection refused"
        seen = seen.__cause__ or seen.__context__
    if isinstance(e, requests.exceptions.Timeout):
        return "timed out"
    return _first_line(e)


def _call(url: str, fn: Callable[[], T], abort: threading.Event | None = None) -> T:
    """Run one storage request with retries; translate failures into :class:`UserError`.

    ``abort`` (set by a parallel transfer when another file failed for good) stops retrying
    early so that the first failure is reported without waiting out every worker's deadline.
    """
    deadline = time.monotonic() + _deadline_s()
    delay = 0.1
    tries = 0
    while True:
        tries += 1
        try:
            return fn()
        except (api_exceptions.NotFound, api_exceptions.Forbidden, api_exceptions.Unauthorized):
            raise
        except Exception as e:
            cause = _transient_cause(e)
            if cause is None:
                raise
            pause = delay * random.uniform(0.5, 1.0)
            if time.monotonic() + pause > deadline or (abort is not None and abort.is_set()):
                plural = "try" if tries == 1 else "tries"
                state = "kept failing" if cause.startswith("HTTP") else "unreachable"
                raise RetryableError(
                    f"{url}: object storage {state} at {_endpoint()} after {tries} {plural}:"
                    f" {cause}"
                ) from e
            if abort is not None:
                abort.wait(pause)
            else:
                time.sleep(pause)
            delay = min(delay * 2, 10.0)


def _request(url: str, fn: Callable[[], T], abort: threading.Event | None = None) -> T:
    """:func:`_call` plus the permanent failures a user can fix, as one-line errors."""
    try:
        return _call(url, fn, abort)
    except api_exceptions.NotFound:
        raise _not_found(url) from None
    except (api_exceptions.Forbidden, api_exceptions.Unauthorized) as e:
        raise UserError(f"{url}: permission denied: {_first_line(e)}") from None
    except api_exceptions.BadRequest as e:
        raise UserError(f"{url}: rejected by object storage: {_first_line(e)}") from None
    except DataCorruption as e:
        raise UserError(f"{url}: CRC32C mismatch in transfer: {_first_line(e)}") from None


def _not_found(url: str) -> UserError:
    bucket, _ = split(url)
    try:
        bucket_exists = _call(
            url, lambda: client().bucket(bucket).exists(retry=None, timeout=_timeout())
        )
    except api_exceptions.GoogleAPICallError:
        bucket_exists = True  # cannot tell; report the object
    if not bucket_exists:
        return UserError(f"gs://{bucket}: no such bucket")
    return UserError(f"{url}: no such object")


def crc32c(data: bytes) -> str:
    """The base64 big-endian CRC32C that GCS stores in an object's ``crc32c`` field."""
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def _file_crc32c(path: str) -> str:
    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            c.update(chunk)
    return base64.b64encode(c.digest()).decode("ascii")


def _check_crc(url: str, expected: str | None, actual: str, what: str) -> None:
    if expected != actual:
        raise UserError(
            f"{url}: CRC32C mismatch on {what} (object says {expected}, data has {actual}); "
            "the data was corrupted in transit or at rest"
        )


# --- single objects --------------------------------------------------------------------------


def _get_blob(url: str) -> gcs_storage.Blob:
    """The object's metadata (size, generation, crc32c); UserError if it does not exist."""
    bucket, key = split(url)
    if not key:
        raise UserError(f"{url}: is a bucket, expected an object")
    blob = _request(
        url, lambda: client().bucket(bucket).get_blob(key, retry=None, timeout=_timeout())
    )
    if blob is None:
        raise _not_found(url)
    return blob


def _object_exists(url: str) -> bool:
    bucket, key = split(url)
    if not key:
        return False
    blob = _request(
        url, lambda: client().bucket(bucket).get_blob(key, retry=None, timeout=_timeout())
    )
    return blob is not None


def _list(url: str, prefix: str, delimiter: str | None = None) -> tuple[list, list[str]]:
    """All objects (and, with a delimiter, sub-prefixes) under ``prefix`` in ``url``'s bucket."""
    bucket, _ = split(url)

    def run() -> tuple[list, list[str]]:
        it = client().list_blobs(
            bucket, prefix=prefix, delimiter=delimiter, retry=None, timeout=_timeout()
        )
        blobs = list(it)  # the pages are fetched here
        return blobs, sorted(it.prefixes)

    return _request(url, run)


def exists(url: str) -> bool:
    """True if an object exists at ``url`` or the prefix ``url/`` holds any object.

    ``gs://bucket`` alone exists if the bucket does. Raises UserError for a missing bucket.
    """
    bucket, key = split(url)
    if not key.strip("/"):
        if _request(url, lambda: client().bucket(bucket).exists(retry=None, timeout=_timeout())):
            return True
        raise UserError(f"gs://{bucket}: no such bucket")
    return _object_exists(url) or is_prefix(url)


def is_prefix(url: str) -> bool:
    """True if at least one object lies under ``url/`` (for ``gs://bucket``: in the bucket)."""
    bucket, key = split(url)

    def run() -> bool:
        it = client().list_blobs(
            bucket, prefix=_dir_key(key), max_results=1, retry=None, timeout=_timeout()
        )
        return any(True for _ in it)

    return _request(url, run)


def listdir(url: str) -> list[str]:
    """Sorted names directly under the prefix ``url/``: objects and sub-prefixes, no slashes.

    Raises UserError if nothing lies under the prefix.
    """
    _, key = split(url)
    prefix = _dir_key(key)
    blobs, prefixes = _list(url, prefix, delimiter="/")
    names = {b.name[len(prefix) :] for b in blobs}
    names.update(p[len(prefix) :].rstrip("/") for p in prefixes)
    names.discard("")  # a zero-byte "folder" placeholder object named like the prefix
    if not names:
        raise UserError(f"{url}: no such object or prefix")
    return sorted(names)


def glob(pattern: str) -> list[str]:
    """Sorted URLs matching a shell-style pattern, with local ``glob`` semantics.

    ``*``, ``?`` and ``[...]`` match within one path segment; a pattern that stops above an
    object's name matches the "directory" it lies in, as a local glob matches a directory.
    """
    bucket, key = split(pattern)
    wild = min((i for i, ch in enumerate(key) if ch in "*?["), default=None)
    if wild is None:
        return [pattern] if exists(pattern) else []
    parts = key.split("/")
    blobs, _ = _list(pattern, key[:wild])
    found: set[str] = set()
    for b in blobs:
        segments = b.name.split("/")
        if len(segments) < len(parts):
            continue
        head = segments[: len(parts)]
        if all(fnmatch.fnmatchcase(s, p) for s, p in zip(head, parts)) and head[-1]:
            found.add("/".join(head))
    return [f"gs://{bucket}/{name}" for name in sorted(found)]


def size(url: str) -> int:
    """Size of the object in bytes."""
    return int(_get_blob(url).size)


def read_bytes(url: str) -> bytes:
    """The whole object, verified against its stored CRC32C."""
    blob = _get_blob(url)  # pins the generation, so data and checksum belong together
    data = _request(
        url,
        lambda: blob.download_as_bytes(
            raw_download=True, checksum=None, retry=None, timeout=_timeout()
        ),
    )
    _check_crc(url, blob.crc32c, crc32c(data), "read")
    return data


def write_bytes(url: str, data: bytes) -> None:
    """Write one object in a single upload; the server's CRC32C must equal the local one."""
    bucket, key = split(url)
    if not key or key.endswith("/"):
        raise UserError(f"{url}: expected an object URL gs://bucket/key")
    expected = crc32c(data)

    def run() -> str | None:
        blob = client().bucket(bucket).blob(key)
        blob.upload_from_string(
            data,
            content_type="application/octet-stream",
            checksum="crc32c",
            crc32c_checksum_value=expected,
            retry=None,
            timeout=_timeout(),
        )
        return blob.crc32c

    _check_crc(url, _request(url, run), expected, "upload")


class _ObjectReader(io.RawIOBase):
    """Ranged reads of one object generation; checks CRC32C when read start to end in order."""

    def __init__(self, url: str, blob: gcs_storage.Blob) -> None:
        super().__init__()
        self._url = url
        self._blob = blob
        self._size = int(blob.size)
        self._pos = 0
        self._crc = google_crc32c.Checksum()
        self._crc_pos = 0  # bytes folded into _crc; only a sequential read covers the object

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fetch(self, n: int) -> bytes:
        if self._pos >= self._size or n <= 0:
            return b""
        start, end = self._pos, min(self._size, self._pos + n) - 1
        data = _request(
            self._url,
            lambda: self._blob.download_as_bytes(
                start=start, end=end, raw_download=True, checksum=None, retry=None,
                timeout=_timeout(),
            ),
        )  # fmt: skip
        if self._crc_pos == start:
            self._crc.update(data)
            self._crc_pos += len(data)
            if self._crc_pos == self._size:
                actual = base64.b64encode(self._crc.digest()).decode("ascii")
                _check_crc(self._url, self._blob.crc32c, actual, "read")
        self._pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self._fetch(len(b))
        b[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # RawIOBase.readall would fetch 8 KiB per request.
        out = bytearray()
        while chunk := self._fetch(READ_CHUNK):
            out += chunk
        return bytes(out)


def open_read(url: str) -> IO[bytes]:
    """A buffered binary reader that streams the object in ranged requests of ``READ_CHUNK``.

    Reading it to the end verifies the CRC32C. Use it as a context manager.
    """
    blob = _get_blob(url)
    return io.BufferedReader(_ObjectReader(url, blob), buffer_size=READ_CHUNK)
