"""Preprocess fanned out (plan -> parts -> commit): through kfp.local with N = 1, 3 and 8 the
same rows land in the same splits with the same statistics as single-process preprocess
(N = 1: the same files); sketched statistics agree with one process and lie within their
stated error of the exact figures; a missing or corrupt part fails the commit naming it;
gs:// staging and output on the fake-gcs-server.

(No ``from __future__ import annotations``: kfp reads the test pipeline's annotations.)"""

import collections
import gzip
import json
import os
import random
import warnings

import numpy as np
import pytest

from tests.conftest import run_tfpipes
from tfpipes import manifest, storage
from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig, preprocess, statistics
from tfpipes.preprocess.fanout import partial_name, plan_fanout
from tfpipes.preprocess.fanout_commit import commit_fanout
from tfpipes.preprocess.fanout_part import run_part

BLOCK = 4096  # tiny blocks: a few KB of CSV cut into many parts


def _write_inputs(d, rows: int = 1500, seed: int = 0) -> str:
    """Three plain CSV files (two with quoted fields holding newlines and commas, cut across
    blocks; one without a quote; the plan's scans cut all three) and a gzipped one (a whole-file
    unit), under ``d/in``."""
    rnd = random.Random(seed)
    os.makedirs(os.path.join(d, "in"))

    def lines(n):
        yield "x,n,city,note,label\n"
        for i in range(n):
            note = rnd.choice(["plain", '"two\nlines"', '"a, b"', ""])
            n_ = "" if i % 17 == 0 else str(rnd.randint(0, 40))
            city = rnd.choice(["oslo", "rome", "lima", "pune"])
            yield f"{rnd.gauss(5, 2):.4f},{n_},{city},{note},{rnd.choice('pqr')}\n"

    for name, n in (("a.csv", rows), ("b.csv", rows // 3)):
        with open(os.path.join(d, "in", name), "w", newline="") as f:
            f.writelines(lines(n))
    with gzip.open(os.path.join(d, "in", "c.csv.gz"), "wt", newline="") as f:
        f.writelines(lines(rows // 5))
    # without quotes, \r\n line ends
    plain = (x.replace('"two\nlines"', "two").replace('"a, b"', "ab") for x in lines(rows // 2))
    with open(os.path.join(d, "in", "d.csv"), "w", newline="") as f:
        f.writelines(x.replace("\n", "\r\n") for x in plain)
    return os.path.join(d, "in")


def _dataset(root: str):
    """(manifest, {split: Counter of per-row records}, stats.json text, schema.json text); the
    block layout's blocks end where each part's chunks end, so rows are compared, not blocks."""
    from tfpipes.records import dataset_row_records

    m = manifest.verify_dataset(root)  # every file there with its size and CRC32C
    rows = {s: collections.Counter(dataset_row_records(root, s)) for s in ("train", "eval")}
    read = lambda name: open(os.path.join(root, name)).read()  # noqa: E731
    return m, rows, read("stats.json"), read("schema.json")


def _single(src: str, out: str, **kw):
    cfg = PreprocessConfig(src, out, "label", num_shards=4, block_size=BLOCK, **kw)
    return preprocess(cfg)


def _fanout(src: str, out: str, parts: int, staging: str = "", **kw):
    cfg = PreprocessConfig(src, out, "label", num_shards=4, block_size=BLOCK, **kw)
    fp = plan_fanout(cfg, parts, staging)
    for i in range(parts):
        run_part(fp.staging, i)
    return fp, commit_fanout(fp.staging)


def _data_steps_pipeline():
    """A pipeline of the training pipelines' data steps alone: the threshold, both branches."""
    from kfp import dsl
    from kfp.dsl import Dataset
    from tfpipes_pipelines.training import PipelineOptions, data_steps

    @dsl.pipeline(name="data-steps")
    def data_only(source: str, label: str, fanout_bytes: int, fanout_parts: int) -> Dataset:
        values = {"source": source, "label": label, "eval_fraction": 0.2, "num_shards": 4}
        values |= {"cache_index": "", "fanout_bytes": fanout_bytes, "fanout_parts": fanout_parts}
        return data_steps(PipelineOptions(), values).outputs["examples"]

    return data_only


def _check_same(out: str, single, n: int) -> None:
    m, rows, stats, schema = _dataset(out)
    assert rows == single[1], f"{n} parts: other rows per split"
    assert stats == single[2], f"{n} parts: other statistics"
    assert schema == single[3]
    assert m.rows == single[0].rows and m.source_hash == single[0].source_hash
    assert len(m.shard_paths("train")) == n * -(-4 // n)
    assert [n for n in os.listdir(os.path.dirname(out)) if "examples" in n] == ["examples"]
    if n == 1:  # row for row: the same files, byte for byte
        assert m.shards == single[0].shards and m.files == single[0].files


@pytest.mark.slow
def test_kfp_local_fanout_1_3_8_parts_equal_single_process(tmp_path):
    from kfp import local
    from tfpipes_pipelines.fanout import fanout_preprocess

    src = _write_inputs(tmp_path)
    _single(src, str(tmp_path / "single"))
    single = _dataset(str(tmp_path / "single"))
    preprocess(PreprocessConfig(src, str(tmp_path / "s4m"), "label", num_shards=4))
    single_4m = _dataset(str(tmp_path / "s4m"))  # the pipelines' block size (4 MiB)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "root"),
        raise_on_error=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # base image without "python"
        for n in (1, 8):
            task = fanout_preprocess(
                source=src, label="label", parts=n, num_shards=4, block_size=BLOCK
            )
            _check_same(task.output.path, single, n)
        # The training pipelines' data steps: above the threshold the fan-out (3 parts) ...
        data_only = _data_steps_pipeline()
        task = data_only(source=src, label="label", fanout_bytes=0, fanout_parts=3)
        _check_same(task.output.path, single_4m, 3)
        assert "commit-op" in task.output.path
        # ... at or below it, one preprocess task
        task = data_only(source=src, label="label", fanout_bytes=1 << 30, fanout_parts=3)
        _check_same(task.output.path, single_4m, 1)
        assert "preprocess-op" in task.output.path
    plans = list((tmp_path / "root").rglob("plan-op"))
    assert len(plans) == 3  # 1 and 8 parts, and the data steps' fan-out
    # the scans ran in parallel tasks and cut every range (quoted line ends included: a.csv
    # and b.csv); with the data steps' 4 MiB blocks no file is more than a block: one empty
    # range
    scans = [json.loads(p.read_text()) for p in (tmp_path / "root").rglob("range-*.json")]
    why = collections.Counter("cut" if r["fast"] else r["why"].split(" (")[0] for r in scans)
    assert why["cut"] >= 6 and len(why) == 2, why
    assert any(len(r["variants"]) == 2 for r in scans if r["fast"])  # started in a quote?
    assert why["no plain CSV file of more than one block"] == 1, why
    assert not [p for p in plans if (p / "staging").exists()]  # each commit removed its own


def test_training_pipeline_compiles_the_fanout_branch(tmp_path):
    import yaml
    from tfpipes_pipelines.training import compile_pipeline

    spec = yaml.safe_load(open(compile_pipeline(str(tmp_path / "p.yaml"))))
    assert spec["root"]["inputDefinitions"]["parameters"]["fanout_bytes"]["defaultValue"] == 2**30
    comps = spec["components"]
    (branch,) = [c for name, c in comps.items() if name.startswith("comp-condition-branches")]
    conds = [t["triggerPolicy"]["condition"] for t in branch["dag"]["tasks"].values()]
    assert any("input-bytes-op-Output" in c and "fanout_bytes" in c and ">" in c for c in conds)
    loops = [c for name, c in comps.items() if name.startswith("comp-for-loop")]
    (part,) = [c["dag"]["tasks"]["part-op"] for c in loops if "part-op" in c["dag"]["tasks"]]
    assert part["retryPolicy"]["maxRetryCount"] == 2  # a failed part is retried by KFP
    (scan,) = [c["dag"]["tasks"]["scan-op"] for c in loops if "scan-op" in c["dag"]["tasks"]]
    assert scan["retryPolicy"]["maxRetryCount"] == 2
    (large,) = [c for c in comps.values() if "commit-op" in c.get("dag", {}).get("tasks", {})]
    tasks = large["dag"]["tasks"]
    for consumer, producer, name in (
        ("commit-op", "plan-op", "done"),
        ("plan-op", "scan-list-op", "scanned"),
    ):
        inputs = tasks[consumer]["inputs"]
        loop_task = inputs["parameters"][name]["taskOutputParameter"]["producerTask"]
        assert loop_task.startswith("for-loop")  # collected from the loop's tasks
        assert tasks[loop_task]["parameterIterator"]["items"] == {
            "inputParameter": f"pipelinechannel--{producer}-Output"
        }


def test_sketched_statistics_merge_as_one_process_within_their_error(tmp_path, monkeypatch):
    # Shrink the sample, the exact-count limit and the distinct-count sketch so a few
    # thousand rows exercise the sampled quantiles, truncated counts and the KMV estimate.
    monkeypatch.setattr(statistics, "SAMPLE_VALUES", 400)
    monkeypatch.setattr(statistics, "EXACT_UNIQUE", 60)
    monkeypatch.setattr(statistics, "_KMV", 256)
    rnd = random.Random(5)
    src = tmp_path / "in.csv"
    xs = [rnd.lognormvariate(0, 1) for _ in range(4000)]
    ids = [f"u{rnd.randint(0, 2999)}" for _ in range(4000)]
    with open(src, "w") as f:
        f.write("x,user,label\n")
        f.writelines(f"{x:.5f},{u},{rnd.randint(0, 1)}\n" for x, u in zip(xs, ids))
    _single(str(src), str(tmp_path / "single"))
    one = json.load(open(tmp_path / "single" / "stats.json"))
    for n in (3, 8):
        _fanout(str(src), str(tmp_path / f"f{n}"), n)
        many = json.load(open(tmp_path / f"f{n}" / "stats.json"))
        fx, ox = many["features"]["x"], one["features"]["x"]
        for key in ("count", "missing", "min", "max", "mean", "std"):  # exact figures
            assert fx[key] == ox[key], key
        # sampled figures: the same rows sampled whatever N, so the same values
        assert fx["quantiles"] == ox["quantiles"] and fx["median"] == ox["median"]
        assert fx["histogram"] == ox["histogram"]
        fu, ou = many["features"]["user"], one["features"]["user"]
        assert fu["unique"] == ou["unique"] and fu.get("unique_approximate") is True
        assert fu["count"] == ou["count"] == 4000
    # ... and within the stated error of the exact figures: quantile ranks within the DKW
    # bound of the sample (99 %), distinct count within 3 standard errors of the KMV sketch
    exact = np.sort(np.array(xs, dtype=np.float32).astype(np.float64))
    sample_n = 400
    eps = np.sqrt(np.log(2 / 0.01) / (2 * sample_n))
    for q, v in zip(statistics.QUANTILES, fx["quantiles"]):
        rank = np.searchsorted(exact, v, side="right") / len(exact)
        assert abs(rank - q) <= eps + 1 / len(exact), (q, v, rank)
    true_unique = len(set(ids))
    assert abs(fu["unique"] - true_unique) <= 3 * true_unique / np.sqrt(256 - 2)
    counts = collections.Counter(ids)
    for value, c in fu["top"]:  # past the exact limit, counts are lower bounds
        assert c <= counts[value]


def test_missing_or_corrupt_part_fails_the_commit_naming_it(tmp_path):
    src = _write_inputs(tmp_path, rows=600)
    cfg = PreprocessConfig(src, str(tmp_path / "out"), "label", num_shards=2, block_size=BLOCK)
    fp = plan_fanout(cfg, 3)
    for i in range(3):
        run_part(fp.staging, i)
    os.remove(os.path.join(fp.staging, partial_name(1)))
    p = run_tfpipes("preprocess-commit", "--staging", fp.staging, cwd=str(tmp_path))
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "part 1 of 3: not done" in err[0] and "--part 1" in err[0], err
    assert not (tmp_path / "out").exists()
    run_part(fp.staging, 1)  # the retried part rewrites its own files
    shard = os.path.join(fp.staging, fp.shard_names(2, "train")[0])
    with open(shard, "ab") as f:
        f.write(b"x")
    with pytest.raises(
        UserError,
        match=r"part 2 of 3: its shard .*train/part-00002-of-00003.tfrecord does not match",
    ):
        commit_fanout(fp.staging)
    os.remove(shard)
    with pytest.raises(UserError, match="part 2 of 3: its shard .* is missing"):
        commit_fanout(fp.staging)
    with open(os.path.join(fp.staging, partial_name(0)), "r+b") as f:
        f.truncate(100)
    with pytest.raises(UserError, match="part 0 of 3: .* is corrupt"):
        commit_fanout(fp.staging)
    run_part(fp.staging, 0)
    run_part(fp.staging, 2)
    r = commit_fanout(fp.staging)
    assert r.rows == manifest.read_manifest(str(tmp_path / "out")).rows["train"] + r.eval_rows
    assert not os.path.exists(fp.staging)


def _same_size_edit(path: str, at: int) -> int:
    """Change the first digit after a '.' at or past byte ``at`` of ``path`` (same size);
    returns its offset."""
    data = bytearray(open(path, "rb").read())
    i = data.index(b".", at) + 1
    data[i] = ord("7") if data[i] != ord("7") else ord("3")
    with open(path, "wb") as f:
        f.write(data)
    return i


def test_a_part_refuses_an_input_changed_since_the_plan(tmp_path):
    """Same size, other bytes (a file rewritten in place, another gzip of the same rows): the
    part that reads them fails naming the file, before it hands on a changed block, and
    publishes nothing; the other parts run; put back, the same plan commits."""
    src = _write_inputs(tmp_path, rows=600)
    cfg = PreprocessConfig(src, str(tmp_path / "out"), "label", num_shards=2, block_size=BLOCK)
    fp = plan_fanout(cfg, 3)
    a, gz = os.path.join(src, "a.csv"), os.path.join(src, "c.csv.gz")
    originals = {p: open(p, "rb").read() for p in (a, gz)}
    at = _same_size_edit(a, os.path.getsize(a) // 2)

    def reads(part: int, path: str) -> bool:
        for r in fp.parts[part]["ranges"]:
            if r["path"] == path and (
                r["whole"] or r["offset"] <= at < r["offset"] + sum(r["lengths"])
            ):
                return True
        return False

    hit = [i for i in range(3) if reads(i, a)]
    assert len(hit) == 1, fp.parts
    p = run_tfpipes(
        "preprocess-part", "--staging", fp.staging, "--part", str(hit[0]), cwd=str(tmp_path)
    )
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "a.csv: bytes " in err[0], err
    assert "differ from the planned ones (CRC32C): the file changed since the plan" in err[0]
    assert not os.path.exists(os.path.join(fp.staging, partial_name(hit[0])))
    assert not any(
        os.path.exists(os.path.join(fp.staging, n)) for n in fp.shard_names(hit[0], "train")
    )
    open(a, "wb").write(originals[a])

    # Another gzip of the same rows: another mtime in its header (bytes 4-7), same size.
    changed = bytearray(originals[gz])
    changed[4:8] = (int.from_bytes(changed[4:8], "little") ^ 0xFFFF).to_bytes(4, "little")
    open(gz, "wb").write(changed)
    assert gzip.decompress(changed) == gzip.decompress(originals[gz])
    (whole,) = [i for i in range(3) if reads(i, gz)]
    with pytest.raises(UserError, match=r"c\.csv\.gz: its bytes differ from the planned ones"):
        run_part(fp.staging, whole)
    assert not os.path.exists(os.path.join(fp.staging, partial_name(whole)))
    open(gz, "wb").write(originals[gz])

    for i in range(3):
        run_part(fp.staging, i)
    r = commit_fanout(fp.staging)
    assert r.rows == _single(src, str(tmp_path / "single")).rows


def test_a_plan_from_before_block_checksums_still_runs(tmp_path):
    """A plan written before the blocks' CRC32Cs were kept (no "crcs"): its parts run, with
    the size check only, and commit the same data set."""
    src = _write_inputs(tmp_path, rows=300)
    cfg = PreprocessConfig(src, str(tmp_path / "out"), "label", num_shards=4, block_size=BLOCK)
    fp = plan_fanout(cfg, 2)
    path = os.path.join(fp.staging, "_fanout", "plan.json")
    doc = json.load(open(path))
    ranges = [r for part in doc["parts"] for r in part["ranges"] if not r["whole"]]
    assert ranges and all(len(r["crcs"]) == len(r["lengths"]) for r in ranges)
    for r in ranges:
        del r["crcs"]
    open(path, "w").write(json.dumps(doc))
    for i in range(2):
        run_part(fp.staging, i)
    commit_fanout(fp.staging)
    single = _single(src, str(tmp_path / "single"))
    assert _dataset(str(tmp_path / "out"))[1:] == _dataset(str(tmp_path / "single"))[1:]
    assert single.rows > 0


def test_a_part_refuses_a_parquet_file_changed_since_the_plan(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "in"
    src.mkdir()
    x = np.arange(500, dtype=np.float64) + 0.25
    table = pa.table({"x": x, "label": np.arange(500) % 3})
    pq.write_table(table, src / "a.parquet", compression="NONE")
    cfg = PreprocessConfig(str(src), str(tmp_path / "out"), "label", num_shards=2)
    fp = plan_fanout(cfg, 1)
    data = bytearray((src / "a.parquet").read_bytes())
    at = data.index(np.float64(100.25).tobytes())  # one value, rewritten in place
    data[at : at + 8] = np.float64(-7.5).tobytes()
    (src / "a.parquet").write_bytes(data)
    assert pq.read_table(src / "a.parquet").column("x")[100].as_py() == -7.5  # still readable
    with pytest.raises(UserError, match=r"a\.parquet: its bytes differ from the planned ones"):
        run_part(fp.staging, 0)
    assert not os.path.exists(os.path.join(fp.staging, partial_name(0)))


def test_the_commit_deletes_only_what_the_fanout_wrote(tmp_path):
    """An output inside the staging place is refused (removing the staging place would take
    it along); a file of the user's in the staging place outlives the commit."""
    src = _write_inputs(tmp_path, rows=300)
    staging = tmp_path / "staging"
    cfg = PreprocessConfig(src, str(tmp_path / "out"), "label", num_shards=2, block_size=BLOCK)
    fp = plan_fanout(cfg, 2, staging=str(staging))
    for i in range(2):
        run_part(fp.staging, i)
    with pytest.raises(UserError, match="must not contain each other"):
        commit_fanout(fp.staging, output=str(staging / "out"))
    (staging / "train" / "notes.txt").write_text("mine")
    commit_fanout(fp.staging)
    assert (staging / "train" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in staging.rglob("*")) == ["notes.txt", "train"]
    assert manifest.read_manifest(str(tmp_path / "out")).rows["train"] > 0


@pytest.mark.gcs
def test_gcs_staging_and_output_equal_local(gcs_bucket, tmp_path):
    src = _write_inputs(tmp_path, rows=900)
    for name in os.listdir(src):
        storage.write_bytes(f"{gcs_bucket}/in/{name}", open(os.path.join(src, name), "rb").read())
    _single(src, str(tmp_path / "single"))
    out = f"{gcs_bucket}/data/d"
    fp, r = _fanout(f"{gcs_bucket}/in", out, 3)
    assert fp.staging == out + ".fanout"
    assert storage.list_owners(fp.staging) == {}  # the staging objects were removed
    storage.download_dir(out, str(tmp_path / "back"))
    m, rows, stats, schema = _dataset(str(tmp_path / "back"))
    single = _dataset(str(tmp_path / "single"))
    assert rows == single[1] and stats == single[2] and schema == single[3]
    assert m.source_hash == single[0].source_hash
    owners = storage.list_owners(out)
    assert set(owners.values()) == {storage.owner_mark(out)}
    assert set(owners) == {s.path for s in (*m.shards, *m.files)} | {"manifest.json"}
    with pytest.raises(UserError, match="already exists"):
        _fanout(f"{gcs_bucket}/in", out, 2)

    # An object rewritten with the same size after the plan: the part reading it refuses.
    cfg = PreprocessConfig(f"{gcs_bucket}/in", f"{out}2", "label", num_shards=2, block_size=BLOCK)
    fp = plan_fanout(cfg, 1)
    _same_size_edit(os.path.join(src, "b.csv"), 0)
    storage.write_bytes(f"{gcs_bucket}/in/b.csv", open(os.path.join(src, "b.csv"), "rb").read())
    with pytest.raises(UserError, match=r"/in/b\.csv: bytes .* differ from the planned ones"):
        run_part(fp.staging, 0)
    assert not storage.exists(storage.join(fp.staging, partial_name(0)))
