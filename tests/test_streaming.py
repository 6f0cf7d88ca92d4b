"""Training streams a gs:// data set (issue 13): no copy anywhere, a bounded local footprint,
each worker reading only its own shards, and an outage that exits 138 and resumes exactly.

Everything is real: the fake-gcs-server, ``tfpipes train`` processes, ``local-cluster``
clusters on 127.0.0.1, and a small tmpfs as the temporary directory, so that a full copy of the
data set could not even fit. The footprint is sampled from the tmpfs while the run goes; which
process read which object comes from the storage layer's read log (``$TFPIPES_READ_LOG``).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.gcs_fixtures import FakeGcsServer, point_tfpipes_at, wait_for_objects
from tests.test_distributed import Run, base_env, losses
from tfpipes.errors import EXIT_RETRYABLE

pytestmark = [pytest.mark.gcs, pytest.mark.slow]

K = 4  # TFPIPES_STREAM_SHARDS in these tests
TMPFS_KB = 320  # the temporary directory's size; the data set is several times larger


def write_data(root: Path, rows: int, layout: str) -> Path:
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.sample_data import write_csv

    write_csv(str(root / "d.csv"), rows, seed=3)
    preprocess(
        PreprocessConfig(
            str(root / "d.csv"), str(root / "data"), "label", num_shards=32, layout=layout
        )
    )
    return root / "data"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """8000 rows in 32 shards per split, one record per row: about 1.2 MB, 30 KB per train
    shard (per-row records are about 4.5 times the block layout's bytes: few rows make a data
    set several times the tmpfs)."""
    return write_data(tmp_path_factory.mktemp("stream-data"), 8000, "rows")


@pytest.fixture(scope="module")
def block_data(tmp_path_factory) -> Path:
    """The default block layout: 40,000 rows in 32 shards per split, about 1 MB."""
    return write_data(tmp_path_factory.mktemp("stream-blocks"), 40000, "blocks")


def shards(data: Path, split: str) -> list[dict]:
    return [
        s for s in json.loads((data / "manifest.json").read_text())["shards"] if s["split"] == split
    ]


def data_bytes(data: Path) -> int:
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file())


@pytest.fixture
def small_tmp(tmp_path):
    """A real TMPFS_KB KiB tmpfs to serve as every task's temporary directory."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_KB}k", "tmpfs", str(mount)], check=True
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


class Footprint:
    """The largest number of bytes in use on a file system, sampled every 5 ms."""

    def __init__(self, mount: Path):
        self.mount, self.peak = str(mount), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            st = os.statvfs(self.mount)
            self.peak = max(self.peak, (st.f_blocks - st.f_bfree) * st.f_frsize)
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def env_for(server_url: str, tmp: Path, log: Path, cache_only: bool = False) -> dict:
    """The tasks' environment: the tmpfs ``tmp`` as the temporary directory (``cache_only``:
    as the shard caches' directory only; an MWMS worker also keeps its throwaway checkpoints
    in the temporary directory)."""
    if cache_only:
        (tmp / "cache").mkdir(mode=0o700, exist_ok=True)
    where = {"TFPIPES_STREAM_DIR": str(tmp / "cache")} if cache_only else {"TMPDIR": str(tmp)}
    return base_env(
        STORAGE_EMULATOR_HOST=server_url,
        GOOGLE_CLOUD_PROJECT="test",
        TFPIPES_GCS_DEADLINE_S="3",
        TFPIPES_STREAM_SHARDS=str(K),
        TFPIPES_READ_LOG=str(log),
        **where,
    )


def reads(log: Path) -> dict[str, list[str]]:
    """Object keys (relative to the data set) read through the storage layer, by TF task."""
    out: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        _, task, url = line.split(" ", 2)
        out.setdefault(task, []).append(url.split("/d/", 1)[1])
    return out


