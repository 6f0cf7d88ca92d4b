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
import errno
import fnmatch
import glob as _glob
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import IO

from tfpipes.errors import RetryableError, UserError


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


def _gcs_transfer():
    from tfpipes import gcs_transfer

    return gcs_transfer


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
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except PermissionError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None


def read_text(path: str) -> str:
    """A file's text (UTF-8); UserError naming the file and the byte offset when it is not."""
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{normalize(path)}: not UTF-8 text (byte {e.start})") from None


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
        _gcs_transfer().delete_prefix(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


# --- committing outputs --------------------------------------------------------------------
#
# What tfpipes may replace or delete, and nothing else: a gs:// prefix is replaced only when every
# object under it is provably ours (it carries our owner mark, written with it; or a committed
# tfpipes data set's manifest lists it), and then only those objects are deleted. A local
# directory is replaced (--overwrite) only when it holds a tfpipes output. An output never
# equals or contains one of the run's inputs.

DATASET_FORMAT = "tfpipes.dataset/v1"  # the "format" of a data set's manifest.json
# The storage layer sits below tfpipes.layout (which imports it); the few file names it needs to
# recognise a tfpipes output are layout's, as tests/test_storage_ownership.py checks.
OUTPUT_MARKERS = {
    "manifest": "manifest.json",
    "saved_model": "saved_model.pb",
    "export_schema": "assets.extra/schema.json",
    "model_config": "model_config.json",
}


def list_owners(prefix: str) -> dict[str, str | None]:
    """The objects under the remote ``prefix`` (relative names) and their owner marks (None:
    not written by tfpipes)."""
    return _gcs_transfer().list_owners(normalize(prefix))


def list_checksums(prefix: str) -> dict[str, tuple[int, str]]:
    """The objects under the remote ``prefix`` (relative names): (size, hex CRC32C) each."""
    return _gcs_transfer().list_checksums(normalize(prefix))


def delete_objects(prefix: str, names: list[str]) -> None:
    """Delete the named objects under the remote ``prefix`` (callers pass only ours)."""
    _gcs_transfer().delete_objects(normalize(prefix), names)


def _already_exists(final: str) -> UserError:
    return UserError(f"{final}: already exists; pass --overwrite to replace it")


def _is_empty_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.listdir(path)


def same_or_inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (local paths compared after resolving
    links; a local path is never inside a ``gs://`` one)."""
    if is_remote(path) != is_remote(root):
        return False
    if is_remote(path):
        a, b = path.rstrip("/") + "/", root.rstrip("/") + "/"
    else:
        a, b = os.path.realpath(path) + os.sep, os.path.realpath(root) + os.sep
    return a.startswith(b)


def overlap(a: str, b: str) -> bool:
    """Whether one of the two locations is or contains the other."""
    return same_or_inside(a, b) or same_or_inside(b, a)


def check_output_location(final: str, inputs: tuple[str, ...] = ()) -> None:
    """UserError if ``final`` may not be an output: a bucket root, or a location that equals or
    contains one of ``inputs`` (replacing it would destroy the input)."""
    final = normalize(final)
    if is_remote(final) and not final[len("gs://") :].partition("/")[2].strip("/"):
        raise UserError(f"{final}: a bucket root cannot be an output; name a prefix in it")
    for source in inputs:
        source = normalize(source)
        if source and same_or_inside(source, final):
            raise UserError(
                f"{final}: the output would contain the input {source}; choose another output"
            )


def _dataset_manifest_names(read: Callable[[str], bytes], final: str) -> set[str] | None:
    """The files a tfpipes data set manifest at ``final`` lists (itself included), or None."""
    try:
        d = json.loads(read(join(final, OUTPUT_MARKERS["manifest"])))
        if not isinstance(d, dict) or d.get("format") != DATASET_FORMAT:
            return None
        names = {str(e["path"]) for e in (*d["shards"], *d["files"])}
    except (UserError, ValueError, KeyError, TypeError):
        return None
    return names | {OUTPUT_MARKERS["manifest"]}


def is_tfpipes_output(path: str) -> bool:
    """True if the local directory ``path`` holds a tfpipes output: a data set (its manifest),
    a SavedModel we exported (``assets.extra/schema.json``) or a model directory
    (``model_config.json``)."""
    path = normalize(path)
    if _dataset_manifest_names(read_bytes, path) is not None:
        return True
    has = lambda *p: os.path.isfile(os.path.join(path, *p))  # noqa: E731
    m = OUTPUT_MARKERS
    return (has(m["saved_model"]) and has(*m["export_schema"].split("/"))) or has(m["model_config"])


def _owned_objects(final: str, last: tuple[str, ...]) -> tuple[set[str], bool]:
    """(the objects under the prefix ``final`` that tfpipes wrote, whether they form a
    committed output). UserError naming the prefix when any object there is not provably
    ours: tfpipes never deletes or replaces what it did not write."""
    owners = _gcs_transfer().list_owners(final)
    mark = owner_mark(final)
    ours = {n for n, o in owners.items() if o == mark}
    foreign = set(owners) - ours
    if foreign:  # an output written before objects were marked: its manifest lists them
        listed = _dataset_manifest_names(read_bytes, final) or set()
        ours |= foreign & listed
        foreign -= listed
    if foreign:
        example = sorted(foreign)[0]
        raise UserError(
            f"{final}: holds {len(foreign)} object(s) tfpipes did not write (e.g. {example}); "
            "tfpipes replaces only its own outputs: choose a new or empty location"
        )
    committed = bool(ours) and (not last or any(n in ours for n in last))
    return ours, committed


def owner_mark(final: str) -> str:
    """The owner mark of the objects of the output at the prefix ``final``."""
    return normalize(final).rstrip("/")


@contextlib.contextmanager
def staged_dir(
    final: str,
    *,
    overwrite: bool = False,
    last: tuple[str, ...] = (),
    inputs: tuple[str, ...] = (),
) -> Iterator[str]:
    """Yield a local staging directory; on success commit it to ``final`` atomically.

    Local ``final``: the staging directory is a sibling of ``final`` and is renamed into place,
    so the output appears whole or not at all. Remote ``final``: committed by
    :func:`commit_files`, the files named in ``last`` (the manifest) after all the others, each
    object marked as ours. On any exception the staging directory is removed and nothing is
    committed; a full disk is a RetryableError naming ``final``.

    Raises UserError (before anything is written) if ``final`` is a bucket root or equals or
    contains one of ``inputs``; if it holds an output and ``overwrite`` is not set; if
    ``overwrite`` is set but what is there is not a tfpipes output. A remote ``final`` holding
    only the objects of an upload of ours that failed before its commit is replaced without
    ``overwrite`` (with a warning). Only objects tfpipes wrote are ever deleted.
    """
    final = normalize(final)
    check_output_location(final, inputs)
    if is_remote(final):
        ours, committed = _owned_objects(final, last)
        if committed and not overwrite:
            raise _already_exists(final)
        if ours and not committed:
            logging.getLogger("tfpipes.storage").warning(
                "%s: holds a partial upload of ours without %s (a failed run); replacing it",
                final,
                " or ".join(last),
            )
        tmp = tempfile.mkdtemp(prefix="tfpipes-stage-")
        try:
            with _disk_full_is_retryable(final):
                yield tmp
            _commit_remote_dir(tmp, final, last, ours)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return

    final = os.path.abspath(final)
    replace = os.path.exists(final) and not _is_empty_dir(final)
    if replace and not overwrite:
        raise _already_exists(final)
    if replace and not is_tfpipes_output(final):
        raise UserError(
            f"{final}: not a tfpipes output (no data set manifest, SavedModel or model dir of "
            "ours); --overwrite replaces only those: choose another output"
        )
    parent = os.path.dirname(final)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    with _os_errors_named(final):
        os.makedirs(parent, exist_ok=True)
        os.makedirs(tmp)
    try:
        with _disk_full_is_retryable(final):
            yield tmp
        if replace:
            _commit_local_dir(tmp, final)
        else:
            try:
                os.rename(tmp, final)  # atomic; fails if another writer committed meanwhile
            except OSError:
                raise _already_exists(final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _commit_remote_dir(tmp: str, final: str, last: tuple[str, ...], ours: set[str]) -> None:
    """Upload the staged output over the prefix ``final`` whose objects ``ours`` we wrote. The
    order keeps the prefix incomplete (no marker of ``last``) until it is whole again: our old
    markers deleted, new data uploaded, our stale objects deleted, new markers uploaded."""
    names = files_under(tmp)
    delete_objects(final, [n for n in last if n in ours])
    mark = owner_mark(final)
    commit_files(tmp, final, [n for n in names if n not in last], owner=mark)
    delete_objects(final, sorted(ours - set(names) - set(last)))
    commit_files(tmp, final, [n for n in names if n in last], last=last, owner=mark)


@contextlib.contextmanager
def _os_errors_named(path: str) -> Iterator[None]:
    """OSErrors of creating an output as one-line errors naming it: a full disk is retryable;
    a read-only file system, a missing permission or a file in the way is the user's to fix."""
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise RetryableError(f"{path}: no space left on device") from None
        if isinstance(e, (PermissionError, FileExistsError, NotADirectoryError)) or e.errno in (
            errno.EROFS,
            errno.EACCES,
        ):
            raise UserError(f"{path}: cannot create the output: {e.strerror}") from None
        raise


@contextlib.contextmanager
def _disk_full_is_retryable(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise RetryableError(f"{path}: no space left on device while writing it") from None
        raise


def commit_files(
    src_dir: str,
    dest: str,
    names: list[str] | None = None,
    *,
    last: tuple[str, ...] = (),
    owner: str | None = None,
) -> None:
    """Commit files from the local directory ``src_dir`` to the directory or prefix ``dest``.

    ``names``: ``/``-separated paths relative to ``src_dir`` (default: every file under it).
    Every name not in ``last`` is written first (in parallel for object storage, each verified
    by CRC32C); then the names in ``last`` that are in ``names``, one by one in that order:
    their presence marks the commit complete. Files are streamed, never read whole into memory;
    a local file is replaced atomically (temporary name, then rename). Raises on the first file
    that cannot be written, before any of ``last``. ``owner``: for object storage, the mark
    (``gcs_transfer.OWNER_KEY`` metadata) that proves later that tfpipes wrote these objects.
    """
    dest = normalize(dest)
    if names is None:
        names = files_under(src_dir)
    if is_remote(dest):
        _gcs_transfer().upload_files(src_dir, dest, list(names), last, owner)
        return
    final = [n for n in last if n in names]
    for name in [n for n in names if n not in final] + final:
        target = os.path.join(dest, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(os.path.join(src_dir, *name.split("/")), tmp)
        os.replace(tmp, target)


def link_files(src_dir: str, dest_dir: str, names: list[str]) -> None:
    """Put the files ``names`` of the local ``src_dir`` into the local ``dest_dir``: hard
    links (a metadata operation: the fan-out commit's cost stays per file, not per byte),
    copies where the file system has none. ``src_dir`` keeps its files."""
    for name in names:
        src = os.path.join(src_dir, *name.split("/"))
        target = os.path.join(dest_dir, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.link(src, target)
        except FileNotFoundError:
            raise UserError(f"{src}: no such file") from None
        except OSError:  # another file system, or one without hard links (gcsfuse)
            shutil.copyfile(src, target)


def commit_staged_prefix(
    staging: str,
    final: str,
    names: list[str],
    meta_dir: str,
    *,
    last: tuple[str, ...],
    overwrite: bool = False,
    inputs: tuple[str, ...] = (),
) -> None:
    """Commit to the remote prefix ``final`` the objects ``names`` already under the remote
    prefix ``staging`` (copied server side: no byte passes through here) and the files of the
    local ``meta_dir``, those in ``last`` after everything else — :func:`staged_dir`'s order
    and ownership rules for a prefix. ``staging`` is left as it is."""
    final = normalize(final)
    check_output_location(final, inputs)
    ours, committed = _owned_objects(final, last)
    if committed and not overwrite:
        raise _already_exists(final)
    meta = files_under(meta_dir)
    delete_objects(final, [n for n in last if n in ours])
    mark = owner_mark(final)
    _gcs_transfer().copy_objects(normalize(staging), final, names, mark)
    delete_objects(final, sorted(ours - set(names) - set(meta) - set(last)))
    commit_files(meta_dir, final, [n for n in meta if n not in last], owner=mark)
    commit_files(meta_dir, final, [n for n in meta if n in last], last=last, owner=mark)


def files_under(local_dir: str) -> list[str]:
    """Relative ``/``-separated names of the regular files under ``local_dir``, sorted."""
    names = []
    for root, _, files in os.walk(local_dir):
        for name in files:
            names.append(os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/"))
    return sorted(names)


def _commit_local_dir(tmp: str, final: str) -> None:
    # rename(2) is atomic on one filesystem; the existing output (checked to be ours) is moved
    # aside first and removed only after the new one is in place, so a crash leaves either the
    # old or the new.
    old = f"{final}.old-{uuid.uuid4().hex[:8]}"
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, onerror=_warn_leftover)


def _warn_leftover(_fn, path: str, exc_info) -> None:
    logging.getLogger("tfpipes.storage").warning(
        "could not remove %s of the replaced output: %s", path, exc_info[1]
    )


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
    _gcs_transfer().download_dir(normalize(path), dest)


def object_sizes(path: str) -> dict[str, tuple[int, str | None]]:
    """The objects under the remote prefix ``path``: relative name -> (size, CRC32C hex)."""
    return _gcs_transfer().object_sizes(normalize(path))


READ_LOG_ENV = "TFPIPES_READ_LOG"  # a file: one line per object :func:`download_file` reads


def download_file(url: str, dest: str, crc32c_hex: str, abort=None) -> None:
    """Download one remote object to the local file ``dest``, verified against the CRC32C
    ``crc32c_hex`` (the manifest's); ``abort`` (a ``threading.Event``), once set, stops it
    (RetryableError). With ``$TFPIPES_READ_LOG`` set, append a line ``<pid> <TF task>
    <url>`` to that file: tests check from it which process read which object."""
    url = normalize(url)
    _gcs_transfer().download_object(url, dest, crc32c_hex, abort)
    log_path = os.environ.get(READ_LOG_ENV)
    if log_path:
        try:
            task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
        except ValueError:
            task = {}
        who = f"{task.get('type', 'local')}:{task.get('index', 0)}"
        with open(
            log_path, "a"
        ) as f:  # one short write: lines of several processes interleave whole
            f.write(f"{os.getpid()} {who} {url}\n")


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


def publish_dir(local_src: str, final: str, *, overwrite: bool = False) -> None:
    """Copy a local directory to ``final`` (local or remote) through :func:`staged_dir`; an
    existing output there is replaced only with ``overwrite`` (and only if it is ours)."""
    last = (OUTPUT_MARKERS["saved_model"], OUTPUT_MARKERS["manifest"])
    with staged_dir(final, overwrite=overwrite, last=last, inputs=(local_src,)) as tmp:
        shutil.copytree(normalize(local_src), tmp, dirs_exist_ok=True)
