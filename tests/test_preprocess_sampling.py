"""The sampled first pass (issue 11's benchmark): type inference reads the head of every block
and the tail of the last one; where the rows it skipped decide otherwise, the whole input is
read and the data set written with the whole input's plan. Every output here is compared byte
for byte with a run whose first pass reads every whole block."""

import filecmp
import json
import os

import pytest

from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig, inference, pipeline, preprocess

BLOCK = 16 << 10  # small blocks, so a few thousand rows span many sampled blocks
HEAD = 2 << 10


def _run(tmp_path, src, name, monkeypatch, sample_bytes, **kw):
    monkeypatch.setattr(pipeline, "SAMPLE_BYTES", sample_bytes)
    out = tmp_path / name
    cfg = PreprocessConfig(str(src), str(out), "y", workers=2, block_size=BLOCK, **kw)
    return preprocess(cfg), out


def _same_output(a, b) -> None:
    for split in ("train", "eval"):
        names = sorted(os.listdir(a / split))
        assert names == sorted(os.listdir(b / split))
        _, mismatch, errors = filecmp.cmpfiles(a / split, b / split, names, shallow=False)
        assert not mismatch and not errors, mismatch
    for f in ("schema.json", "stats.json"):
        assert (a / f).read_text() == (b / f).read_text(), f


def _write(path, rows) -> None:
    path.write_text("a,b,c,y\n" + "".join(f"{a},{b},{c},{y}\n" for a, b, c, y in rows))


def _spy_scans(monkeypatch) -> list:
    seen = []
    real = pipeline._scan

    def scan(cfg, files, header, workers, sample):
        seen.append(sample)
        return real(cfg, files, header, workers, sample)

    monkeypatch.setattr(pipeline, "_scan", scan)
    return seen


def test_clean_input_is_sampled_once_and_matches_the_whole_pass(tmp_path, monkeypatch):
    src = tmp_path / "d.csv"
    _write(src, [(i, i * 0.5, f"w{i % 7}", i % 3) for i in range(6000)])
    scans = _spy_scans(monkeypatch)
    r1, a = _run(tmp_path, src, "a", monkeypatch, HEAD)
    assert scans == [True]  # nothing the sample missed: no second look
    r2, b = _run(tmp_path, src, "b", monkeypatch, 0)
    assert r1.rows == r2.rows == 6000
    _same_output(a, b)


def test_a_float_the_sample_missed_makes_the_column_float32_as_the_whole_pass_does(
    tmp_path, monkeypatch
):
    rows = [(i, i, f"w{i % 7}", i % 3) for i in range(6000)]
    rows[3000] = (3000, 2.5, "w1", 0)  # mid-block: in no block's head
    src = tmp_path / "d.csv"
    _write(src, rows)
    block = next(iter(pipeline.open_input(str(src), BLOCK).blocks()))
    assert inference.block_head(block, HEAD) is not None  # the sample really is partial
    scans = _spy_scans(monkeypatch)
    r1, a = _run(tmp_path, src, "a", monkeypatch, HEAD)
    assert scans == [True, False]  # the bad cell sent it to the whole input
    assert {f.name: f.dtype for f in r1.schema.features}["b"] == "float32"
    _, b = _run(tmp_path, src, "b", monkeypatch, 0)
    _same_output(a, b)


def test_a_column_empty_in_every_sample_gets_the_whole_inputs_type(tmp_path, monkeypatch):
    rows = [(i, "", f"w{i % 7}", i % 3) for i in range(6000)]
    for i in range(3000, 3050):
        rows[i] = (i, i * 1.5, "w2", 1)  # values only where no sample looks
    src = tmp_path / "d.csv"
    _write(src, rows)
    r1, a = _run(tmp_path, src, "a", monkeypatch, HEAD)
    feats = {f.name: (f.dtype, f.kind) for f in r1.schema.features}
    assert feats["b"] == ("float32", "numeric")
    _, b = _run(tmp_path, src, "b", monkeypatch, 0)
    _same_output(a, b)
    assert json.loads((a / "stats.json").read_text())["features"]["b"]["count"] == 50


def test_more_label_values_than_the_sample_saw_give_the_whole_inputs_task(tmp_path, monkeypatch):
    rows = [(i, i * 0.5, "w", i % 3) for i in range(6000)]
    for i in range(3000, 3200):
        rows[i] = (i, 0.5, "w", 100 + i)  # 200 more integer labels: a regression target
    src = tmp_path / "d.csv"
    _write(src, rows)
    r1, a = _run(tmp_path, src, "a", monkeypatch, HEAD)
    assert r1.schema.task == "regression"
    _, b = _run(tmp_path, src, "b", monkeypatch, 0)
    _same_output(a, b)


def test_text_the_whole_input_rejects_is_still_the_same_one_line_error(tmp_path, monkeypatch):
    rows = [(i, i * 0.5, "w", i % 3) for i in range(6000)]
    rows[4000] = (4000, "word", "w", 1)  # after thousands of numbers: an error, not a string
    src = tmp_path / "d.csv"
    _write(src, rows)
    with pytest.raises(UserError) as e1:
        _run(tmp_path, src, "a", monkeypatch, HEAD)
    with pytest.raises(UserError) as e2:
        _run(tmp_path, src, "b", monkeypatch, 0)
    assert str(e1.value) == str(e2.value)
    assert str(e1.value).endswith("d.csv:4002: column 'b': 'word' is not a number")
    assert not (tmp_path / "a").exists()


