"""Many objects at once, for the storage layer: prefixes uploaded, downloaded and deleted in
parallel (``WORKERS`` threads; the first failure cancels the rest), every file streamed and
checked against its CRC32C, each object of an output marked with its owner (:data:`OWNER_KEY`).

Single objects, the client, retries and errors are :mod:`tfpipes.gcs`'s; the same contract holds
(one-line UserError or RetryableError naming the URL).
"""

from __future__ import annotations

import base64
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

import google_crc32c
from google.api_core import exceptions as api_exceptions
from google.cloud import storage as gcs_storage

from tfpipes import gcs
from tfpipes.errors import RetryableError, UserError
from tfpipes.gcs import _call, _check_crc, _dir_key, _file_crc32c, _list, _request, _timeout, split

WORKERS = 8

# Every object tfpipes uploads as part of an output carries this custom metadata key, whose
# value is the output's prefix: the proof, object by object, that tfpipes wrote it there (see
# storage.staged_dir: only such objects are ever replaced or deleted).
OWNER_KEY = "tfpipes-output"


def _delete(url: str, abort: threading.Event | None = None) -> None:
    bucket, key = split(url)
    try:
        _call(
            url,
            lambda: gcs.client().bucket(bucket).delete_blob(key, retry=None, timeout=_timeout()),
            abort,
        )
    except api_exceptions.NotFound:
        pass  # already gone: the goal of a delete


def delete_prefix(url: str) -> None:
    """Delete every object under ``url/`` and the object ``url`` itself; missing is fine."""
    bucket, key = split(url)
    blobs, _ = _list(url, _dir_key(key))
    urls = [f"gs://{bucket}/{b.name}" for b in blobs]
    if key.strip("/"):
        urls.append(f"gs://{bucket}/{key.rstrip('/')}")
    _parallel(_delete, urls)


# --- directories -----------------------------------------------------------------------------


def _parallel(fn: Callable[[str, threading.Event], None], items: Iterable[str]) -> None:
    """Run ``fn(item, abort)`` on ``WORKERS`` threads; the first failure cancels the rest."""
    items = list(items)
    if not items:
        return
    abort = threading.Event()
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        futures = [pool.submit(fn, item, abort) for item in items]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            abort.set()
            for f in futures:
                f.cancel()
            raise failed[0].exception()


def _upload_file(
    path: str, url: str, abort: threading.Event | None = None, owner: str | None = None
) -> None:
    bucket, key = split(url)
    expected = _file_crc32c(path)

    def run() -> str | None:
        blob = gcs.client().bucket(bucket).blob(key)
        if owner is not None:
            blob.metadata = {OWNER_KEY: owner}
        blob.upload_from_filename(
            path,
            checksum="crc32c",
            crc32c_checksum_value=expected,
            retry=None,
            timeout=_timeout(),
        )
        return blob.crc32c

    _check_crc(url, _request(url, run, abort), expected, "upload")
    hook = gcs.after_upload  # read at each call: tests set it on tfpipes.gcs
    if hook is not None:
        hook(url)


def upload_files(
    local_dir: str, url: str, names: list[str], last: tuple[str, ...] = (), owner: str | None = None
) -> None:
    """Upload the files ``names`` (relative to ``local_dir``) to the prefix ``url/``: every one
    not in ``last`` first, in parallel, each streamed from disk and verified (CRC32C); then the
    ``last`` ones that are in ``names``, one by one in that order. ``owner``: the value of the
    objects' :data:`OWNER_KEY` metadata. Raises on the first file that cannot be uploaded;
    nothing in ``last`` is written then."""
    bucket, key = split(url)
    prefix = _dir_key(key)
    final = [n for n in last if n in names]
    first = [n for n in names if n not in final]

    def upload(name: str, abort: threading.Event) -> None:
        target = f"gs://{bucket}/{prefix}{name}"
        _upload_file(os.path.join(local_dir, name), target, abort, owner)

    _parallel(upload, first)
    for name in final:
        upload(name, threading.Event())


def copy_objects(src: str, dest: str, names: list[str], owner: str | None = None) -> None:
    """Copy the objects ``names`` from the prefix ``src/`` to the prefix ``dest/`` server side
    (a rewrite, repeated until done for large objects), in parallel, each marked with ``owner``
    and checked against its source's CRC32C."""
    sbucket, skey = split(src)
    dbucket, dkey = split(dest)
    sprefix, dprefix = _dir_key(skey), _dir_key(dkey)

    def copy(name: str, abort: threading.Event) -> None:
        url = f"gs://{dbucket}/{dprefix}{name}"

        def run() -> tuple[str | None, str | None]:
            source = gcs.client().bucket(sbucket).get_blob(sprefix + name, timeout=_timeout())
            if source is None:
                raise UserError(f"gs://{sbucket}/{sprefix}{name}: no such object")
            blob = gcs.client().bucket(dbucket).blob(dprefix + name)
            if owner is not None:
                blob.metadata = {OWNER_KEY: owner}
            token = None
            while True:
                token, _, _ = blob.rewrite(source, token=token, retry=None, timeout=_timeout())
                if token is None:
                    return source.crc32c, blob.crc32c

        expected, actual = _request(url, run, abort)
        _check_crc(url, expected, actual or "", "copy")

    _parallel(copy, names)


