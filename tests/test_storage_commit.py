"""The one commit mechanism (storage.commit_files / staged_dir) as every output uses it:
data first, completion markers last and in order, streamed from disk; checkpoints and the
parameter-server workers' data copies commit through it too."""

from __future__ import annotations

import os
import threading

import pytest

from tests.gcs_fixtures import FakeGcsServer, point_tfpipes_at
from tests.trees import write_tree
from tfpipes import gcs, storage
from tfpipes.errors import UserError

FILES = {f"d/part-{i}.bin": os.urandom(3000 + i) for i in range(12)}
FILES.update({"marker.index": b"index", "STATE": b"state"})


def _recorded_uploads(monkeypatch) -> list[str]:
    seen: list[str] = []
    lock = threading.Lock()

    def after_upload(url: str) -> None:
        with lock:
            seen.append(url.rsplit("/", 1)[-1])

    monkeypatch.setattr(gcs, "after_upload", after_upload)
    return seen


@pytest.mark.gcs
def test_remote_commit_writes_markers_last_in_order_and_streams(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", FILES)
    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        dest = f"gs://{server.create_bucket()}/out"
        seen = _recorded_uploads(monkeypatch)
        # Whole-file reads are what the commit must not do: fail the test if anything tries.
        monkeypatch.setattr(storage, "read_bytes", lambda *_: pytest.fail("whole-file read"))
        monkeypatch.setattr(gcs, "write_bytes", lambda *_: pytest.fail("whole-object upload"))
        storage.commit_files(str(tmp_path / "src"), dest, last=("marker.index", "STATE"))
        assert seen[-2:] == ["marker.index", "STATE"]
        assert sorted(seen[:-2]) == sorted(n.rsplit("/", 1)[-1] for n in FILES if "/" in n)
        monkeypatch.undo()
        point_tfpipes_at(server, monkeypatch)
        for name, data in FILES.items():
            assert storage.read_bytes(storage.join(dest, name)) == data


def test_local_commit_writes_markers_last_and_leaves_no_temporaries(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", FILES)
    order: list[str] = []
    replace = os.replace

    def recording_replace(src, dst):
        order.append(os.path.basename(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    dest = tmp_path / "dest"
    storage.commit_files(str(tmp_path / "src"), str(dest), sorted(FILES), last=("STATE",))
    assert order[-1] == "STATE" and len(order) == len(FILES)
    got = {n: (dest / n).read_bytes() for n in storage.files_under(str(dest))}
    assert got == FILES


def test_staged_dir_never_replaces_an_output_committed_meanwhile(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(UserError, match="already exists"):
        with storage.staged_dir(str(final)) as tmp:
            write_tree(tmp, {"mine": b"1"})
            write_tree(final, {"theirs": b"2"})  # another writer commits first
    assert os.listdir(final) == ["theirs"]
    assert os.listdir(tmp_path) == ["out"]  # no staging leftover


@pytest.mark.gcs
@pytest.mark.slow
def test_gs_checkpoint_commit_uploads_data_then_index_then_state(tmp_path, monkeypatch):
    import tensorflow as tf

    from tfpipes.checkpoints import INDEX, CheckpointStore

    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        model_dir = f"gs://{server.create_bucket()}/model"
        store = CheckpointStore(model_dir)
        try:
            ckpt = tf.train.Checkpoint(v=tf.Variable(tf.zeros([1000])))
            manager = tf.train.CheckpointManager(ckpt, store.local_dir, max_to_keep=1)
            seen = _recorded_uploads(monkeypatch)
            store.commit(manager.save(checkpoint_number=1))
            ckpt_files = [n for n in seen if n.startswith("ckpt-1")]
            assert ckpt_files[-1] == "ckpt-1.index" and seen.index(INDEX) > seen.index(
                "ckpt-1.index"
            )
            assert all(n.startswith("ckpt-1.data") for n in ckpt_files[:-1]) and ckpt_files[:-1]
            seen.clear()
            store.commit(manager.save(checkpoint_number=2))  # max_to_keep=1: ckpt-1 goes
            remote = storage.listdir(storage.join(model_dir, "checkpoints"))
            assert not [n for n in remote if n.startswith("ckpt-1")], remote
            assert seen[-1] == INDEX
        finally:
            store.close()
