"""The gs:// backend, through tfpipes.storage, against a real fake-gcs-server (no mocks)."""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from tests.gcs_fixtures import FakeGcsServer, outage_midway, point_tfpipes_at, wait_for_objects
from tests.trees import write_tree
from tfpipes import gcs, storage
from tfpipes.errors import RetryableError, UserError, is_retryable

pytestmark = [pytest.mark.gcs, pytest.mark.timeout(60)]


def _objects(server: FakeGcsServer, url: str) -> dict[str, dict]:
    """The server's own view of the objects under a URL, by key (straight from its JSON API)."""
    bucket, prefix = gcs.split(url)
    out: dict[str, dict] = {}
    token = ""
    while True:
        query = f"prefix={prefix}" + (f"&pageToken={token}" if token else "")
        with urllib.request.urlopen(f"{server.url}/storage/v1/b/{bucket}/o?{query}") as resp:
            page = json.load(resp)
        out.update({item["name"]: item for item in page.get("items", [])})
        token = page.get("nextPageToken")
        if not token:
            return out


def _dataset(n: int, tag: bytes = b"") -> dict[str, bytes]:
    files = {f"shards/part-{i:05d}.tfrecord": tag + os.urandom(1000 + i) for i in range(n)}
    files["schema.json"] = b'{"columns": []}'
    files["manifest.json"] = b'{"shards": %d}' % n
    return files


def test_write_read_size_exists(gcs_bucket):
    url = storage.join(gcs_bucket, "a", "b.bin")
    data = os.urandom(70_000)
    storage.write_bytes(url, data)
    assert storage.read_bytes(url) == data
    assert storage.size(url) == len(data)
    assert storage.exists(url) and not storage.is_dir(url)
    assert storage.exists(f"{gcs_bucket}/a") and storage.is_dir(f"{gcs_bucket}/a")
    assert storage.exists(gcs_bucket)
    assert not storage.exists(f"{gcs_bucket}/a/b") and not storage.exists(f"{gcs_bucket}/nope")
    storage.write_text(url, "replaced")
    assert storage.read_text(url) == "replaced"


def test_large_object_round_trip(gcs_bucket):
    # Over 8 MiB the client switches from a multipart to a resumable upload.
    data = os.urandom(9 * 1024 * 1024 + 3)
    url = f"{gcs_bucket}/big.bin"
    storage.write_bytes(url, data)
    assert storage.read_bytes(url) == data


def test_missing_object_and_bucket(gcs_bucket):
    with pytest.raises(UserError, match=r"/nope: no such object$") as e:
        storage.read_bytes(f"{gcs_bucket}/nope")
    assert e.value.exit_code == 2
    with pytest.raises(UserError, match="no such object"):
        storage.size(f"{gcs_bucket}/nope")
    with pytest.raises(UserError, match="no such object"), storage.open_read(f"{gcs_bucket}/n"):
        pass
    with pytest.raises(UserError, match=r"^gs://no-such-bucket-x: no such bucket$"):
        storage.read_bytes("gs://no-such-bucket-x/a")
    with pytest.raises(UserError, match="no such bucket"):
        storage.exists("gs://no-such-bucket-x/a")
    with pytest.raises(UserError, match="no such bucket"):
        storage.write_bytes("gs://no-such-bucket-x/a", b"x")


def test_listdir_and_glob(gcs_bucket):
    for key in ["d/a.txt", "d/b.csv", "d/sub/c.txt", "d/sub/deeper/e.txt", "dx/f.txt"]:
        storage.write_bytes(f"{gcs_bucket}/{key}", key.encode())
    assert storage.listdir(f"{gcs_bucket}/d") == ["a.txt", "b.csv", "sub"]
    assert storage.listdir(f"{gcs_bucket}/d/") == ["a.txt", "b.csv", "sub"]
    assert storage.listdir(gcs_bucket) == ["d", "dx"]
    with pytest.raises(UserError, match="no such object or prefix"):
        storage.listdir(f"{gcs_bucket}/nothing")

    b = gcs_bucket
    # As with a local glob, "*" stays within one segment and may match a "directory".
    assert storage.glob(f"{b}/d/*.txt") == [f"{b}/d/a.txt"]
    assert storage.glob(f"{b}/d/*") == [f"{b}/d/a.txt", f"{b}/d/b.csv", f"{b}/d/sub"]
    assert storage.glob(f"{b}/d*/*.txt") == [f"{b}/d/a.txt", f"{b}/dx/f.txt"]
    assert storage.glob(f"{b}/d/*/c.tx?") == [f"{b}/d/sub/c.txt"]
    assert storage.glob(f"{b}/d/[ab].*") == [f"{b}/d/a.txt", f"{b}/d/b.csv"]
    assert storage.glob(f"{b}/d/*.parquet") == []
    assert storage.glob(f"{b}/d/a.txt") == [f"{b}/d/a.txt"]
    assert storage.match_files(f"{b}/d", (".txt",)) == [f"{b}/d/a.txt"]