def list_owners(url: str) -> dict[str, str | None]:
    """Every object under the prefix ``url/``: its name relative to the prefix, and the value
    of its :data:`OWNER_KEY` metadata (None when it has none: tfpipes did not write it)."""
    _, key = split(url)
    prefix = _dir_key(key)
    blobs, _ = _list(url, prefix)
    return {b.name[len(prefix) :]: (b.metadata or {}).get(OWNER_KEY) for b in blobs}


def list_checksums(url: str) -> dict[str, tuple[int, str]]:
    """Every object under the prefix ``url/``: its name relative to the prefix, its size and
    its CRC32C as 8 hex digits (one listing, no object read)."""
    _, key = split(url)
    prefix = _dir_key(key)
    blobs, _ = _list(url, prefix)
    return {
        b.name[len(prefix) :]: (int(b.size), base64.b64decode(b.crc32c or "").hex()) for b in blobs
    }


def delete_objects(url: str, names: Iterable[str]) -> None:
    """Delete the objects ``names`` (relative to the prefix ``url/``), in parallel; a missing
    one is fine."""
    bucket, key = split(url)
    prefix = _dir_key(key)
    _parallel(_delete, [f"gs://{bucket}/{prefix}{n}" for n in names])


def _download_file(
    blob: gcs_storage.Blob, url: str, path: str, abort: threading.Event, expected: str | None = None
) -> None:
    """Download ``blob`` to ``path``, checked against ``expected`` (base64 CRC32C; default:
    the object's own)."""

    def run() -> str:
        c = google_crc32c.Checksum()

        class _Writer:  # folds every byte into the checksum on its way to disk
            def write(self, chunk: bytes) -> int:
                if abort.is_set():
                    raise RetryableError(f"{url}: download stopped")
                c.update(chunk)
                return f.write(chunk)

        if abort.is_set():
            raise RetryableError(f"{url}: download stopped")
        with open(path, "wb") as f:  # "wb": a retry starts the file over
            blob.download_to_file(
                _Writer(), raw_download=True, checksum=None, retry=None, timeout=_timeout()
            )
        return base64.b64encode(c.digest()).decode("ascii")

    actual = _request(url, run, abort)
    _check_crc(url, blob.crc32c if expected is None else expected, actual, "read")


def download_dir(url: str, local_dir: str) -> None:
    """Download every object under ``url/`` into ``local_dir``, keys as relative paths.

    Each file is verified against its object's CRC32C. Raises UserError if the prefix is empty
    or a key would land outside ``local_dir``.
    """
    bucket, key = split(url)
    prefix = _dir_key(key)
    blobs, _ = _list(url, prefix)
    blobs = [b for b in blobs if not b.name.endswith("/")]  # "folder" placeholders
    if not blobs:
        raise UserError(f"{url}: no such prefix (no objects under {url.rstrip('/')}/)")
    root = os.path.abspath(local_dir)
    jobs: dict[str, tuple[gcs_storage.Blob, str]] = {}
    for b in blobs:
        path = os.path.abspath(os.path.join(root, b.name[len(prefix) :]))
        if not path.startswith(root + os.sep):
            raise UserError(f"gs://{bucket}/{b.name}: object name escapes the download directory")
        jobs[f"gs://{bucket}/{b.name}"] = (b, path)
    for _, path in jobs.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)

    def download(obj_url: str, abort: threading.Event) -> None:
        blob, path = jobs[obj_url]
        _download_file(blob, obj_url, path, abort)

    _parallel(download, jobs)


# --- single shards, for streaming ------------------------------------------------------------


def object_sizes(url: str) -> dict[str, tuple[int, str | None]]:
    """Every object under the prefix ``url/``: its name relative to the prefix, its size and
    its CRC32C (hex, as a manifest writes it; None when the server has none). One listing."""
    _, key = split(url)
    prefix = _dir_key(key)
    blobs, _ = _list(url, prefix)
    out = {}
    for b in blobs:
        crc = base64.b64decode(b.crc32c).hex() if b.crc32c else None
        out[b.name[len(prefix) :]] = (int(b.size or 0), crc)
    return out


def download_object(
    url: str, path: str, crc32c_hex: str, abort: threading.Event | None = None
) -> None:
    """Download the object ``url`` to the local file ``path`` (streamed, never whole in
    memory), checking its bytes against ``crc32c_hex`` (a manifest's CRC32C). UserError on a
    mismatch or a missing object, RetryableError past the deadline or once ``abort`` is set
    (checked before each retry and each chunk written)."""
    bucket, key = split(url)
    blob = gcs.client().bucket(bucket).blob(key)  # one request: no metadata fetched first
    expected = base64.b64encode(bytes.fromhex(crc32c_hex)).decode("ascii")
    _download_file(blob, url, path, abort or threading.Event(), expected)
