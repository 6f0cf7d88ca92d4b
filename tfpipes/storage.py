"""The storage layer: every path a user gives goes through here.

Paths are plain local paths, ``file://`` URLs or ``gs://bucket/key`` URLs. Local paths are the
embedded default; ``gs://`` is served by :mod:`tfpipes.gcs` (google-cloud-storage) and honours
``STORAGE_EMULATOR_HOST``. TensorFlow's own ``gs://`` filesystem cannot be pointed at an emulator,
so nothing else in tfpipes opens a ``gs://`` path: code that needs a local file asks for one with
:func:`local_copy` / :func:`staged_dir`.

Atomicity, one mechanism for every output (data sets, exports, checkpoints, the parameter-server
workers' data copies): the output is written into a local staging place and committed by
:func:`commit_files`, which copies or uploads the files streamed from disk, every ordinary file
first and the files that mark completion (a manifest, a checkpoint index) last, in order. A whole
directory output goes through :func:`staged_dir`: a local one is renamed into place in one step;
a remote prefix is committed with :func:`commit_files`. A reader that checks the marker never sees
a half-written output.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob as _glob
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO

from tfpipes.errors import UserError


def is_remote(path: str) -> bool:
    """True for object-storage URLs (``gs://``)."""
    return str(path).startswith("gs://")


def normalize(path: str) -> str:
    """Turn ``file://`` URLs into local paths; leave ``gs://`` and local paths unchanged."""
    path = os.fspath(path)
    if path.startswith("file://"):
        return path[len("file://") :] or "/"
    return path


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for URLs and ``os.path.join`` for local paths."""
    base = normalize(base)
    if is_remote(base):
        out = base.rstrip("/")
        for p in parts:
            out += "/" + p.strip("/")
        return out
    return os.path.join(base, *parts)


def _gcs():
    from tfpipes import gcs  # imported lazily: google-cloud-storage costs ~0.5 s to import

    return gcs


def exists(path: str) -> bool:
    """True if a file, or a directory / prefix holding at least one object, exists at ``path``."""
    path = normalize(path)
    if is_remote(path):
        return _gcs().exists(path)
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    path = normalize(path)
    if is_remote(path):
        return _gcs().is_prefix(path)
    return os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names directly under a directory or prefix, sorted."""
    path = normalize(path)
    if is_remote(path):
        return _gcs().listdir(path)
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Paths matching a shell-style pattern, sorted."""
    pattern = normalize(pattern)
    if is_remote(pattern):
        return _gcs().glob(pattern)
    return sorted(_glob.glob(pattern))


def size(path: str) -> int:
    path = normalize(path)
    if is_remote(path):
        return _gcs().size(path)
    return os.path.getsize(path)


def read_bytes(path: str) -> bytes:
    path = normalize(path)
    if is_remote(path):
        return _gcs().read_bytes(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write one file atomically (temporary name, then rename / single-object upload)."""
    path = normalize(path)
    if is_remote(path):
        _gcs().write_bytes(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def open_read(path: str) -> Iterator[IO[bytes]]:
    """Open a file for streaming binary reads (remote objects are streamed, not loaded whole)."""
    path = normalize(path)
    if is_remote(path):
        with _gcs().open_read(path) as f:
            yield f
        return
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    with f:
        yield f


def makedirs(path: str) -> None:
    path = normalize(path)
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def rmtree(path: str) -> None:
    """Remove a directory or prefix and everything under it; a missing path is fine."""
    path = normalize(path)
    if is_remote(path):
        _gcs().delete_prefix(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _already_exists(final: str) -> UserError:
    return UserError(f"{final}: already exists; pass --overwrite to replace it")


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


@contextlib.contextmanager
def staged_dir(final: str, *, overwrite: bool = False, last: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield a local staging directory; on success commit it to ``final`` atomically.

    Local ``final``: the staging directory is a sibling of ``final`` and is renamed into place,
    so the output appears whole or not at all. Remote ``final``: every file is uploaded, the
    files named in ``last`` (the manifest) after all the others, so a reader that requires the
    manifest never sees a partial output. On any exception the staging directory is removed and
    nothing is committed.

    Raises UserError if ``final`` exists and is not empty, unless ``overwrite`` — or, for a
    remote ``final`` with ``last`` files, unless it holds none of them: that is the leftover of
    an upload that failed before its commit, and it is replaced (with a warning).
    """
    final = normalize(final)
    if is_remote(final):
        leftover = False
        if not overwrite and _gcs().is_prefix(final):
            leftover = is_uncommitted_leftover(final, last)
            if not leftover:
                raise _already_exists(final)
        tmp = tempfile.mkdtemp(prefix="tfpipes-stage-")
        try:
            yield tmp
            _gcs().upload_dir(tmp, final, last=last, replace=overwrite or leftover)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    final = os.path.abspath(final)
    if os.path.exists(final) and not _is_empty_dir(final) and not overwrite:
        raise _already_exists(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        if overwrite:
            _commit_local_dir(tmp, final)
        else:
            try:
                os.rename(tmp, final)  # atomic; fails if another writer committed meanwhile
            except OSError:
                raise UserError(
                    f"{final}: already exists; pass --overwrite to replace it"
                ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_files(
    src_dir: str, dest: str, names: list[str] | None = None, *, last: tuple[str, ...] = ()
) -> None:
    """Commit files from the local directory ``src_dir`` to the directory or prefix ``dest``.

    ``names``: ``/``-separated paths relative to ``src_dir`` (default: every file under it).
    Every name not in ``last`` is written first (in parallel for object storage, each verified
    by CRC32C); then the names in ``last`` that are in ``names``, one by one in that order:
    their presence marks the commit complete. Files are streamed, never read whole into memory;
    a local file is replaced atomically (temporary name, then rename). Raises on the first file
    that cannot be written, before any of ``last``.
    """
    dest = normalize(dest)
    if names is None:
        names = files_under(src_dir)
    if is_remote(dest):
        _gcs().upload_files(src_dir, dest, list(names), last)
        return
    final = [n for n in last if n in names]
    for name in [n for n in names if n not in final] + final:
        target = os.path.join(dest, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(os.path.join(src_dir, *name.split("/")), tmp)
        os.replace(tmp, target)


def files_under(local_dir: str) -> list[str]:
    """Relative ``/``-separated names of the regular files under ``local_dir``, sorted."""
    names = []
    for root, _, files in os.walk(local_dir):
        for name in files:
            names.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
    return sorted(names)


def _commit_local_dir(tmp: str, final: str) -> None:
    # rename(2) is atomic on one filesystem; an existing output is moved aside first and
    # removed only after the new one is in place, so a crash leaves either the old or the new.
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def local_dir(path: str) -> Iterator[str]:
    """Yield a local directory holding the contents of ``path`` (downloaded if remote)."""
    path = normalize(path)
    if not is_remote(path):
        if not os.path.isdir(path):
            raise UserError(f"{path}: no such directory")
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="tfpipes-dl-")
    try:
        download_dir(path, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dir(path: str, dest: str) -> None:
    """Copy every object under the remote prefix ``path`` into the local directory ``dest``."""
    _gcs().download_dir(normalize(path), dest)


def match_files(pattern_or_dir: str, suffixes: tuple[str, ...]) -> list[str]:
    """Expand a file, glob, directory or prefix into the sorted files ending in a suffix."""
    p = normalize(pattern_or_dir)
    if any(ch in p for ch in "*?["):
        files = glob(p)
    elif is_dir(p):
        files = [join(p, n) for n in listdir(p)]
    elif exists(p):
        return [p]
    else:
        raise UserError(f"{p}: no such file or directory")
    return sorted(f for f in files if any(fnmatch.fnmatch(f.lower(), "*" + s) for s in suffixes))


def publish_dir(local_src: str, final: str, *, overwrite: bool = True) -> None:
    """Copy a local directory to ``final`` (local or remote) through :func:`staged_dir`."""
    with staged_dir(final, overwrite=overwrite, last=("saved_model.pb", "manifest.json")) as tmp:
        shutil.copytree(normalize(local_src), tmp, dirs_exist_ok=True)


def is_uncommitted_leftover(final: str, last: tuple[str, ...]) -> bool:
    """True if the remote prefix ``final`` holds objects but none of the commit files ``last``
    (its manifest): what an upload that failed midway leaves. Logs a warning when true."""
    if not last or any(exists(join(final, name)) for name in last):
        return False
    import logging

    logging.getLogger("tfpipes.storage").warning(
        "%s: holds a partial upload without %s (a failed run); replacing it",
        final,
        " or ".join(last),
    )
    return True