def test_open_read_streams_in_ranges(gcs_bucket, monkeypatch):
    monkeypatch.setattr(gcs, "READ_CHUNK", 64 * 1024)
    data = os.urandom(1_000_003)
    url = f"{gcs_bucket}/stream.bin"
    storage.write_bytes(url, data)
    with storage.open_read(url) as f:
        assert f.read(10) == data[:10]
        # Only the first range has been fetched, not the object.
        assert f.raw.tell() == 64 * 1024
        assert f.read(100_000) == data[10:100_010]
        assert f.read() == data[100_010:]
        f.seek(999_999)
        assert f.read() == data[999_999:]
    with storage.open_read(url) as f:
        chunks = list(iter(lambda: f.read(4096), b""))
    assert b"".join(chunks) == data


def test_rmtree_deletes_prefix_and_object_only(gcs_bucket):
    for key in ["out", "out/a", "out/s/b", "outside/c", "out2"]:
        storage.write_bytes(f"{gcs_bucket}/{key}", b"x")
    storage.rmtree(f"{gcs_bucket}/out")
    assert storage.listdir(gcs_bucket) == ["out2", "outside"]
    storage.rmtree(f"{gcs_bucket}/never-there")  # a missing prefix is fine


def test_staged_dir_uploads_manifest_last(gcs_server, gcs_bucket, monkeypatch):
    uploaded: list[str] = []
    monkeypatch.setattr(gcs, "after_upload", uploaded.append)
    files = _dataset(20)
    dest = f"{gcs_bucket}/ds"
    with storage.staged_dir(dest, last=("manifest.json",)) as tmp:
        write_tree(tmp, files)

    assert uploaded[-1] == f"{dest}/manifest.json"
    assert sorted(uploaded) == sorted(f"{dest}/{n}" for n in files)
    # The server agrees: the manifest's generation (a timestamp) is newer than every other's.
    objects = _objects(gcs_server, dest)
    generations = {k: int(v["generation"]) for k, v in objects.items()}
    manifest_gen = generations.pop("ds/manifest.json")
    assert manifest_gen > max(generations.values())
    with storage.local_dir(dest) as local:
        for name, data in files.items():
            assert Path(local, name).read_bytes() == data

    with (
        pytest.raises(UserError, match="already exists; pass --overwrite"),
        storage.staged_dir(dest, last=("manifest.json",)),
    ):
        pass


def test_staged_dir_failure_leaves_nothing(gcs_bucket):
    dest = f"{gcs_bucket}/ds"
    with (
        pytest.raises(RuntimeError, match="boom"),
        storage.staged_dir(dest, last=("manifest.json",)) as tmp,
    ):
        write_tree(tmp, _dataset(3))
        raise RuntimeError("boom")
    assert not storage.exists(dest)


def test_staged_dir_overwrite_never_shows_a_mixed_output(gcs_bucket, monkeypatch):
    dest = f"{gcs_bucket}/ds"
    old = _dataset(4, tag=b"old")
    old["stale.txt"] = b"only in the old output"
    with storage.staged_dir(dest, last=("manifest.json",)) as tmp:
        write_tree(tmp, old)

    seen: list[tuple[str, bool, bool]] = []

    def look(url: str) -> None:
        seen.append(
            (
                url.rsplit("/", 1)[-1],
                storage.exists(f"{dest}/manifest.json"),
                storage.exists(f"{dest}/stale.txt"),
            )
        )

    monkeypatch.setattr(gcs, "after_upload", look)
    new = _dataset(2, tag=b"new")
    with storage.staged_dir(dest, overwrite=True, last=("manifest.json",)) as tmp:
        write_tree(tmp, new)

    # While new data goes up the old manifest is already gone; by the time the new manifest
    # is written the stale object is gone too.
    assert all(not has_manifest for name, has_manifest, _ in seen[:-1])
    assert seen[-1] == ("manifest.json", True, False)
    with storage.local_dir(dest) as local:
        got = {
            os.path.relpath(os.path.join(r, f), local): Path(r, f).read_bytes()
            for r, _, fs in os.walk(local)
            for f in fs
        }
    assert got == new