def test_statistics_sample_is_the_same_when_the_row_count_comes_late(tmp_path, monkeypatch):
    """More rows than the statistics sample: quantiles from the same rows either way."""
    from tfpipes.preprocess import statistics

    monkeypatch.setattr(statistics, "SAMPLE_VALUES", 500)
    src = tmp_path / "d.csv"
    _write(src, [(i, (i * 37) % 1000 / 7, f"w{i % 5}", i % 3) for i in range(6000)])
    _, a = _run(tmp_path, src, "a", monkeypatch, HEAD, on_bad_row="skip")
    _, b = _run(tmp_path, src, "b", monkeypatch, 0, on_bad_row="skip")
    _same_output(a, b)
    stats = json.loads((a / "stats.json").read_text())["features"]["b"]
    assert sum(stats["histogram"]["counts"]) == 6000


def test_statistics_sample_is_the_rows_under_the_final_threshold(tmp_path, monkeypatch):
    """With missing cells, the kept values are exactly the present ones of the rows whose
    hash is under the threshold of the final row count (computed here from the blocks)."""
    import numpy as np

    from tfpipes.preprocess import statistics

    monkeypatch.setattr(statistics, "SAMPLE_VALUES", 700)
    rng = np.random.default_rng(3)
    vals = rng.normal(size=6000).round(4)
    rows = [(i, "" if i % 4 == 0 else vals[i], "w", i % 3) for i in range(6000)]
    src = tmp_path / "d.csv"
    _write(src, rows)
    _, a = _run(tmp_path, src, "a", monkeypatch, HEAD)
    limit = np.uint64(statistics.sample_threshold(6000))
    expect, i = [], 0
    for block in pipeline.open_input(str(src), BLOCK).blocks():
        n = block.data.count(b"\n")
        keep = statistics.row_hashes(block, n) < limit
        expect += [float(np.float32(vals[j])) for j in range(i, i + n) if keep[j - i] and j % 4]
        i += n
    assert i == 6000 and 0 < len(expect) < 4500
    b = json.loads((a / "stats.json").read_text())["features"]["b"]
    assert b["median"] == float(np.quantile(np.array(expect), 0.5))
    assert (
        b["quantiles"][1:-1] == [float(x) for x in np.quantile(expect, statistics.QUANTILES)][1:-1]
    )


def test_row_sample_keeps_exactly_the_rows_under_the_final_threshold():
    """The fold filters each block with the threshold of the rows so far (never below the
    final one) and prunes only past a bound; the values asked for at the end are those of
    the rows under the final threshold, in input order, missing cells left out."""
    import numpy as np

    from tfpipes.preprocess import statistics

    rng = np.random.default_rng(5)
    sample = statistics._RowSample()
    rows_so_far, every = 0, []
    for _ in range(60):
        n = 6_000
        rows_so_far += n
        h = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2)
        v = rng.normal(size=n).astype(np.float32)
        on = rng.random(n) > 0.2
        every.append((h, v, on))
        limit = statistics.sample_threshold(rows_so_far)
        keep = np.ones(n, bool) if limit is None else h < np.uint64(limit)
        sample.add(h[keep], {"x": (v[on & keep], on[keep])}, limit)
    final = np.uint64(statistics.sample_threshold(rows_so_far))
    expect = np.concatenate([v[on & (h < final)] for h, v, on in every]).astype(np.float64)
    assert sample.kept > 0
    assert np.array_equal(sample.values("x", int(final)), expect)
    assert len(expect) < len(np.concatenate([v[on] for _, v, on in every])) / 2


def test_a_long_cell_makes_a_column_text_without_copying_it_to_check_for_words():
    import pyarrow as pa

    assert inference._family(pa.array([" True ", "no", None])) == "boolean"
    padded = " " * inference.MAX_BOOL_CELL + "true"  # longer than any boolean word with blanks
    assert inference._family(pa.array(["true", padded])) == "string"
    # A huge cell: the verdict comes from its length, not from trimmed and lowered copies.
    huge = pa.array(["false", "y" * (32 << 20)])
    default = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default)  # counts only what _family allocates
    pa.set_memory_pool(pool)
    try:
        assert inference._family(huge) == "string"
    finally:
        pa.set_memory_pool(default)
    assert pool.max_memory() < (1 << 20)


def test_a_column_with_a_very_long_cell_is_profiled_as_text_and_the_others_as_usual():
    from tfpipes.preprocess.blocks import Block

    plan = inference.ScanPlan(("a", "b", "label"), ("",), "label")
    digits = "7" * (inference.LONG_CELL + 1)  # a number, but too long to be taken for one
    data = f"1,{digits},0\n2,,1\n".encode()
    block = Block("d.csv", 2, data, ",")
    assert inference._long_text_columns(plan, block) is not None
    prof = inference.profile_block(plan, block)
    assert prof.rows == 2 and not prof.failed
    assert prof.columns["a"][0] == "int" and prof.columns["b"][0] == "string"
    assert prof.columns["b"][1] == 1  # present: the long cell
    # Long blocks of ordinary rows are inferred by Arrow alone.
    rows = b"".join(b"%d,%d,0\n" % (i, i) for i in range(200_000))
    assert len(rows) > inference.LONG_CELL
    assert inference._long_text_columns(plan, Block("d.csv", 2, rows, ",")) is None
