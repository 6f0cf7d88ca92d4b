"""preprocess at scale: any number of workers writes the same output; memory stays bounded."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfpipes import manifest
from tfpipes.errors import UserError
from tfpipes.preprocess import PreprocessConfig, preprocess, statistics
from tfpipes.sample_data import write_float_csv

pytestmark = pytest.mark.timeout(300)


def _mixed_csv(path, rows: int, seed: int = 0, bad_every: int = 0) -> None:
    """Floats, integers of every varint width, quoted strings with commas, quotes and newlines,
    a string label; with ``bad_every``, a malformed row every so often."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    count = rng.integers(-(2**40), 2**40, size=rows) >> rng.integers(0, 40, size=rows)
    words = np.array(["plain", '"a, b"', '"say ""hi"""', '"two\nlines"', "", "é✓"])
    note = words[rng.integers(0, len(words), size=rows)]
    label = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, size=rows)]
    lines = [
        f"{a:.6g},{b:.6g},{c:.6g},{k},{t},{lab}"
        for (a, b, c), k, t, lab in zip(x.tolist(), count.tolist(), note.tolist(), label)
    ]
    if bad_every:  # after the first blocks, whose rows decide the column types
        for i in range(rows // 5, rows, bad_every):
            lines[i] = ["1,2", "1,x,3,4,plain,cat", "1,nan,3,4,plain,dog", "1,2,3,4,x,"][i % 4]
    with open(path, "w", encoding="utf-8") as f:
        f.write("x1,x2,x3,count,note,label\n" + "\n".join(lines) + "\n")


def _files(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            data = open(p, "rb").read()
            if n == manifest.MANIFEST:  # the creation time differs, nothing else
                data = b"\n".join(ln for ln in data.splitlines() if b'"created"' not in ln)
            out[os.path.relpath(p, root)] = data
    return out


def test_parallel_output_equals_serial_output(tmp_path):
    src = tmp_path / "mixed.csv"
    _mixed_csv(src, 60_000, bad_every=480)  # 100 bad rows
    results = {}
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        cfg = PreprocessConfig(
            str(src),
            str(out),
            "label",
            num_shards=5,
            block_size=200_000,  # ~20 blocks
            workers=workers,
            on_bad_row="skip",
            progress=False,
        )
        results[workers] = (preprocess(cfg), _files(out))
    r1, files1 = results[1]
    assert r1.workers == 1 and results[3][0].workers == 3
    assert r1.skipped_rows == 100 and r1.rows == 60_000 - 100
    for workers in (2, 3):
        r, files = results[workers]
        assert (r.rows, r.train_rows, r.eval_rows, r.skipped_rows) == (
            r1.rows,
            r1.train_rows,
            r1.eval_rows,
            r1.skipped_rows,
        )
        assert files.keys() == files1.keys()
        assert all(files[k] == files1[k] for k in files1), [
            k for k in files1 if files[k] != files1[k]
        ]
    m = manifest.verify_dataset(str(tmp_path / "w2"))
    train = [s.rows for s in m.shards if s.split == "train"]
    assert max(train) - min(train) <= 1  # balanced across blocks too


def test_gzip_shards_read_by_tensorflow(tmp_path):
    import tensorflow as tf

    from tfpipes.records import read_row_records
    from tfpipes.schema import load_schema

    src = tmp_path / "mixed.csv"
    _mixed_csv(src, 20_000, seed=1)
    runs = {}
    for comp in ("", "GZIP"):
        out = tmp_path / f"out{comp}"
        cfg = PreprocessConfig(
            str(src), str(out), "label", num_shards=3, block_size=100_000, workers=2,
            compression=comp, progress=False,
        )  # fmt: skip
        preprocess(cfg)
        m = manifest.verify_dataset(str(out))
        schema = load_schema(str(out))
        runs[comp] = [
            r for s in ("train", "eval") for r in read_row_records(str(out), m, schema, s)
        ]
    assert len(runs[""]) == 20_000 and runs["GZIP"] == runs[""]
    ex = tf.train.Example.FromString(runs[""][0])
    assert set(ex.features.feature) == {"x1", "x2", "x3", "count", "note", "label"}


def _run_capped(src, out, cwd: str, cap_bytes: int) -> tuple[int, str]:
    """Run preprocess (2 workers) in a process whose address space is capped at ``cap_bytes``
    (RLIMIT_AS, as ``ulimit -v``); return its exit code and output (its peak resident memory
    in MB and the row count, on success)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))

    code = (
        "import sys\n"
        "from tfpipes.preprocess import PreprocessConfig, preprocess\n"
        "r = preprocess(PreprocessConfig(sys.argv[1], sys.argv[2], 'label', workers=2,"
        " progress=False))\n"
        "print(r.peak_rss_mb, r.rows)\n"
    )
    # glibc gives each thread an arena of address space; two keep RLIMIT_AS about memory
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    p = subprocess.run(
        [sys.executable, "-c", code, str(src), str(out)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=280,
        preexec_fn=limit,
        env=env,
    )
    return p.returncode, p.stdout.strip() + "\n" + p.stderr[-2000:]


def _baseline_vm_bytes() -> int:
    """Address space of a process that has imported what preprocess imports (no data yet)."""
    code = (
        "import tfpipes.preprocess, tfpipes.cli, pyarrow.csv, pyarrow.compute, google_crc32c\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])"
    )
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    return int(out.stdout) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memory_stays_bounded_on_a_large_csv(tmp_path):
    # ~300 MB of CSV (a 3 MB block written 100 times) through a process whose address space
    # is capped at what the libraries take plus 256 MB; its resident memory must stay far
    # below the file's size, and where it is with under a third of the input. The smaller
    # input must already fill every bounded buffer: the statistics sample grows to twice
    # SAMPLE_VALUES rows before it is pruned, so below that a flat peak would still rise.
    base = tmp_path / "base.csv"
    write_float_csv(str(base), 16_000, seed=2)  # ~3 MB: 20 float features, an int label
    header, body = base.read_bytes().split(b"\n", 1)
    medium_times = 30
    assert 16_000 * medium_times > 2 * statistics.SAMPLE_VALUES
    for name, times in (("medium.csv", medium_times), ("big.csv", 100)):
        with open(tmp_path / name, "wb") as f:
            f.write(header + b"\n")
            for _ in range(times):
                f.write(body)
    size_mb = os.path.getsize(tmp_path / "big.csv") >> 20
    assert size_mb >= 250
    cap = _baseline_vm_bytes() + (256 << 20)
    peaks = {}
    for name in ("medium", "big"):
        code, out = _run_capped(tmp_path / f"{name}.csv", tmp_path / name, str(tmp_path), cap)
        assert code == 0, out
        peaks[name] = int(out.split()[0])
    assert peaks["big"] < 250 and peaks["big"] < size_mb / 1.2, (peaks, size_mb)
    assert peaks["big"] < peaks["medium"] + 40, peaks  # does not grow with the input
    m = manifest.verify_dataset(str(tmp_path / "big"))
    assert m.rows["train"] + m.rows["eval"] == 1_600_000


_CELL = st.sampled_from(["1", "-7", "2.5", "1e3", "x", "", "nan", '"a,b"', '"q\nr"', '""""', "é"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(_CELL, min_size=3, max_size=4), min_size=1, max_size=60),
    st.integers(8, 200),
    st.integers(2, 4),
    st.sampled_from(["fail", "skip"]),
)
def test_any_number_of_workers_gives_the_serial_result(rows, block, workers, mode):
    """Whatever the rows (good or bad) and block boundaries: the same bytes, or the same
    error, with one worker and with several."""
    text = "a,b,y\n" + "\n".join(",".join(r) for r in rows) + "\n"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.csv")
        with open(src, "w", encoding="utf-8") as f:
            f.write(text)
        outcomes = []
        for w in (1, workers):
            out = os.path.join(d, f"w{w}")
            cfg = PreprocessConfig(
                src, out, "y", num_shards=3, block_size=block, workers=w, on_bad_row=mode,
                progress=False,
            )  # fmt: skip
            try:
                r = preprocess(cfg)
                outcomes.append((r.rows, r.skipped_rows, _files(out)))
            except UserError as e:
                outcomes.append(str(e).replace(f"/w{w}", "/w"))
        assert outcomes[0] == outcomes[1]
