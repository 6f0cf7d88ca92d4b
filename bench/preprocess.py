"""Benchmark: ``tfpipes preprocess`` against a plain Python loop and the bare Arrow parse, on
the same CSV, in one run.

    python bench/preprocess.py                     # 1,000,000 rows x 20 float features + int label
    python bench/preprocess.py --rows 300000 --workers 2 --repeat 3
    python bench/preprocess.py --variant realistic # 10 % missing cells, 5 string columns, a date

Variants: ``float`` (all-float features), ``realistic`` (--features floats, 5 string columns,
one ISO date column, 10 % of the feature cells empty), ``both`` (the default). Each prints
``ours/plain-loop: X`` (the goal is >= 10x on both) and ``ours/parse-bound: X`` (the goal is
>= 0.8 on the float variant); ``ours/parse-bound warm: X`` is the same against a second parse
in the parse's process, whose memory is already mapped: parsing alone, without the first
touch of the table's memory, whose cost differs from machine to machine.

The plain loop is what a script without tfpipes does: ``csv.reader`` over the file, one
``tf.train.Example`` per row, ``tf.io.TFRecordWriter`` into the same number of shards. The
parse bound is ``pyarrow.csv.read_csv`` of the whole file with as many threads as preprocess
has workers, and nothing else (no encoding, no writing). Each of the three runs in its own
process, so its peak memory (``ru_maxrss``; for preprocess, the largest of its processes) is
its own; module imports are left out of every path's time (TensorFlow's for the loop,
Arrow's for the parse and preprocess). ``--repeat`` rounds run the
three paths back to back, so each round's ratios compare runs under about the same load; the
ratio lines are the median of the per-round ratios. Prints rows/s for each (median run), the
ratios, and the load average (other processes on the machine slow all paths).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_mb() -> tuple[int, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return own, children


def run_ours(src: str, out: str, shards: int, workers: int) -> dict:
    # Arrow's modules imported before the clock starts, as for the parse (and TensorFlow for
    # the loop): a fixed start-up cost (~0.1 s), not a cost of reading the file.
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401

    from tfpipes.preprocess import PreprocessConfig, preprocess

    t0 = time.perf_counter()
    r = preprocess(
        PreprocessConfig(src, out, "label", num_shards=shards, workers=workers, progress=False)
    )
    secs = time.perf_counter() - t0
    peak = max(r.peak_rss_mb, *_peak_mb())  # workers report theirs (a fork server starts them)
    return {
        "rows": r.rows,
        "seconds": secs,
        "peak_mb": peak,
        "workers": r.workers,
        "cpu": r.cpu_seconds,
    }


def run_loop(src: str, out: str, shards: int) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # imported before the clock starts

    os.makedirs(out)
    t0, c0 = time.perf_counter(), time.process_time()
    writers = [
        tf.io.TFRecordWriter(os.path.join(out, f"part-{i:05d}.tfrecord")) for i in range(shards)
    ]
    rows = 0
    with open(src, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        label = header.index("label")
        names = [(i, h) for i, h in enumerate(header) if i != label]
        import datetime

        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
        for row in reader:
            # Appending to the map's fields is the fastest plain way (2.5x building Feature
            # objects and passing them in). Missing cells are left out, as preprocess does.
            ex = tf.train.Example()
            fmap = ex.features.feature
            for i, h in names:
                v = row[i]
                if v == "":
                    continue
                if h[0] == "s":
                    fmap[h].bytes_list.value.append(v.encode())
                elif h == "date":
                    d = datetime.datetime.fromisoformat(v).replace(tzinfo=datetime.timezone.utc)
                    fmap[h].int64_list.value.append(int((d - epoch).total_seconds()))
                else:
                    fmap[h].float_list.value.append(float(v))
            fmap["label"].int64_list.value.append(int(row[label]))
            writers[rows % shards].write(ex.SerializeToString())
            rows += 1
    for w in writers:
        w.close()
    secs = time.perf_counter() - t0
    return {
        "rows": rows,
        "seconds": secs,
        "peak_mb": _peak_mb()[0],
        "cpu": time.process_time() - c0,
    }


def run_parse(src: str, threads: int) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    if threads:
        pa.set_cpu_count(threads)
    opts = pcsv.ReadOptions(use_threads=pa.cpu_count() > 1)
    t0, c0 = time.perf_counter(), time.process_time()
    table = pcsv.read_csv(src, read_options=opts)
    out = {
        "rows": table.num_rows,
        "seconds": time.perf_counter() - t0,
        "peak_mb": _peak_mb()[0],
        "cpu": time.process_time() - c0,
        "threads": pa.cpu_count(),
    }
    # Again in the same process, the first table freed: Arrow's allocator reuses its pages, so
    # this read pays for parsing alone, not for the kernel's first touch of its memory
    # (which costs twice as much on some machines as on others).
    del table
    t0 = time.perf_counter()
    pcsv.read_csv(src, read_options=opts)
    out["warm_seconds"] = time.perf_counter() - t0
    return out


def _child(path: str, src: str, out: str, shards: int, workers: int) -> dict:
    """Run one path in a fresh process (its own memory figure) and return what it printed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", path, src, out, str(shards)]
    cmd.append(str(workers))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, cwd=REPO)
    if p.returncode != 0:
        sys.exit(f"{path} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of synthetic CSV")
    ap.add_argument("--features", type=int, default=20, help="float feature columns")
    ap.add_argument("--shards", type=int, default=10, help="shards per split (both paths)")
    ap.add_argument("--workers", type=int, default=0, help="preprocess workers (0: one per core)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each runs all three paths)")
    ap.add_argument("--dir", default="", help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the CSV and outputs")
    ap.add_argument("--variant", choices=["float", "realistic", "both"], default="both")
    ap.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        path, src, out, shards, workers = args._child
        if path == "ours":
            res = run_ours(src, out, int(shards), int(workers))
        elif path == "parse":
            res = run_parse(src, int(workers))
        else:
            res = run_loop(src, out, int(shards))
        print(json.dumps(res))
        return 0

    if args.variant == "both":
        code = 0
        for v in ("float", "realistic"):
            code = code or main([*(argv if argv is not None else sys.argv[1:]), "--variant", v])
        return code
    return _bench(args)


def _bench(args) -> int:
    work = args.dir or tempfile.mkdtemp(prefix="tfpipes-bench-")
    os.makedirs(work, exist_ok=True)
    src = os.path.join(work, f"bench-{args.variant}-{args.rows}x{args.features}.csv")
    writer = "write_float_csv" if args.variant == "float" else "write_realistic_csv"
    try:
        if not os.path.exists(src):
            # In a process of its own: a child forked from a big process inherits its peak RSS.
            t0 = time.perf_counter()
            code = f"import sys; from tfpipes.sample_data import {writer} as w; "
            code += "w(sys.argv[1], int(sys.argv[2]), features=int(sys.argv[3]))"
            subprocess.run(
                [sys.executable, "-c", code, src, str(args.rows), str(args.features)],
                check=True,
                cwd=REPO,
                timeout=3600,
            )
            print(f"wrote {src} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        size_mb = os.path.getsize(src) / 1e6
        load_before = os.getloadavg()
        rounds = []
        for i in range(args.repeat):
            out = os.path.join(work, f"ours-{i}")
            shutil.rmtree(out, ignore_errors=True)
            ours = _child("ours", src, out, args.shards, args.workers)
            out = os.path.join(work, "loop")
            shutil.rmtree(out, ignore_errors=True)
            loop = _child("loop", src, out, args.shards, 0)
            parse = _child("parse", src, "", args.shards, ours["workers"])
            rounds.append({"ours": ours, "loop": loop, "parse": parse})
            print(
                f"round {i + 1}: preprocess {ours['seconds']:.2f} s, plain loop "
                f"{loop['seconds']:.2f} s, Arrow parse {parse['seconds']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
        load_after = os.getloadavg()
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    for r in rounds:
        assert r["ours"]["rows"] == r["loop"]["rows"] == r["parse"]["rows"] == args.rows, r
    med = {k: _median_run([r[k] for r in rounds]) for k in ("ours", "loop", "parse")}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    shape = (
        f"{args.features} float features + int label"
        if args.variant == "float"
        else f"{args.features} float, 5 string, 1 date features (10 % missing) + int label"
    )
    print(
        f"[{args.variant}] {args.rows:,} rows x {shape}; CSV {size_mb:,.0f} MB;"
        f" {cores} cores; {args.repeat} rounds; load average {load_before[0]:.1f} before,"
        f" {load_after[0]:.1f} after"
    )
    print(f"{'path (median run)':<44} {'seconds':>8} {'rows/s':>10} {'CPU s':>7} {'peak RSS':>9}")
    names = {
        "loop": "plain loop (csv + Example + TFRecordWriter)",
        "parse": f"Arrow parse only ({med['parse']['threads']} threads)",
        "ours": f"tfpipes preprocess ({med['ours']['workers']} workers)",
    }
    for k in ("loop", "parse", "ours"):
        r = med[k]
        note = "  (largest process)" if k == "ours" else ""
        print(
            f"{names[k]:<44} {r['seconds']:8.2f} {args.rows / r['seconds']:10,.0f} "
            f"{r['cpu']:7.1f} {r['peak_mb']:6d} MB{note}"
        )
    for k in ("ours", "loop", "parse"):
        print(f"{k} runs (s): " + ", ".join(f"{r[k]['seconds']:.2f}" for r in rounds))
    # Within a round the paths ran back to back, under about the same load.
    vs_loop = statistics.median(r["loop"]["seconds"] / r["ours"]["seconds"] for r in rounds)
    vs_parse = statistics.median(r["parse"]["seconds"] / r["ours"]["seconds"] for r in rounds)
    cpu = statistics.median(r["loop"]["cpu"] / r["ours"]["cpu"] for r in rounds)
    print(f"CPU time: {cpu:.1f}x less than the plain loop (median of rounds)")
    print(f"ours/plain-loop: {vs_loop:.1f}")
    warm = statistics.median(r["parse"]["warm_seconds"] / r["ours"]["seconds"] for r in rounds)
    print("parse warm runs (s): " + ", ".join(f"{r['parse']['warm_seconds']:.2f}" for r in rounds))
    print(f"ours/parse-bound: {vs_parse:.2f}")
    print(f"ours/parse-bound warm: {warm:.2f}")
    return 0


def _median_run(runs: list[dict]) -> dict:
    """The run of median time (the lower middle one for an even count)."""
    return sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]


if __name__ == "__main__":
    sys.exit(main())
