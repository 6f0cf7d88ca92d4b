"""The shard cache of a streamed data set (``tfpipes.stream``), read by real tf.data pipelines.

Real parts only: shards are TFRecord objects on the fake-gcs-server, the cache downloads them
through the storage layer, and TensorFlow's own interleave (``input_pipeline._records``, as
training builds it) opens, reads and closes them; the cache learns of that through inotify.
Each test reads every record it expects or fails: a cache that skips a shard, or never fetches
the one a reader waits for, shows as the reader's "stopped answering" error.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tfpipes import manifest, storage, stream
from tfpipes.errors import RetryableError

pytestmark = [pytest.mark.gcs, pytest.mark.timeout(180)]

WAIT_S = 15  # how long a reader here waits for a shard before it gives up


def publish_shards(url: str, tmp: Path, sizes: list[int]) -> list[manifest.ShardInfo]:
    """TFRecord shards of ``sizes[i]`` records each (record ``b"<i>:<j>"``), uploaded under
    ``url``; their manifest entries, in order."""
    import tensorflow as tf

    tmp.mkdir(parents=True, exist_ok=True)
    out = []
    for i, n in enumerate(sizes):
        rel = f"train/part-{i:05d}.tfrecord"
        local = tmp / f"part-{i:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(local)) as w:
            for j in range(n):
                w.write(f"{i}:{j}".encode())
        size, crc = manifest.file_crc32c(str(local))
        storage.write_bytes(storage.join(url, rel), local.read_bytes())
        out.append(manifest.ShardInfo(rel, "train", n, size, crc))
    return out


def expected(sizes: list[int], share: list[int] | None = None) -> list[bytes]:
    share = range(len(sizes)) if share is None else share
    return sorted(f"{i}:{j}".encode() for i in share for j in range(sizes[i]))


def pipeline(files: stream.StreamFiles, epochs: int | None, context=None):
    """The records of ``files`` as training reads them (the interleave of ``_records``)."""
    from tfpipes.input_pipeline import _records

    files.timeout_s = WAIT_S
    ds = _records(files, None, context, block_length=1)
    return ds.repeat(epochs) if epochs != 1 else ds


def read_until_failure(it, most: int):
    """The shard cache's error that ends reading ``it`` (within ``most`` records). Nothing of
    the TensorFlow error is kept (its traceback would keep the pipeline and its open files)."""
    import tensorflow as tf

    try:
        for _ in range(most):
            next(it)
    except tf.errors.InvalidArgumentError as e:
        failure = stream.error_from_tf(e)
        return failure or AssertionError(str(e))
    return None


def shard_files(directory: str) -> set[str]:
    """The shards on disk in ``directory``, downloads in flight included (by shard name)."""
    out = set()
    for name in os.listdir(directory):
        if name.startswith(".") and ".tfrecord.part-" in name:
            out.add(name[1:].rsplit(".part-", 1)[0])
        elif name.endswith(".tfrecord") and not name.startswith("."):
            out.add(name)
    return out


class Peak:
    """The largest number of shard files in ``directory`` at once, sampled every 2 ms."""

    def __init__(self, directory: str):
        self.directory, self.peak = directory, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = len(shard_files(self.directory))
            except FileNotFoundError:
                n = 0
            self.peak = max(self.peak, n)
            time.sleep(0.002)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    base = tmp_path / "caches"
    base.mkdir(mode=0o700)
    monkeypatch.setenv(stream.DIR_ENV, str(base))
    return base


def test_a_share_just_over_the_limit_closed_out_of_order_reads_every_shard_each_epoch(
    gcs_bucket, tmp_path, cache_dir
):
    """8 shards, a limit of 7 (the interleave reads 2 at once): shard 2 is long, so tf.data
    closes the shards after it before it, while the cache already fetches the next epoch.
    Every record of three epochs arrives, with never more than 7 shard files on disk."""
    url = f"{gcs_bucket}/d"
    sizes = [40, 40, 4000, 30, 30, 30, 30, 40]
    shards = publish_shards(url, tmp_path / "src", sizes)
    directory = str(cache_dir / "c")
    cache = stream.ShardCache(url, shards, directory, repeat=True, limit=7, tag="train")
    files = stream.StreamFiles(cache.paths(), directory, 7)
    assert files.cycle == 2
    peak = Peak(directory)
    try:
        got = [r.numpy() for r in pipeline(files, 3)]
    finally:
        cache.close()
        most = peak.stop()
    assert sorted(got) == sorted(expected(sizes) * 3)
    assert most <= 7, most


def train_cache(url: str, shards, directory: str) -> stream.ShardCache:
    """The cache a trainer's input pipeline reads from: 4 shards at a time, repeated."""
    return stream.ShardCache(url, shards, directory, repeat=True, limit=4, tag="train")


