"""tfpipes deletes only what it provably wrote (issue 12): gs:// prefixes holding other objects,
bucket roots, local directories that are not tfpipes outputs, outputs over their inputs, and
data set manifests that point outside the data set are all refused, with nothing deleted."""

from __future__ import annotations

import errno
import json
import os
import tempfile

import pytest

from tests.gcs_fixtures import FakeGcsServer, point_tfpipes_at
from tests.trees import write_tree
from tfpipes import manifest, storage
from tfpipes.errors import RetryableError, UserError


def _names(url: str) -> set[str]:
    return set(storage.list_owners(url))


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        yield f"gs://{server.create_bucket()}"


@pytest.mark.gcs
def test_a_prefix_holding_other_objects_is_refused_and_kept(bucket, tmp_path):
    user = tmp_path / "user"
    write_tree(user, {"theirs.csv": b"a,b\n", "deep/notes.txt": b"keep me"})
    storage.commit_files(str(user), f"{bucket}/data")  # written without our owner mark
    for overwrite in (False, True):
        with pytest.raises(UserError, match="object\\(s\\) tfpipes did not write") as e:
            with storage.staged_dir(f"{bucket}/data", overwrite=overwrite, last=("m",)) as tmp:
                write_tree(tmp, {"m": b"manifest"})
        assert "\n" not in str(e.value) and f"{bucket}/data" in str(e.value)
    assert _names(f"{bucket}/data") == {"theirs.csv", "deep/notes.txt"}


@pytest.mark.gcs
def test_a_bucket_root_is_never_an_output(bucket):
    storage.write_text(f"{bucket}/someone-elses.txt", "x")
    for root in (bucket, bucket + "/"):
        with pytest.raises(UserError, match="a bucket root cannot be an output"):
            with storage.staged_dir(root, overwrite=True, last=("m",)) as tmp:
                write_tree(tmp, {"m": b"m"})
    assert storage.read_text(f"{bucket}/someone-elses.txt") == "x"


@pytest.mark.gcs
def test_our_partial_upload_is_replaced_but_an_object_added_later_stops_it(bucket, tmp_path):
    dest = f"{bucket}/out"
    half = tmp_path / "half"
    write_tree(half, {"a": b"1", "old-only": b"2"})  # a failed upload of ours: no manifest yet
    storage.commit_files(str(half), dest, owner=storage.owner_mark(dest))
    with storage.staged_dir(dest, last=("m",)) as tmp:  # no --overwrite needed
        write_tree(tmp, {"a": b"new", "m": b"manifest"})
    assert _names(dest) == {"a", "m"} and storage.read_text(f"{dest}/a") == "new"

    storage.write_text(f"{dest}/added-by-a-user.txt", "mine")  # not marked as ours
    with pytest.raises(UserError, match="did not write"):
        with storage.staged_dir(dest, overwrite=True, last=("m",)) as tmp:
            write_tree(tmp, {"m": b"again"})
    assert _names(dest) == {"a", "m", "added-by-a-user.txt"}


@pytest.mark.gcs
def test_a_data_set_written_before_owner_marks_is_replaced_by_its_manifest(bucket, tmp_path):
    old = tmp_path / "old"
    listed = {"train/part-0.tfrecord": b"x" * 10, "schema.json": b"{}"}
    write_tree(old, listed)
    doc = {
        "format": storage.DATASET_FORMAT,
        "shards": [{"path": "train/part-0.tfrecord", "split": "train", "rows": 1}],
        "files": [{"path": "schema.json", "split": "", "rows": 0}],
    }
    write_tree(old, {"manifest.json": json.dumps(doc).encode()})
    storage.commit_files(str(old), f"{bucket}/ds")  # unmarked, as older versions wrote it
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        with storage.staged_dir(f"{bucket}/ds", last=("manifest.json",)):
            pass
    with storage.staged_dir(f"{bucket}/ds", overwrite=True, last=("manifest.json",)) as tmp:
        write_tree(tmp, {"manifest.json": b"new", "schema.json": b"{}"})
    assert _names(f"{bucket}/ds") == {"manifest.json", "schema.json"}


