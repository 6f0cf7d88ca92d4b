"""Training from a remote data set without a copy of it: a bounded, prefetching shard cache.

TensorFlow's own ``gs://`` filesystem is not our storage layer (no retries of ours, no CRC32C
checks against the manifest, and it cannot reach an emulator), and the tf.data pipeline may run
where no Python of ours does (a parameter-server worker runs the graph the chief built). So each
process that reads data runs a :class:`ShardCache` thread next to its TensorFlow runtime:

- it knows the shards its input pipeline reads, in the order tf.data opens them (this
  pipeline's share of the split, cycled once per epoch: :func:`pipeline_share` mirrors
  ``input_pipeline._records``), and downloads the next ones through the storage layer into a
  local directory, each verified against the manifest's CRC32C and renamed into place whole;
- the pipeline's reader (:func:`read_shard`, pure graph ops, so it runs on any task) waits until
  the shard's local file exists, then reads it with ``TFRecordDataset``;
- the cache sees tf.data open and close each file (inotify); a closed shard was read to its
  end, and is deleted, which makes room for the next download.

The bound: at most :func:`cache_shards` (``$TFPIPES_STREAM_SHARDS``, default 10) shard files
per input pipeline on local disk at any time, downloads in flight included, whatever the size of
the data set; when a pipeline's whole share has at most that many shards, they are kept for
the run instead of fetched again each epoch. Memory holds no shard: files are streamed to disk.

A download that fails for good (storage unreachable past ``TFPIPES_GCS_DEADLINE_S``, a CRC32C
mismatch) is written to ``<dir>/<name>.error``; a reader waiting for a shard that is not there
then fails with an ``InvalidArgumentError`` carrying :data:`ERROR_TAG` and that message, which
the runners turn back into the RetryableError (exit 138) or UserError it was
(:func:`error_from_tf`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import re
import select
import shutil
import struct
import tempfile
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from tfpipes import storage
from tfpipes.errors import RetryableError, TfpipesError, UserError, first_line

log = logging.getLogger("tfpipes.stream")

SHARDS_ENV = "TFPIPES_STREAM_SHARDS"
DIR_ENV = "TFPIPES_STREAM_DIR"
DEFAULT_SHARDS = 10  # the interleave then reads 3 shards at once (StreamFiles.cycle)
ERROR_TAG = "tfpipes-stream-error:"
FETCHERS = 4  # shards fetched at once (each one request), within the limit
POLL_S = 0.01  # how often a reader looks for the shard it waits for

_IN_OPEN, _IN_CLOSE_NOWRITE, _IN_Q_OVERFLOW = 0x20, 0x10, 0x4000
_EVENT = struct.Struct("iIII")


def cache_shards() -> int:
    """Shard files each input pipeline may keep on local disk (``$TFPIPES_STREAM_SHARDS``)."""
    raw = os.environ.get(SHARDS_ENV) or str(DEFAULT_SHARDS)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 2:
        raise UserError(f"{SHARDS_ENV}={raw!r}: expected a whole number of shards, at least 2")
    return value


def base_dir() -> str:
    """Where shard caches live (``$TFPIPES_STREAM_DIR``, else the temporary directory), made
    private to this user (0700): a shard in a directory others can write could be swapped."""
    base = os.environ.get(DIR_ENV) or os.path.join(
        tempfile.gettempdir(), f"tfpipes-stream-{os.getuid()}"
    )
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        st = os.stat(base)
    except OSError as e:
        raise UserError(f"{base}: cannot create the shard cache directory: {e.strerror}") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UserError(
            f"{base}: the shard cache directory must belong to this user with mode 0700 (it has "
            f"owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); set {DIR_ENV}"
        )
    return base


def shared_dir(data: str, model_dir: str) -> str:
    """The cache directory of a parameter-server job's workers: the chief names files in it
    in the graph it sends them, so it is a function of the run (data set and model dir)."""
    key = hashlib.sha256(f"{storage.normalize(data)}\n{model_dir}".encode()).hexdigest()
    return os.path.join(base_dir(), f"ps-{key[:16]}")


def local_name(rel: str) -> str:
    """The cache file name of the shard at ``rel`` (a manifest path)."""
    return rel.replace("/", "__")


def pipeline_share(names: list, input_context) -> list:
    """The shards one input pipeline reads, in order: as ``input_pipeline._records`` shards the
    files (by file when there are at least as many as pipelines, else all of them)."""
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    if pipelines > 1 and len(names) >= pipelines:
        return names[input_context.input_pipeline_id :: pipelines]
    return list(names)


def _wait_timeout_s() -> float:
    """How long a reader waits for a shard before giving up on a cache that went silent: well
    past the storage deadline, after which the cache reports its own failure."""
    from tfpipes.gcs import _deadline_s

    return _deadline_s() + 30


class StreamFiles(list):
    """The local paths of a split's shards in a cache ``directory``; ``reader`` reads one."""

    def __init__(self, paths: list[str], directory: str, limit: int):
        super().__init__(paths)
        self.directory = directory
        self.timeout_s = _wait_timeout_s()
        # Shards the interleave reads at once. tf.data opens up to three times as many (the
        # current ones, the next ones it prepares and their prefetch): all of them must fit in
        # the cache, or a reader would wait for a shard that only its own progress makes room
        # for, holding a thread the step needs (a deadlock on a parameter-server worker).
        self.cycle = max(1, min(8, (limit - 1) // 3))

    def reader(self, path, compression):
        return read_shard(path, self.directory, compression, self.timeout_s)


def read_shard(path, directory: str, compression, timeout_s: float):
    """The records of the cached shard ``path`` (a string tensor): wait (graph ops only)
    until its file exists, then read it; fail with :data:`ERROR_TAG` and the cache's message
    if the cache reported an error instead, or after ``timeout_s`` with nothing."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops.testing import sleep

    # Derived from ``path`` in the graph: a constant pattern would be constant-folded (the
    # listing taken once, when the graph is optimized) and a later error file never seen.
    errors = tf.strings.join([tf.strings.regex_replace(path, "[^/]*$", ""), "*.error"])

    def missing():
        return tf.equal(tf.size(tf.io.matching_files(path)), 0)

    def waiting(_):
        return tf.logical_and(missing(), tf.equal(tf.size(tf.io.matching_files(errors)), 0))

    polls = max(1, int(timeout_s / POLL_S))
    waited = tf.data.Dataset.range(polls).take_while(waiting).apply(sleep(int(POLL_S * 1e6)))
    n = waited.reduce(tf.constant(0, tf.int64), lambda a, _: a + 1)
    with tf.control_dependencies([n]):
        absent = missing()
        found = tf.io.matching_files(errors)
        failed = tf.logical_and(absent, tf.size(found) > 0)
        text = tf.cond(failed, lambda: tf.io.read_file(found[0]), lambda: tf.constant(""))
        ok = tf.debugging.Assert(tf.logical_not(failed), [ERROR_TAG, text], summarize=1)
        alive = tf.debugging.Assert(
            tf.logical_not(absent),
            [ERROR_TAG, f"retryable|the shard cache in {directory} stopped answering"],
        )
    with tf.control_dependencies([ok, alive]):
        path = tf.identity(path)
    return tf.data.TFRecordDataset(path, compression_type=compression, buffer_size=1 << 20)


def error_from_tf(error: Exception) -> TfpipesError | None:
    """The RetryableError or UserError a cache reported, from the TensorFlow error a reader
    raised with it (None: not a cache's error)."""
    text = getattr(error, "message", None) or str(error)
    m = re.search(re.escape(ERROR_TAG) + r"\]?\s*\[?(user|retryable)\|([^\n]*?)\]*\s*$", text, re.M)
    if m is None:
        return None
    return (UserError if m.group(1) == "user" else RetryableError)(m.group(2).strip())


class _Inotify:
    """Open and close events of the files in one directory (Linux inotify, through libc)."""

    def __init__(self, directory: str):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        wd = self._libc.inotify_add_watch(
            self.fd, os.fsencode(directory), _IN_OPEN | _IN_CLOSE_NOWRITE
        )
        if wd < 0:
            os.close(self.fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")

    def events(self, timeout: float) -> list[tuple[int, str]]:
        """(mask, file name) of the events within ``timeout`` seconds."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i + _EVENT.size <= len(buf):
            _, mask, _, n = _EVENT.unpack_from(buf, i)
            name = buf[i + _EVENT.size : i + _EVENT.size + n].rstrip(b"\0").decode()
            out.append((mask, name))
            i += _EVENT.size + n
        return out

    def close(self) -> None:
        os.close(self.fd)


class ShardCache:
    """One input pipeline's shards of a remote data set, fetched ahead into ``directory``.

    ``shards``: the manifest entries (``path``, ``crc32c``) in the order the pipeline reads
    them; ``repeat``: the pipeline reads them again each epoch. At most ``limit`` shard files
    are on disk at once (downloads in flight included). ``tag`` names this cache's error file.
    """

    def __init__(self, url: str, shards, directory: str, *, repeat: bool, limit: int, tag: str):
        self.url, self.shards, self.directory = url, list(shards), directory
        self.repeat, self.limit, self.tag = repeat, limit, tag
        self.keep = len(self.shards) <= limit  # the whole share fits: fetch each shard once
        self.names = {local_name(s.path): s for s in self.shards}
        self.error: TfpipesError | None = None
        self.fetched = 0
        self.split = "train"
        self._stop = threading.Event()
        os.makedirs(directory, exist_ok=True)
        self._error_file = os.path.join(directory, f"{tag}.error")
        self._remove([*self.names, f"{tag}.error"])  # a killed run's leftovers of ours
        self._watch = _Inotify(directory)
        self._thread = threading.Thread(target=self._run, name=f"shard-cache-{tag}", daemon=True)
        self._thread.start()

    def paths(self) -> list[str]:
        return [os.path.join(self.directory, local_name(s.path)) for s in self.shards]

    def _remove(self, names) -> None:
        for name in names:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass

    def _run(self) -> None:
        present: set[str] = set()  # fetched or being fetched, not yet read to the end
        opens: dict[str, int] = {}
        done: set[str] = set()  # kept shards (``keep``) already fetched
        inflight: dict[str, Future] = {}
        order = 0  # the next position in the read order to fetch
        n = len(self.shards)
        pool = ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix=f"fetch-{self.tag}")
        try:
            while not self._stop.is_set():
                for name, future in list(inflight.items()):
                    if future.done():
                        del inflight[name]
                        future.result()  # raises the fetch's error
                more = (self.repeat or order < n) and not (self.keep and order >= n)
                timeout = 0.2 if not inflight else 0.02
                if more and len(present) < self.limit and len(inflight) < FETCHERS:
                    shard = self.shards[order % n]
                    name = local_name(shard.path)
                    if name not in present and name not in done:
                        inflight[name] = pool.submit(self._fetch, shard, name)
                        present.add(name)
                        if self.keep:
                            done.add(name)
                    order += 1
                    timeout = 0.0
                for mask, name in self._watch.events(timeout):
                    if mask & _IN_Q_OVERFLOW:
                        log.warning("%s: inotify queue overflowed", self.directory)
                    if name not in self.names:
                        continue
                    if mask & _IN_OPEN:
                        opens[name] = opens.get(name, 0) + 1
                    elif mask & _IN_CLOSE_NOWRITE and opens.get(name):
                        opens[name] -= 1
                        if not opens[name] and not self.keep and name in present:
                            present.discard(name)
                            self._remove([name])
        except TfpipesError as e:
            self._fail(e)
        except OSError as e:
            kind = RetryableError if e.errno == errno.ENOSPC else UserError
            self._fail(kind(f"{self.directory}: cannot cache a shard: {e.strerror}"))
        except Exception as e:  # a reader must not wait for a thread that died: say why
            log.exception("the shard cache of %s failed", self.url)
            self._fail(RetryableError(f"{self.url}: streaming a shard failed: {first_line(e)}"))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, shard, name: str) -> None:
        url = storage.join(self.url, shard.path)
        final = os.path.join(self.directory, name)
        tmp = os.path.join(self.directory, f".{name}.part-{uuid.uuid4().hex[:8]}")
        try:
            storage.download_file(url, tmp, shard.crc32c)
            os.rename(tmp, final)  # whole or not at all: readers wait for this name
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.fetched += 1
        log.debug("%s: fetched %s", self.tag, name)

    def _fail(self, error: TfpipesError) -> None:
        self.error = error
        kind = "user" if isinstance(error, UserError) else "retryable"
        log.debug("streaming %s: %s", self.url, error)
        tmp = f"{self._error_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{kind}|{first_line(error)}")
        os.rename(tmp, self._error_file)

    def close(self) -> None:
        """Stop fetching and delete every file of this cache (again: nothing to do)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=30)
        self._watch.close()
        self._remove([*self.names, f"{self.tag}.error"])
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
            if name.startswith(".") and ".part-" in name:
                self._remove([name])


class StreamedDataset:
    """A remote data set read through shard caches: the ``root`` a streaming
    :class:`~tfpipes.training.data.TrainingData` hands the input pipeline."""

    def __init__(self, url: str, manifest):
        self.url, self.manifest = storage.normalize(url), manifest
        self.limit = cache_shards()
        self.directory = tempfile.mkdtemp(prefix="run-", dir=base_dir())
        self.caches: list[ShardCache] = []

    def __str__(self) -> str:
        return self.url

    def shard_files(self, split: str, input_context=None, repeat: bool = False) -> StreamFiles:
        """The local paths of ``split``'s shards; starts the cache of this pipeline's share."""
        shards = [s for s in self.manifest.shards if s.split == split]
        if split == "eval":  # the eval comes after training: its caches make room first
            for cache in self.caches:
                if cache.split == "train":
                    cache.close()
        directory = os.path.join(self.directory, f"{split}-{len(self.caches)}")
        mine = pipeline_share(shards, input_context)
        cache = ShardCache(self.url, mine, directory, repeat=repeat, limit=self.limit, tag=split)
        cache.split = split
        self.caches.append(cache)
        paths = [os.path.join(directory, local_name(s.path)) for s in shards]
        return StreamFiles(paths, directory, self.limit)

    def first_shard(self, split: str) -> str | None:
        """A verified local copy of ``split``'s first shard (for checking its records)."""
        shards = [s for s in self.manifest.shards if s.split == split]
        if not shards:
            return None
        path = os.path.join(self.directory, f"check-{split}-{local_name(shards[0].path)}")
        storage.download_file(storage.join(self.url, shards[0].path), path, shards[0].crc32c)
        return path

    def close(self) -> None:
        for cache in self.caches:
            cache.close()
        shutil.rmtree(self.directory, ignore_errors=True)  # made by mkdtemp: ours alone


class WorkerShards:
    """A parameter-server job's ``root`` for the workers' pipelines, built by the chief: the
    paths in the workers' :func:`shared_dir`, where each worker's cache
    (:func:`serve_worker_shards`) fetches its own share."""

    def __init__(self, url: str, manifest, directory: str):
        self.url, self.manifest, self.directory = url, manifest, directory

    def __str__(self) -> str:
        return self.url

    def shard_files(self, split: str, input_context=None, repeat: bool = False) -> StreamFiles:
        paths = [
            os.path.join(self.directory, local_name(p)) for p in self.manifest.shard_paths(split)
        ]
        return StreamFiles(paths, self.directory, cache_shards())


def serve_worker_shards(url: str, model_dir: str, index: int, workers: int) -> ShardCache:
    """Start worker ``index``'s cache of its share of the train split (of ``workers``) in the
    job's :func:`shared_dir`: the share its input pipeline reads (FILE sharding by index)."""
    import dataclasses

    from tfpipes.manifest import read_manifest

    manifest = read_manifest(url)
    shards = [s for s in manifest.shards if s.split == "train"]
    ctx = dataclasses.make_dataclass("Ctx", ["num_input_pipelines", "input_pipeline_id"])
    mine = pipeline_share(shards, ctx(workers, index))
    return ShardCache(
        url,
        mine,
        shared_dir(url, model_dir),
        repeat=True,
        limit=cache_shards(),
        tag=f"worker-{index}",
    )