def read_cache(cache: stream.ShardCache, directory: str, epochs: int | None):
    """A trainer's pipeline (see :func:`pipeline`) over ``cache``'s shards."""
    return pipeline(stream.StreamFiles(cache.paths(), directory, 4), epochs)


def test_a_reader_started_again_from_the_first_shard_gets_it(gcs_bucket, tmp_path, cache_dir):
    """A parameter-server worker's cache outlives the chief: a restarted chief builds the
    pipeline again, which reads the share from its first shard while the cache had fetched
    ahead for the old one. The new pipeline reads a whole epoch; then a third one, started
    after the second was dropped halfway too."""
    url = f"{gcs_bucket}/d"
    sizes = [50] * 16
    shards = publish_shards(url, tmp_path / "src", sizes)
    directory = str(cache_dir / "c")
    cache = train_cache(url, shards, directory)
    try:
        for _ in range(2):  # a pipeline read into its 8th shard, then dropped (the old chief)
            it = iter(read_cache(cache, directory, None))
            for _ in range(7 * 50 + 10):
                next(it)
            del it
        got = [r.numpy() for r in read_cache(cache, directory, 1)]
    finally:
        cache.close()
    assert sorted(got) == expected(sizes)


def test_a_failed_download_is_reported_and_the_next_reader_gets_the_shard(
    tmp_path, cache_dir, monkeypatch
):
    """The storage server stops: the waiting reader fails with the retryable error. A cache
    that outlives its reader (a parameter-server worker's) must not keep answering every later
    reader with that old error: once the server is back, a new reader reads every shard."""
    from tests.gcs_fixtures import FakeGcsServer, point_tfpipes_at, wait_for_objects

    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "2")
    with FakeGcsServer(root=tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        url = f"gs://{server.create_bucket()}/d"
        sizes = [50] * 12
        shards = publish_shards(url, tmp_path / "src", sizes)
        directory = str(cache_dir / "c")
        cache = train_cache(url, shards, directory)
        try:
            it = iter(read_cache(cache, directory, None))
            for _ in range(50):
                next(it)
            server.stop()
            failure = read_until_failure(it, 12 * 50)
            assert isinstance(failure, RetryableError), failure
            assert "object storage unreachable" in str(failure)
            del it  # the pipeline is gone: its shards are closed
            server.start()
            wait_for_objects(url, server)
            got = [r.numpy() for r in read_cache(cache, directory, 1)]
        finally:
            cache.close()
    assert sorted(got) == expected(sizes)


def publish_dataset(url: str, tmp: Path, sizes: list[int], corrupt: int | None = None):
    """Shards as :func:`publish_shards` and a manifest listing them (shard ``corrupt`` with a
    CRC32C its bytes do not have)."""
    import dataclasses

    shards = publish_shards(url, tmp, sizes)
    if corrupt is not None:
        shards[corrupt] = dataclasses.replace(shards[corrupt], crc32c="00000000")
    doc = manifest.DatasetManifest(tuple(shards), (), {"train": sum(sizes)}, "", "now")
    storage.write_text(storage.join(url, manifest.MANIFEST), doc.to_json())
    return doc


def test_parameter_server_workers_on_one_machine_keep_to_their_own_files(
    gcs_bucket, tmp_path, cache_dir, monkeypatch
):
    """Two workers of one job on one machine (one shard cache directory for the job): each
    cache has a directory of its own. Worker 1's shard fails its CRC32C check: its reader
    is told, worker 0's reader is not (it reads its whole share); worker 0's cache closing
    leaves worker 1's files alone."""
    import tensorflow as tf

    monkeypatch.setenv(stream.SHARDS_ENV, "4")  # fewer than a share: its reader waits
    url, model_dir = f"{gcs_bucket}/d", str(tmp_path / "m")
    sizes = [50] * 12
    doc = publish_dataset(url, tmp_path / "src", sizes, corrupt=1)  # worker 1's first shard
    workers = [stream.serve_worker_shards(url, model_dir, i, 2) for i in (0, 1)]
    try:
        root = stream.WorkerShards(url, doc, stream.shared_dir(url, model_dir))

        def read(i):
            files = root.shard_files("train", tf.distribute.InputContext(2, i, 1))
            return pipeline(files, 1, tf.distribute.InputContext(2, i, 1))

        failure = read_until_failure(iter(read(1)), 6 * 50)
        assert failure is not None and "CRC32C" in str(failure), failure
        got = [r.numpy() for r in read(0)]
        assert sorted(got) == expected(sizes, range(0, 12, 2))
        assert workers[0].directory != workers[1].directory
        before = sorted(os.listdir(workers[1].directory))
        workers[0].close()
        assert sorted(os.listdir(workers[1].directory)) == before
    finally:
        for cache in workers:
            cache.close()
    assert not [p for p in cache_dir.rglob("*") if p.is_file()], sorted(cache_dir.rglob("*"))


def test_close_stops_the_downloads_in_flight_and_leaves_nothing(tmp_path, cache_dir, monkeypatch):
    """Downloads retrying against a stopped server (a deadline of a minute) when the cache
    closes: close() stops them, and once it returns no thread of the cache is left to put a
    file in place later, and nothing of the cache is on disk."""
    from tests.gcs_fixtures import FakeGcsServer, point_tfpipes_at

    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "60")
    with FakeGcsServer(root=tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        url = f"gs://{server.create_bucket()}/d"
        shards = publish_shards(url, tmp_path / "src", [50] * 8)
        server.stop()
        directory = str(cache_dir / "c")
        cache = stream.ShardCache(url, shards, directory, repeat=True, limit=4, tag="late")
        deadline = time.monotonic() + 30
        while not any(".part-" in n for n in os.listdir(directory)):
            assert time.monotonic() < deadline, "no download started"
            time.sleep(0.01)
        cache.close()
        alive = [t.name for t in threading.enumerate() if t.name.endswith(("-late", "late_0"))]
        alive += [t.name for t in threading.enumerate() if t.name.startswith("fetch-late")]
        assert not alive, alive
        assert not os.path.exists(directory) or not os.listdir(directory)


def test_records_not_matching_the_schema_name_the_gs_object(gcs_bucket, tmp_path):
    """A streamed data set whose first shard does not parse with its schema.json: the one-line
    error names the shard's gs:// URL (the local copy checked is a temporary file)."""
    import json

    from tests.conftest import sample_dataset
    from tfpipes.errors import UserError
    from tfpipes.training.data import open_training_data

    local = Path(sample_dataset(str(tmp_path), 200, 1, num_shards=2))
    schema = json.loads((local / "schema.json").read_text())
    schema["features"][0].update(dtype="string", kind="categorical")  # x1: floats in the records
    (local / "schema.json").write_text(json.dumps(schema))
    doc = json.loads((local / "manifest.json").read_text())
    for f in doc["files"]:
        if f["path"] == "schema.json":
            f["bytes"], f["crc32c"] = manifest.file_crc32c(str(local / "schema.json"))
    (local / "manifest.json").write_text(json.dumps(doc))
    url = f"{gcs_bucket}/d"
    storage.publish_dir(str(local), url)
    with pytest.raises(UserError) as e:
        with open_training_data(url):
            pass
    first = f"{url}/train/part-00000-of-00002.tfrecord"
    assert str(e.value).startswith(f"{first}: records do not match schema.json"), e.value
    assert "\n" not in str(e.value) and "check-" not in str(e.value)


def test_leftovers_without_the_stamp_are_cleared_only_when_they_are_protocol_files(tmp_path):
    """A reader's want can recreate a worker's directory after its cache removed it (and a kill
    can come between the directory and its stamp): such a directory, holding only the
    protocol's files, is cleared for the next cache; one holding shard data or anything else
    without the stamp is refused (exit 2), and left as it is."""
    from tfpipes.errors import UserError
    from tfpipes.shard_cache import STAMP, WANT

    names = {"train__part-00000.tfrecord"}
    only_wants = tmp_path / "w0"
    only_wants.mkdir()
    (only_wants / f"{WANT}1234-train__part-00000.tfrecord").write_bytes(b"")
    (only_wants / f".{STAMP}.part-0a1b2c3d").write_bytes(b"")
    stream._clear_leftovers(str(only_wants), names)
    assert not only_wants.exists()
    empty = tmp_path / "w1"
    empty.mkdir()
    stream._clear_leftovers(str(empty), names)
    assert not empty.exists()
    for extra in ("train__part-00000.tfrecord", "notes.txt"):
        d = tmp_path / f"w-{extra}"
        d.mkdir()
        (d / extra).write_bytes(b"data")
        with pytest.raises(UserError, match="not made by a shard cache"):
            stream._clear_leftovers(str(d), names)
        assert (d / extra).read_bytes() == b"data"


def test_a_wake_ends_the_wait_for_events_and_events_still_arrive(tmp_path):
    """The cache thread waits for inotify events; a finished download wakes it (a self-pipe),
    so the next shard is fetched at once rather than after the wait's timeout. A wake alone
    returns no event; the file events around it are all still read."""
    from tfpipes.shard_cache import _Inotify

    watch = _Inotify(str(tmp_path))
    timer = threading.Timer(0.2, watch.wake)
    try:
        timer.start()
        started = time.monotonic()
        assert watch.events(timeout=60) == []
        assert time.monotonic() - started < 30, "the wake did not end the wait"
        for _ in range(3):
            watch.wake()  # several wakes before a wait: all drained by the next read
        (tmp_path / "a").write_bytes(b"x")
        events = watch.events(timeout=60)
        assert "a" in {name for _, name in events}
        with pytest.raises(BlockingIOError):  # the pending wakes were drained with them
            os.read(watch._wake_r, 1)
    finally:
        timer.cancel()
        timer.join()
        watch.close()
