"""Training from a remote data set without a copy of it: a bounded, prefetching shard cache.

TensorFlow's own ``gs://`` filesystem is not our storage layer (no retries of ours, no CRC32C
checks against the manifest, and it cannot reach an emulator), and the tf.data pipeline may run
where no Python of ours does (a parameter-server worker runs the graph the chief built). So each
process that reads data runs a :class:`~tfpipes.shard_cache.ShardCache` thread next to its
TensorFlow runtime:

- it knows the shards its input pipeline reads, in the order tf.data opens them (this
  pipeline's share of the split, cycled once per epoch: :func:`pipeline_share` mirrors
  ``input_pipeline._records``), and downloads the next ones through the storage layer into a
  local directory of its own, each verified against the manifest's CRC32C and renamed into
  place whole;
- the pipeline's reader (:func:`read_shard`, pure graph ops, so it runs on any task) says which
  shard it wants next (a want file), waits until the shard's local file exists, then reads it
  with ``TFRecordDataset``; the cache follows the reader wherever it starts (a pipeline built
  again by a restarted chief starts from its first shard);
- the cache sees tf.data open and close each file (inotify); a closed shard was read to its
  end, and is deleted once it is not among the next ones to read, which makes room.

The bound: at most :func:`cache_shards` (``$TFPIPES_STREAM_SHARDS``, default 10) shard files
per input pipeline on local disk at any time, downloads in flight included, whatever the size of
the data set; when a pipeline's whole share has at most that many shards, they are kept for
the run instead of fetched again each epoch. Memory holds no shard: files are streamed to disk.

A download that fails for good (storage unreachable past ``TFPIPES_GCS_DEADLINE_S``, a CRC32C
mismatch) is answered to the reader waiting for that shard with an error file; the reader then
fails with an ``InvalidArgumentError`` carrying :data:`ERROR_TAG` and that message, which the
runners turn back into the RetryableError (exit 138) or UserError it was
(:func:`error_from_tf`). The cache lives on: the next reader of the shard gets it fetched again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile

from tfpipes import storage
from tfpipes.errors import RetryableError, TfpipesError, UserError
from tfpipes.shard_cache import ANSWER, STAMP, TICKET, WANT, ShardCache, local_name

__all__ = ["ShardCache", "StreamFiles", "StreamedDataset", "WorkerShards", "local_name"]

SHARDS_ENV = "TFPIPES_STREAM_SHARDS"
DIR_ENV = "TFPIPES_STREAM_DIR"
DEFAULT_SHARDS = 10  # the interleave then reads 3 shards at once (StreamFiles.cycle)
ERROR_TAG = "tfpipes-stream-error:"
POLL_S = 0.01  # how often a reader looks for the shard it waits for


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
    """The directory of a parameter-server job's worker caches: the chief names files in it
    in the graph it sends them, so it is a function of the run (data set and model dir)."""
    key = hashlib.sha256(f"{storage.normalize(data)}\n{model_dir}".encode()).hexdigest()
    return os.path.join(base_dir(), f"ps-{key[:16]}")


def worker_dir(shared: str, index) -> str:
    """Worker ``index``'s own cache directory in ``shared`` (a string; or, in the chief's
    graph where the index is a tensor, a string tensor)."""
    if isinstance(index, int):
        return os.path.join(shared, f"worker-{index}")
    import tensorflow as tf

    return tf.strings.join([shared, "/worker-", tf.strings.as_string(index)])


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
    """The local paths of a split's shards in a cache ``directory``; ``reader`` reads one.

    ``folder`` (a string tensor): the shards' directory when only the graph knows it (a
    parameter-server worker's own, by its index); the elements are then file names.
    """

    def __init__(self, paths: list[str], directory: str, limit: int, folder=None):
        super().__init__(paths)
        self.directory, self.folder = directory, folder
        self.timeout_s = _wait_timeout_s()
        # Shards the interleave reads at once. tf.data opens up to three times as many (the
        # current ones, the next ones it prepares and their prefetch): all of them must fit in
        # the cache, or a reader would wait for a shard that only its own progress makes room
        # for, holding a thread the step needs (a deadlock on a parameter-server worker).
        self.cycle = max(1, min(8, (limit - 1) // 3))

    def reader(self, path, compression):
        if self.folder is not None:
            import tensorflow as tf

            path = tf.strings.join([self.folder, "/", path])
        return read_shard(path, self.directory, compression, self.timeout_s)


def read_shard(path, directory: str, compression, timeout_s: float):
    """The records of the cached shard ``path`` (a string tensor): ask the cache for it (a
    want file), wait (graph ops only) until its file exists, then read it; fail with
    :data:`ERROR_TAG` and the cache's message if the cache answered with an error instead, or
    after ``timeout_s`` with nothing (see :mod:`tfpipes.shard_cache` for the protocol)."""
    import tensorflow as tf
    from tensorflow.python.data.experimental.ops.testing import sleep

    folder = tf.strings.regex_replace(path, "[^/]*$", "")
    name = tf.strings.regex_replace(path, "^.*/", "")
    # This read's token: the cache's ticket, which it changes before it answers with an
    # error, so that an error file answers the reads that asked before it, never a later one.
    # No ticket: no cache (the wait below then says so). Plain ops, no nested dataset: one
    # more function to instantiate per shard halves the interleave's rate.
    ticket = tf.strings.join([folder, TICKET])
    present = tf.size(tf.io.matching_files(ticket)) > 0
    token = tf.cond(present, lambda: tf.io.read_file(ticket), lambda: tf.constant(""))
    want = tf.strings.join([folder, WANT, token, "-", name])
    error = tf.strings.join([folder, ANSWER, token, "-", name])

    def ask():
        with tf.control_dependencies([tf.io.write_file(want, "")]):
            return tf.constant(True)

    asked = tf.cond(present, ask, lambda: tf.constant(False))

    def missing(p):
        return tf.equal(tf.size(tf.io.matching_files(p)), 0)

    def waiting(_):
        return tf.logical_and(missing(path), missing(error))

    polls = max(1, int(timeout_s / POLL_S))

    def wait():
        waited = tf.data.Dataset.range(polls).take_while(waiting).apply(sleep(int(POLL_S * 1e6)))
        return waited.reduce(tf.constant(0, tf.int64), lambda a, _: a + 1)

    # The polling loop only when the shard is not there yet: a nested dataset's reduce costs
    # about 30 ms per shard even when it ends at once (tf.data prepares it each time), which
    # held a streamed pipeline to a sixth of the same shards read from local files.
    with tf.control_dependencies([asked]):
        n = tf.cond(waiting(0), wait, lambda: tf.constant(0, tf.int64))
    with tf.control_dependencies([n]):
        absent = missing(path)
        failed = tf.logical_and(absent, tf.logical_not(missing(error)))
        text = tf.cond(failed, lambda: tf.io.read_file(error), lambda: tf.constant(""))
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
        cache = ShardCache(
            self.url, mine, directory, repeat=repeat, limit=self.limit, tag=split,
            wait_s=_wait_timeout_s(),
        )  # fmt: skip
        cache.split = split
        self.caches.append(cache)
        paths = [os.path.join(directory, local_name(s.path)) for s in shards]
        return StreamFiles(paths, directory, self.limit)

    def first_shard(self, split: str) -> tuple[str, str] | None:
        """(a verified local copy of ``split``'s first shard, its URL), for checking its
        records; None if the split has no shards."""
        shards = [s for s in self.manifest.shards if s.split == split]
        if not shards:
            return None
        url = storage.join(self.url, shards[0].path)
        path = os.path.join(self.directory, f"check-{split}-{local_name(shards[0].path)}")
        storage.download_file(url, path, shards[0].crc32c)
        return path, url

    def close(self) -> None:
        for cache in self.caches:
            cache.close()
        shutil.rmtree(self.directory, ignore_errors=True)  # made by mkdtemp: ours alone


class WorkerShards:
    """A parameter-server job's ``root`` for the workers' pipelines, built by the chief: the
    paths in each worker's own directory (:func:`worker_dir` of :func:`shared_dir`, by the
    worker's index), where its cache (:func:`serve_worker_shards`) fetches its own share."""

    def __init__(self, url: str, manifest, directory: str):
        self.url, self.manifest, self.directory = url, manifest, directory

    def __str__(self) -> str:
        return self.url

    def shard_files(self, split: str, input_context=None, repeat: bool = False) -> StreamFiles:
        index = input_context.input_pipeline_id if input_context is not None else 0
        names = [local_name(p) for p in self.manifest.shard_paths(split)]
        folder = worker_dir(self.directory, index)
        if isinstance(folder, str):
            import tensorflow as tf

            folder = tf.constant(folder)
        return StreamFiles(names, self.directory, cache_shards(), folder=folder)


class _Claim:
    """This process's exclusive hold (``flock``) on a worker's cache directory, through the
    lock file beside it: no other live process uses the directory while it is held."""

    def __init__(self, directory: str):
        self.path = f"{directory}.lock"
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RetryableError(
                    f"{directory}: another process serves this worker's shard cache; is a "
                    "worker with the same index still running?"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a lock file its last holder removed meanwhile
                self.fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self.fd < 0:
            return
        os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


def _clear_leftovers(directory: str, names: set[str]) -> None:
    """Remove a previous cache's directory ``directory`` (a worker killed before it cleaned
    up; the claim proves that no live process uses it): only if a shard cache made it (its
    stamp), and only the files a shard cache writes (``names``, temporary files of theirs,
    want and error files); UserError if anything else is in it."""
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return

    def cache_file(entry: str, temporary: bool = True) -> bool:
        if entry in (STAMP, TICKET) or entry in names:
            return True
        if entry.startswith((WANT, ANSWER)):
            return entry.split("-", 2)[-1] in names
        base, _, tag = entry[1:].rpartition(".part-")
        return temporary and entry.startswith(".") and len(tag) == 8 and cache_file(base, False)

    # Without its stamp (removed last when a cache cleans up) the directory is a cache's only
    # when it holds nothing but the protocol's files: a reader's want can recreate the
    # directory after the cache removed it (TensorFlow's WriteFile makes parent directories),
    # and a kill can come between the directory and its stamp.
    if STAMP not in entries and not all(
        e == TICKET or e.startswith((WANT, ANSWER, f".{STAMP}.part-")) and cache_file(e)
        for e in entries
    ):
        raise UserError(
            f"{directory}: exists and was not made by a shard cache; remove it or set {DIR_ENV}"
        )

    others = [e for e in entries if not cache_file(e)]
    if others:
        raise UserError(
            f"{directory}: holds files no shard cache wrote ({', '.join(sorted(others)[:3])});"
            f" remove them or set {DIR_ENV}"
        )
    for entry in entries:
        try:
            os.unlink(os.path.join(directory, entry))
        except FileNotFoundError:
            pass
    os.rmdir(directory)


def serve_worker_shards(url: str, model_dir: str, index: int, workers: int) -> ShardCache:
    """Start worker ``index``'s cache of its share of the train split (of ``workers``) in its
    own directory (:func:`worker_dir`): the share its input pipeline reads (FILE sharding by
    index). A previous cache of this worker that was killed leaves its directory behind: it
    is cleared once this process holds the worker's claim."""
    import dataclasses

    from tfpipes.manifest import read_manifest

    manifest = read_manifest(url)
    shards = [s for s in manifest.shards if s.split == "train"]
    ctx = dataclasses.make_dataclass("Ctx", ["num_input_pipelines", "input_pipeline_id"])
    mine = pipeline_share(shards, ctx(workers, index))
    shared = shared_dir(url, model_dir)
    os.makedirs(shared, mode=0o700, exist_ok=True)
    directory = worker_dir(shared, index)
    claim = _Claim(directory)
    try:
        _clear_leftovers(directory, {local_name(s.path) for s in mine})
        return ShardCache(
            url, mine, directory, repeat=True, limit=cache_shards(), tag=f"worker-{index}",
            wait_s=_wait_timeout_s(), claim=claim,
        )  # fmt: skip
    except BaseException:
        claim.release()
        raise