def test_local_overwrite_replaces_only_a_tfpipes_output(tmp_path):
    docs = tmp_path / "docs"
    write_tree(docs, {"README.md": b"# mine", "guide.txt": b"keep"})
    with pytest.raises(UserError, match="not a tfpipes output") as e:
        with storage.staged_dir(str(docs), overwrite=True) as tmp:
            write_tree(tmp, {"manifest.json": b"{}"})
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(docs)) == ["README.md", "guide.txt"]
    assert os.listdir(tmp_path) == ["docs"]  # no staging leftover

    model = tmp_path / "model"
    write_tree(model, {"model_config.json": b"{}", "checkpoints/checkpoint": b"x"})
    with storage.staged_dir(str(model), overwrite=True) as tmp:
        write_tree(tmp, {"model_config.json": b'{"new": 1}'})
    assert os.listdir(model) == ["model_config.json"]
    assert sorted(os.listdir(tmp_path)) == ["docs", "model"]  # no .old-* leftover


def test_an_output_that_equals_or_contains_an_input_is_refused(tmp_path):
    src = tmp_path / "in" / "data.csv"
    write_tree(tmp_path / "in", {"data.csv": b"a\n1\n"})
    for out in (tmp_path / "in", tmp_path, src):
        with pytest.raises(UserError, match="would contain the input"):
            with storage.staged_dir(str(out), overwrite=True, inputs=(str(src),)):
                pass
    assert src.read_bytes() == b"a\n1\n"


def test_output_under_a_file_and_a_full_disk_are_one_line_errors(tmp_path):
    (tmp_path / "f").write_text("a file")
    with pytest.raises(UserError, match="cannot create the output") as e:
        with storage.staged_dir(str(tmp_path / "f" / "out")):
            pass
    assert str(e.value).startswith(str(tmp_path / "f" / "out"))
    with pytest.raises(RetryableError, match="no space left on device"):
        with storage.staged_dir(str(tmp_path / "out")):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["f"]


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../outside.tfrecord", "train/../../x", "", "train\\..\\..\\x"]
)
def test_a_manifest_entry_outside_the_data_set_is_refused(tmp_path, path):
    doc = {
        "format": manifest.FORMAT,
        "shards": [{"path": path, "split": "train", "rows": 1, "bytes": 1, "crc32c": "0"}],
        "files": [],
        "rows": {"train": 1},
        "compression": "",
        "created": "now",
    }
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="corrupt manifest.*not a relative path inside"):
        manifest.read_manifest(str(tmp_path))


@pytest.mark.parametrize("doc", ["[]", '"text"', "{}", '{"format": "tfpipes.dataset/v1"}', "\xff"])
def test_a_manifest_of_another_shape_is_one_line_error(tmp_path, doc):
    (tmp_path / "manifest.json").write_bytes(doc.encode("latin-1"))
    with pytest.raises(UserError, match="corrupt manifest|not UTF-8 text") as e:
        manifest.read_manifest(str(tmp_path))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "manifest.json"))


def test_shard_caches_live_in_a_private_directory(tmp_path, monkeypatch):
    from tfpipes import stream

    monkeypatch.delenv(stream.DIR_ENV, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert stream.base_dir() == os.path.join(str(tmp_path), f"tfpipes-stream-{os.getuid()}")
    assert os.path.dirname(stream.shared_dir("gs://b/d", "/m")) == stream.base_dir()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(stream.DIR_ENV, str(shared))
    with pytest.raises(UserError, match="must belong to this user with mode 0700"):
        stream.base_dir()
    fresh = tmp_path / "fresh"
    monkeypatch.setenv(stream.DIR_ENV, str(fresh))
    stream.base_dir()
    assert (fresh.stat().st_mode & 0o777) == 0o700


def test_preprocess_into_its_own_input_directory_is_refused_and_deletes_nothing(tmp_path):
    from tfpipes import cli

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.md").write_text("mine")
    (docs / "data.csv").write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(50)))
    for extra in ([], ["--overwrite"]):
        code = cli.main(
            ["preprocess", "--source", str(docs), "--output", str(docs), "--label", "label"] + extra
        )
        assert code == 2
    assert sorted(os.listdir(docs)) == ["data.csv", "notes.md"]


def test_storage_recognises_outputs_by_the_layout_names():
    from tfpipes import layout

    assert storage.OUTPUT_MARKERS == {
        "manifest": layout.MANIFEST,
        "saved_model": layout.SAVED_MODEL_PB,
        "export_schema": f"assets.extra/{layout.SCHEMA}",
        "model_config": layout.MODEL_CONFIG,
    }
    assert storage.DATASET_FORMAT == manifest.FORMAT