def reads_or_none(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def bound(data: Path, caches: int) -> int:
    """The stated bound: K shard files per cache, plus slack for tmpfs' page rounding."""
    biggest = max(s["bytes"] for s in shards(data, "train") + shards(data, "eval"))
    return caches * K * (biggest + 4096) + 64 * 1024


@pytest.fixture(params=["rows"])
def layout(request) -> str:
    return request.param


@pytest.fixture
def remote(request, layout, gcs_bucket, gcs_server):
    """The data set of ``layout`` (``data`` or ``block_data``) in the bucket: (url, server)."""
    from tfpipes import storage

    url = f"{gcs_bucket}/d"
    storage.publish_dir(str(data_of(request, layout)), url)
    return url, gcs_server.url


def data_of(request, layout: str) -> Path:
    return request.getfixturevalue("block_data" if layout == "blocks" else "data")


def train(args, env, timeout=240) -> Run:
    run = Run(args, env)
    try:
        run.wait(timeout)
    finally:
        run.stop()
    return run


@pytest.mark.parametrize("layout", ["rows", "blocks"], indirect=True)
def test_one_process_streams_a_data_set_several_times_the_temp_disk(
    request, layout, remote, small_tmp, tmp_path
):
    url, server = remote
    data = data_of(request, layout)
    assert data_bytes(data) > 3 * TMPFS_KB * 1024
    log = tmp_path / "reads.log"
    seen = Footprint(small_tmp)
    steps = "60" if layout == "rows" else "280"  # a little more than an epoch of 128-row batches
    run = train(
        ["train", "--data", url, "--model-dir", str(tmp_path / "m"), "--train-steps", steps,
         "--batch-size", "128", "--log-every", "20"],
        env_for(server, small_tmp, log),
    )  # fmt: skip
    peak = seen.stop()
    assert run.proc.returncode == 0, run
    got = reads(log)["local:0"]
    train_keys = [s["path"] for s in shards(data, "train")]
    # more than an epoch: every train shard was fetched (and the eval's), some twice.
    assert all(k in got for k in train_keys) and len(got) > len(train_keys) + 32, got
    assert peak <= bound(data, 1), (peak, bound(data, 1))
    assert not os.listdir(small_tmp / f"tfpipes-stream-{os.getuid()}")  # nothing left behind


def on_cluster(shape: list[str], extra: list[str], remote, small_tmp, tmp_path):
    """Train on a ``local-cluster`` of ``shape``, the shard caches on the tmpfs: (the objects
    each task read, the peak footprint, the train shards' keys)."""
    url, server = remote
    log = tmp_path / "reads.log"
    seen = Footprint(small_tmp)
    run = train(
        ["local-cluster", *shape, "--grace", "2", "--timeout", "200", "--", "--data", url,
         "--model-dir", str(tmp_path / "m"), "--batch-size", "64", *extra],
        env_for(server, small_tmp, log, cache_only=True),
    )  # fmt: skip
    peak = seen.stop()
    assert run.proc.returncode == 0, run
    assert not [p for p in small_tmp.rglob("*") if p.is_file()], sorted(small_tmp.rglob("*"))
    return reads(log), peak


@pytest.mark.cluster
def test_two_mwms_workers_each_stream_only_their_shards(data, remote, small_tmp, tmp_path):
    got, peak = on_cluster(
        ["--workers", "2"], ["--train-steps", "120", "--log-every", "40"], remote, small_tmp,
        tmp_path,
    )  # fmt: skip
    train_keys = [s["path"] for s in shards(data, "train")]
    for i in (0, 1):
        mine = set(train_keys[i::2])
        read = {k for k in got[f"worker:{i}"] if k in train_keys}
        # its own shards (the first train shard is also fetched once to check its records)
        assert read - {train_keys[0]} <= mine and mine <= read, (i, sorted(read))
    assert peak <= bound(data, 2), (peak, bound(data, 2))


@pytest.mark.cluster
@pytest.mark.parametrize("layout", ["blocks"], indirect=True)
def test_parameter_server_workers_stream_only_their_shards(
    request, layout, remote, small_tmp, tmp_path
):
    data = data_of(request, layout)
    got, peak = on_cluster(
        ["--workers", "2", "--ps", "1"],
        ["--train-steps", "150", "--log-every", "50", "--steps-per-loop", "10"],
        remote, small_tmp, tmp_path,
    )  # fmt: skip
    train_keys = [s["path"] for s in shards(data, "train")]
    for i in (0, 1):
        read = set(got[f"worker:{i}"])
        assert read and read <= set(train_keys[i::2]), (i, sorted(read))
    # the chief reads the eval split and the first train shard (its records checked), no more
    assert {k for k in got["chief:0"] if k in train_keys} == {train_keys[0]}
    assert peak <= bound(data, 3), (peak, bound(data, 3))


def test_storage_stopped_mid_training_exits_138_and_a_rerun_resumes_exactly(
    data, small_tmp, tmp_path, monkeypatch
):
    """The server stops while the run streams: one retryable line, exit 138; the server
    back, a rerun resumes from the last checkpoint and ends with the losses and eval metrics
    of an uninterrupted run."""
    from tfpipes import storage

    args = ["--train-steps", "200", "--batch-size", "32", "--log-every", "10"]
    args += ["--checkpoint-every", "20", "--shuffle-buffer", "500"]
    with FakeGcsServer(root=tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        url = f"gs://{server.create_bucket()}/d"
        storage.publish_dir(str(data), url)
        env = env_for(server.url, small_tmp, tmp_path / "reads.log")
        whole = train(["train", "--data", url, "--model-dir", str(tmp_path / "whole"), *args], env)
        assert whole.proc.returncode == 0, whole

        cut, cut_log = tmp_path / "cut", tmp_path / "cut-reads.log"
        env_cut = {**env, "TFPIPES_READ_LOG": str(cut_log)}
        run = Run(["train", "--data", url, "--model-dir", str(cut), *args], env_cut)
        try:
            # the outage: once the run has streamed 20 shards (past step 40 or so)
            while run.proc.poll() is None and len(reads_or_none(cut_log)) < 20:
                time.sleep(0.01)
            server.stop()
            code = run.wait(120)
        finally:
            run.stop()
        err = [x for x in run.err if "error:" in x]
        assert code == EXIT_RETRYABLE, run
        assert len(err) == 1 and "object storage unreachable" in err[0], run
        assert "run again to resume from" in err[0] and "ckpt-" in err[0], err
        assert not any("Traceback" in x for x in run.err)

        server.start()
        wait_for_objects(url, server)
        again = train(["train", "--data", url, "--model-dir", str(cut), *args], env)
        assert again.proc.returncode == 0, again
        assert any(x.startswith("resumed from") for x in again.out + again.err), again
    a, b = losses(tmp_path / "whole"), losses(cut)
    resumed = [s for s in b if s > 20]  # the cut run checkpointed at step 20 or later
    assert resumed and all(abs(a[s] - b[s]) < 1e-6 for s in resumed), (a, b)
    ma = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    mb = json.loads((cut / "metrics.json").read_text())
    assert abs(ma["loss"] - mb["loss"]) < 1e-6 and ma["accuracy"] == mb["accuracy"], (ma, mb)


def ps_task(cluster: dict, task: str, index: int, args: list[str], env: dict) -> Run:
    """One task of a parameter-server job, started by hand (as a TFJob's pod would be): so
    that one of them can be restarted alone."""
    tf_config = json.dumps({"cluster": cluster, "task": {"type": task, "index": index}})
    return Run(["train", *args], {**env, "TF_CONFIG": tf_config})


@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_parameter_server_chief_restarted_alone_after_an_outage_resumes(
    data, tmp_path, monkeypatch
):
    """The storage server stops while a parameter-server job streams: the chief exits 138.
    The Training Operator restarts the chief's pod alone (its restart policy on exit codes):
    the workers, their shard caches and what those fetched ahead for the old chief's pipelines
    stay. The new chief's pipelines start again from each worker's first shard: the caches
    serve them (no old error, no shard left unfetched) and the job resumes and completes."""
    from tests.test_distributed import free_port
    from tfpipes import storage

    with FakeGcsServer(root=tmp_path / "gcs") as server:
        point_tfpipes_at(server, monkeypatch)
        url = f"gs://{server.create_bucket()}/d"
        storage.publish_dir(str(data), url)
        log = tmp_path / "reads.log"
        env = env_for(server.url, tmp_path, log, cache_only=True)
        caches = tmp_path / "cache"
        cluster = {
            "chief": [f"127.0.0.1:{free_port()}"],
            "worker": [f"127.0.0.1:{free_port()}" for _ in range(2)],
            "ps": [f"127.0.0.1:{free_port()}"],
        }
        args = ["--data", url, "--model-dir", str(tmp_path / "m"), "--batch-size", "32"]
        args += ["--log-every", "20", "--checkpoint-every", "20", "--steps-per-loop", "5"]
        args += ["--shuffle-buffer", "64"]
        serving = [ps_task(cluster, "ps", 0, args, env)]
        serving += [ps_task(cluster, "worker", i, args, env) for i in (0, 1)]
        try:
            first = ps_task(cluster, "chief", 0, [*args, "--train-steps", "2000"], env)
            try:
                deadline = time.monotonic() + 200
                while first.proc.poll() is None and time.monotonic() < deadline:
                    if any(line.startswith("step 60/") for line in first.out + first.err):
                        break
                    time.sleep(0.05)
                server.stop()
                assert first.wait(120) == EXIT_RETRYABLE, first
            finally:
                first.stop()
            err = [x for x in first.err if x.startswith("tfpipes train: error:")]
            assert len(err) == 1 and "object storage unreachable" in err[0], first

            server.start()
            wait_for_objects(url, server)
            log.unlink()
            second = ps_task(cluster, "chief", 0, [*args, "--train-steps", "200"], env)
            try:
                code = second.wait(200)
            finally:
                second.stop()
            assert code == 0, (second, *[s for r in serving for s in r.stamped[-15:]])
            resumed = [x for x in second.out + second.err if x.startswith("resumed from")]
            assert resumed and "ckpt-" in resumed[0], second
        finally:
            for task in serving:
                task.stop()
    train_keys = [s["path"] for s in shards(data, "train")]
    got = reads(log)
    for i in (0, 1):  # the new chief's steps ran on both workers, each on its own shards
        read = set(got[f"worker:{i}"])
        assert read and read <= set(train_keys[i::2]), (i, sorted(read))
    assert not [p for p in caches.rglob("*") if p.is_file()], sorted(caches.rglob("*"))