def test_download_dir_round_trip(gcs_bucket):
    files = {"a.bin": os.urandom(5000), "empty": b"", "x/y/z.txt": b"deep", "x/w": b"w"}
    with storage.staged_dir(f"{gcs_bucket}/tree") as tmp:
        write_tree(tmp, files)
    with storage.local_dir(f"{gcs_bucket}/tree") as local:
        got = {
            os.path.relpath(os.path.join(r, f), local): Path(r, f).read_bytes()
            for r, _, fs in os.walk(local)
            for f in fs
        }
    assert got == files
    with (
        pytest.raises(UserError, match="no such prefix"),
        storage.local_dir(f"{gcs_bucket}/missing"),
    ):
        pass


def test_corruption_at_rest_is_detected(tmp_path, monkeypatch):
    # The filesystem backend keeps the CRC32C computed at upload beside the bytes; flipping a
    # byte in place on its disk is real bit rot that the stored checksum no longer matches.
    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        bucket = server.create_bucket()
        gcs_bucket = f"gs://{bucket}"
        data = os.urandom(4096)
        storage.write_bytes(f"{gcs_bucket}/d/obj", data)
        with open(server.object_path(bucket, "d/obj"), "r+b") as f:
            f.seek(100)
            f.write(bytes([data[100] ^ 0xFF]))
        _expect_corruption_detected(gcs_bucket)


def _expect_corruption_detected(gcs_bucket: str) -> None:

    with pytest.raises(UserError, match=r"gs://.*/d/obj: CRC32C mismatch on read"):
        storage.read_bytes(f"{gcs_bucket}/d/obj")
    with (
        pytest.raises(UserError, match="CRC32C mismatch on read"),
        storage.open_read(f"{gcs_bucket}/d/obj") as f,
    ):
        f.read()
    with (
        pytest.raises(UserError, match="CRC32C mismatch on read"),
        storage.local_dir(f"{gcs_bucket}/d"),
    ):
        pass


def test_unreachable_endpoint_fails_fast_with_one_line(monkeypatch):
    with FakeGcsServer() as server:  # a port that certainly had a server and now has none
        pass
    point_tfpipes_at(server, monkeypatch)
    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "1")
    start = time.monotonic()
    with pytest.raises(RetryableError) as e:
        storage.exists("gs://bucket/key")
    assert time.monotonic() - start < 5
    msg = str(e.value)
    assert msg.startswith(f"gs://bucket/key: object storage unreachable at {server.url} after ")
    assert msg.endswith("tries: connection refused") and "\n" not in msg
    assert is_retryable(e.value.exit_code)


def test_server_stopped_mid_upload_then_rerun_commits(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "2")
    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        dest = f"gs://{server.create_bucket()}/ds"
        files = _dataset(60)

        with outage_midway(server, monkeypatch) as uploaded:
            start = time.monotonic()
            with (
                pytest.raises(RetryableError) as e,
                storage.staged_dir(dest, last=("manifest.json",)) as tmp,
            ):
                write_tree(tmp, files)
            elapsed = time.monotonic() - start

        msg = str(e.value)
        assert f"object storage unreachable at {server.url} after" in msg, msg
        assert msg.startswith(dest + "/") and "\n" not in msg
        assert is_retryable(e.value.exit_code)
        assert elapsed < 15
        assert 3 <= len(uploaded) < len(files) - 1
        assert f"{dest}/manifest.json" not in uploaded

        server.start()
        # The partial upload is there but not committed. (A restarted fake-gcs-server answers
        # a moment before its filesystem backend lists the bucket again: poll for it.)
        point_tfpipes_at(server, monkeypatch)  # a new client: no connection to the old process
        wait_for_objects(dest, server)
        assert storage.is_dir(dest)
        assert not storage.exists(f"{dest}/manifest.json")

        with storage.staged_dir(dest, overwrite=True, last=("manifest.json",)) as tmp:
            write_tree(tmp, files)
        assert storage.read_bytes(f"{dest}/manifest.json") == files["manifest.json"]
        assert len(_objects(server, dest)) == len(files)
        with storage.local_dir(dest) as local:
            for name, data in files.items():
                assert Path(local, name).read_bytes() == data
