"""preprocess on object storage: gs:// in and out against a real fake-gcs-server, read back by
the trainer's input pipeline; an outage mid-upload commits nothing and a rerun completes."""

from __future__ import annotations

import gzip
import os

import pytest

from tests.gcs_fixtures import FakeGcsServer, outage_midway, point_tfpipes_at, wait_for_objects
from tfpipes import manifest, storage
from tfpipes.errors import RetryableError, UserError, is_retryable
from tfpipes.preprocess import PreprocessConfig, preprocess
from tfpipes.sample_data import write_csv

pytestmark = [pytest.mark.gcs, pytest.mark.timeout(180)]


def _tree(root: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            data = open(p, "rb").read()
            if n == manifest.MANIFEST:  # only the creation time may differ
                data = b"\n".join(ln for ln in data.splitlines() if b'"created"' not in ln)
            out[os.path.relpath(p, root)] = data
    return out


def _upload_inputs(tmp_path, bucket: str) -> str:
    """Two CSV files (one gzipped) under gs://bucket/in; the same files under tmp_path/in."""
    local = tmp_path / "in"
    local.mkdir()
    write_csv(str(local / "a.csv"), 3000, seed=1)
    write_csv(str(tmp_path / "b.csv"), 2000, seed=2)
    (local / "b.csv.gz").write_bytes(gzip.compress((tmp_path / "b.csv").read_bytes()))
    for name in ("a.csv", "b.csv.gz"):
        storage.write_bytes(f"{bucket}/in/{name}", (local / name).read_bytes())
    return f"{bucket}/in"


def test_gcs_in_gcs_out_read_back_by_the_trainer(gcs_bucket, tmp_path):
    import tensorflow as tf

    from tfpipes import input_pipeline
    from tfpipes.schema import load_schema

    source = _upload_inputs(tmp_path, gcs_bucket)
    out = f"{gcs_bucket}/datasets/d1"
    # small blocks, two workers, a gzipped member: the streaming paths of a remote input
    cfg = PreprocessConfig(source, out, "label", num_shards=4, block_size=64 << 10, workers=2)
    r = preprocess(cfg)
    assert r.rows == 5000 and r.workers == 2
    local = preprocess(
        PreprocessConfig(str(tmp_path / "in"), str(tmp_path / "local"), "label", num_shards=4,
                         block_size=64 << 10, workers=1)
    )  # fmt: skip
    assert local.source_hash == r.source_hash
    with storage.local_dir(out) as root:
        # the same bytes as from local files, and what the trainer reads
        assert _tree(root) == _tree(str(tmp_path / "local"))
        m = manifest.verify_dataset(root)
        schema = load_schema(root)
        for split in ("train", "eval"):
            ds = input_pipeline.make_dataset(root, m, split, schema, 256, training=False)
            rows = sum(int(tf.shape(y)[0]) for _, y in ds)
            assert rows == m.rows[split]
        assert m.rows["train"] + m.rows["eval"] == 5000

    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        preprocess(cfg)


def test_gcs_parquet_input(gcs_bucket, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"x": [0.5, 1.5, 2.5, 3.5] * 50, "label": [0, 1, 1, 0] * 50})
    pq.write_table(table, tmp_path / "t.parquet")
    storage.write_bytes(f"{gcs_bucket}/pq/t.parquet", (tmp_path / "t.parquet").read_bytes())
    r = preprocess(PreprocessConfig(f"{gcs_bucket}/pq", f"{gcs_bucket}/pq-out", "label"))
    assert r.rows == 200 and r.schema.features[0].dtype == "float32"
    with storage.local_dir(f"{gcs_bucket}/pq-out") as root:
        assert manifest.verify_dataset(root).rows["train"] == r.train_rows


def test_server_stopped_mid_upload_then_rerun_commits(tmp_path, monkeypatch):
    monkeypatch.setenv("TFPIPES_GCS_DEADLINE_S", "2")
    with FakeGcsServer(tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        bucket = f"gs://{server.create_bucket()}"
        source = _upload_inputs(tmp_path, bucket)
        dest = f"{bucket}/ds"
        cfg = PreprocessConfig(source, dest, "label", num_shards=8)  # 16 shards + 2 files

        with outage_midway(server, monkeypatch) as uploaded, pytest.raises(RetryableError) as e:
            preprocess(cfg)
        msg = str(e.value)
        assert f"object storage unreachable at {server.url}" in msg and "\n" not in msg, msg
        assert is_retryable(e.value.exit_code)
        assert 3 <= len(uploaded) < 18 and f"{dest}/manifest.json" not in uploaded

        server.start()
        point_tfpipes_at(server, monkeypatch)  # a new client: no connection to the old process
        wait_for_objects(dest, server)
        assert storage.is_dir(dest)  # a partial upload, not committed
        assert not storage.exists(f"{dest}/manifest.json")
        with pytest.raises(UserError, match="not a committed tfpipes data set"):
            manifest.read_manifest(dest)

        # The rerun needs no --overwrite: an output without a manifest is a failed upload.
        r = preprocess(cfg)
        assert r.rows == 5000
        with storage.local_dir(dest) as root:
            m = manifest.verify_dataset(root)
            listed = {s.path for s in (*m.shards, *m.files)} | {manifest.MANIFEST}
            assert set(_tree(root)) == listed  # nothing stale from the failed run
        with pytest.raises(UserError, match="already exists"):
            preprocess(cfg)  # a committed output is never replaced without --overwrite
