"""Benchmark, fan-out section of ``bench/scale.py``: what the fan-in costs as parts grow.

    python bench/scale_fanout.py                 # 1, 10, 100, 1000 parts; 3 rounds
    python bench/scale_fanout.py --parts 1,10,100 --rounds 5

One input of tiny blocks (4 KiB, ~100 rows each) is planned into 1, 10, 100 and 1000 parts;
every part runs (serially, in this process) and the commit is timed over ``--rounds`` copies
of the staging place (hard-link copies: each round commits the same parts). Prints, as
``name: value`` lines, the commit's seconds at each part count, its cost per part (the slope
between the two largest counts), the commit against a tiny part's time, and — measured on a
larger input in the same run (default block size) — the seconds per MB of the plan (one
serial read of the whole input, as single-process preprocess's first pass), of the same read
in parallel ranges (the scans) and of the plan joining them, of a part, and of
single-process preprocess, with what they predict for 100 nodes on 100 GB (with the scans,
as the pipeline runs, and with the serial plan); and the plan's and the scans' seconds per MB
on a CSV with a quoted text column (``fanout quoted ...``), which the scans cut too.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Quoted texts (commas, doubled quotes and line ends inside): the scans cut such a file too,
# trying both quote states where a range starts.
QUOTED = ('"Oslo, NO"', '"Rome, IT"', "lima", '"say ""hi"""', "pune", '"two\nlines"')


def _write_csv(path: str, rows: int, seed: int = 0, cities=("oslo", "rome", "lima")) -> None:
    rnd = random.Random(seed)
    with open(path, "w") as f:
        f.write("a,b,c,city,label\n")
        for _ in range(rows):
            f.write(
                f"{rnd.random():.5f},{rnd.gauss(0, 1):.4f},{rnd.randint(0, 99)},"
                f"{rnd.choice(cities)},{rnd.randint(0, 2)}\n"
            )


def _timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def _commit_rounds(fp, out: str, rounds: int) -> float:
    """Median seconds of committing copies of ``fp``'s staging place."""
    from tfpipes.preprocess.fanout_commit import commit_fanout

    times = []
    for r in range(rounds):
        copy = f"{fp.staging}.r{r}"
        shutil.copytree(fp.staging, copy, copy_function=os.link)
        shutil.rmtree(out, ignore_errors=True)
        times.append(_timed(commit_fanout, copy, out)[0])
    shutil.rmtree(fp.staging)
    return statistics.median(times)


def bench_fanout(parts_list=(1, 10, 100, 1000), rounds: int = 3, big_mb: int = 24) -> dict:
    """Run the fan-out section; prints ``name: value`` lines and returns them as a dict."""
    # Arrow's modules imported before any clock (~0.1 s, a fixed start-up cost): else the
    # first timed run, single-process preprocess, pays it alone.
    import pyarrow.compute  # noqa: F401
    import pyarrow.csv  # noqa: F401

    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.preprocess.fanout import plan_fanout
    from tfpipes.preprocess.fanout_part import run_part
    from tfpipes.preprocess.fanout_scan import list_scans, run_scan

    figures: dict[str, float] = {}

    def show(name: str, value: float) -> None:
        figures[name] = value
        print(f"{name}: {value:.4g}", flush=True)

    tmp = tempfile.mkdtemp(prefix="bench-fanout-")
    try:
        src = os.path.join(tmp, "tiny.csv")
        _write_csv(src, 100 * max(parts_list))  # ~100 rows per 4 KiB block: a block per part
        commit_s, part_s = {}, []
        for n in parts_list:
            cfg = PreprocessConfig(
                src, os.path.join(tmp, f"out{n}"), "label", block_size=4096, workers=1
            )
            fp = plan_fanout(cfg, n)
            for i in range(n):
                part_s.append(_timed(run_part, fp.staging, i, workers=1)[0])
            commit_s[n] = _commit_rounds(fp, cfg.output, rounds)
            show(f"fanout commit s {n} parts", commit_s[n])
        tiny_part = statistics.median(part_s)
        show("fanout tiny part s (median)", tiny_part)
        big = sorted(parts_list)[-2:]
        if len(big) == 2:
            slope = (commit_s[big[1]] - commit_s[big[0]]) / (big[1] - big[0])
            show("fanout commit ms/part", slope * 1e3)
        for n in parts_list:
            show(f"fanout commit/part-time {n} parts", commit_s[n] / tiny_part)

        # The serial pieces against the parallel one, on an input of ordinary blocks.
        src = os.path.join(tmp, "big.csv")
        _write_csv(src, big_mb * 1_000_000 // 40, seed=1)
        mb = os.path.getsize(src) / 1e6
        base = dict(label="label", workers=1, progress=False)
        # once untimed: a process's first preprocess pays one-time costs (its pools, its
        # first pages) that a 24 MB run would scale up to 100 GB
        preprocess(PreprocessConfig(src, os.path.join(tmp, "s0"), **base))
        single_s = _timed(preprocess, PreprocessConfig(src, os.path.join(tmp, "s"), **base))[0]
        cfg = PreprocessConfig(src, os.path.join(tmp, "f"), **base)
        plan_s, fp = _timed(plan_fanout, cfg, 4)
        parts = [_timed(run_part, fp.staging, i, workers=1)[0] for i in range(4)]
        part_mb = sum(parts) / mb
        # The plan's read in parallel ranges (what the pipeline runs): the listing (one
        # header), the scans (parallel), then the plan joining them (serial, per block).
        scans = os.path.join(tmp, "scans")
        list_s, lst = _timed(list_scans, cfg, 4, scans)
        scan_s = sum(_timed(run_scan, scans, i, workers=1)[0] for i in range(len(lst["ranges"])))
        joins = [_timed(plan_fanout, cfg, 4, scans=scans) for _ in range(3)]
        join_s, joined = statistics.median(t for t, _ in joins), joins[0][1]
        assert joined.parts == fp.parts and joined.plan == fp.plan  # the same plan
        # what the join costs per block: the same input in 16 KiB blocks (256x as many; medians
        # of 3 joins)
        small = PreprocessConfig(src, os.path.join(tmp, "g"), block_size=16 << 10, **base)
        lst = list_scans(small, 4, scans)
        for i in range(len(lst["ranges"])):
            run_scan(scans, i, workers=1)
        joins = [_timed(plan_fanout, small, 4, scans=scans) for _ in range(3)]
        join_small, many = statistics.median(t for t, _ in joins), joins[0][1]
        blocks = lambda p: sum(len(r["lengths"]) for x in p.parts for r in x["ranges"])  # noqa: E731
        per_block = max(0.0, (join_small - join_s) / (blocks(many) - blocks(fp)))
        show("fanout single s/MB", single_s / mb)
        show("fanout plan s/MB", plan_s / mb)
        show("fanout part s/MB", part_mb)
        show("fanout scan s/MB", scan_s / mb)
        show("fanout scan list s", list_s)
        show("fanout plan from scans s", join_s)
        show("fanout plan from scans ms/block", per_block * 1e3)
        # 100 nodes on 100 GB, each node a 1/100th of the parts (and of the scans), then the
        # commit of 100 parts (measured above on tiny parts); the plan from the scans: its
        # time here and its cost per block for the 100 GB's blocks of 4 MiB.
        total = 100_000.0
        c100 = commit_s.get(100, 0.0)
        spread = part_mb * total / 100 + c100
        serial = plan_s / mb * total + spread
        join_100gb = join_s + per_block * total * 1e6 / (4 << 20)
        show("fanout plan from scans s 100GB", join_100gb)
        fan = list_s + scan_s / mb * total / 100 + join_100gb + spread
        show("fanout predicted speedup 100 nodes 100GB", single_s / mb * total / fan)
        show("fanout predicted speedup 100 nodes 100GB serial plan", single_s / mb * total / serial)
        show("fanout commit/part-time 100 parts of 1GB", c100 / (part_mb * 1000))
        show("fanout plan/single", plan_s / single_s)  # the serial plan's share

        # Quoted fields, some holding line ends: the scans cut the file too, at a higher
        # cost per byte; the serial plan's read for comparison.
        src = os.path.join(tmp, "quoted.csv")
        _write_csv(src, big_mb * 1_000_000 // 40, seed=2, cities=QUOTED)
        mb = os.path.getsize(src) / 1e6
        cfg = PreprocessConfig(src, os.path.join(tmp, "q"), **base)
        plan_s, fp = _timed(plan_fanout, cfg, 4)
        lst = list_scans(cfg, 4, scans)
        runs = [_timed(run_scan, scans, i, workers=1) for i in range(len(lst["ranges"]))]
        assert all(r["fast"] for _, r in runs), [r.get("why") for _, r in runs]
        joined = plan_fanout(cfg, 4, scans=scans)
        assert joined.parts == fp.parts and joined.plan == fp.plan  # the same plan
        scan_s = sum(t for t, _ in runs)
        show("fanout quoted plan s/MB", plan_s / mb)
        show("fanout quoted scan s/MB", scan_s / mb)
        show("fanout quoted scan/plan", scan_s / plan_s)

    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main() -> int:
    sys.path.insert(0, REPO)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="1,10,100,1000", help="part counts (comma-separated)")
    ap.add_argument("--rounds", type=int, default=3, help="commit rounds per count (median)")
    ap.add_argument("--big-mb", type=int, default=24, help="MB of the plan/part/single input")
    args = ap.parse_args()
    print(f"load average: {os.getloadavg()[0]:.1f}")
    bench_fanout(tuple(int(x) for x in args.parts.split(",")), args.rounds, args.big_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
