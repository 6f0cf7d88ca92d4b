"""Data at cluster scale (issue 13): costs per row at 1x, 2x and 4x data, printed as slopes.

One run, real processes, everything on this machine (the fake-gcs-server on 127.0.0.1):

- ``preprocess``: ``tfpipes preprocess`` of a CSV of 1x, 2x and 4x ``--rows``: seconds per
  million rows (the run's own ``preprocess: ... in X s``: without Python's and TensorFlow's
  start-up), peak RSS, and peak use of its temporary directory (the output excluded) at each
  size. Flat lines mean a cost linear in the data and a bounded footprint.
- ``train``: ``tfpipes train --data gs://...`` streaming one epoch of the 1x, 2x and 4x data set
  from the fake-gcs-server: seconds per million rows trained after the first logged chunk
  (from the run's own ``step k/n ... examples/s`` lines: without start-up, tracing and the
  first shards, which ``first step`` measures), peak RSS, and the peak size of its shard
  cache directory.
- ``first step``: seconds from launching a one-step ``tfpipes train --data gs://...`` of the
  1x, 2x and 4x data set to its ``step 1/`` line (start-up included): flat, whatever the size.
- ``gcs/local``: the training rate streaming from the fake-gcs-server over the rate reading the
  same data set from local files, each round one run of each (alternating which goes first);
  the median of the per-round ratios (goal >= 0.9), on the 2x data set (by default 32
  shards of ~50,000 rows, ~1.2 MB: small for real shards, which are tens to hundreds of MB,
  yet more of them than a shard cache holds, so the run streams and evicts). ``gcs/local
  tiny shards``: the same on ``--tiny-rows`` rows in 32 shards (~1,000 rows, ~25 KB each),
  a measure of the fixed cost per shard (a request, a check, a file) more than of
  throughput.
- ``fanout``: the fan-out preprocess section (``bench/scale_fanout.py``): commit time against the
  number of parts (1, 10, 100, 1000), the plan's serial and parallel (scans) costs, and what
  they predict for 100 nodes on 100 GB.

  python bench/scale.py                 # about 10 minutes on a 2-core box
  python bench/scale.py --rows 20000 --rounds 1   # a quick look

Every figure is a ``name: value`` line (``train s/Mrows 2x: 41.0``, ``peak disk MB 4x: 0.6``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
SIZES = (1, 2, 4)


def _args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of the 1x data set")
    p.add_argument("--shards", type=int, default=16, help="shards per split at 1x")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3, help="rounds of gcs/local")
    p.add_argument("--tiny-rows", type=int, default=40_000, help="rows of the tiny-shard set")
    p.add_argument("--sections", default="preprocess,train,gcs,fanout")
    return p.parse_args()


def emit(name: str, value: float, fmt: str = "{:.3g}") -> None:
    print(f"{name}: {fmt.format(value)}", flush=True)


class DiskPeak:
    """The peak total size of the files under ``path``, sampled every 20 ms."""

    def __init__(self, path: str):
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for root, _, files in os.walk(self.path):
                for f in files:
                    try:
                        total += os.path.getsize(os.path.join(root, f))
                    except OSError:
                        pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# tfpipes runs as the child of this small launcher, which reports its peak RSS (wait4): a
# child forked from the benchmark itself would count the benchmark's memory in its peak.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_tfpipes(
    args: list[str], env: dict, disk_dir: str, marks: dict | None = None
) -> tuple[str, int, int]:
    """Run ``tfpipes ARGS``: (its output, its peak RSS in bytes, peak bytes under
    ``disk_dir``); raise if it fails. ``marks``: {line prefix: None}, filled with the seconds
    from the start to the first line with that prefix."""
    peak = DiskPeak(disk_dir)
    started = time.monotonic()
    fd, usage_file = tempfile.mkstemp(prefix="tfpipes-usage-")
    os.close(fd)
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, usage_file, sys.executable, "-m", "tfpipes.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        for prefix, seen in (marks or {}).items():
            if seen is None and line.startswith(prefix):
                marks[prefix] = time.monotonic() - started
    out = "".join(lines)
    proc.wait()
    disk = peak.stop()
    with open(usage_file) as f:
        code, maxrss = (int(x) for x in (f.read().split() or (proc.returncode, 0)))
    os.unlink(usage_file)
    if code != 0:
        raise SystemExit(f"tfpipes {args[0]} failed ({code}):\n{out[-3000:]}")
    return out, maxrss * 1024, disk


def make_csv(work: str, rows: int) -> str:
    from tfpipes.sample_data import write_csv

    path = os.path.join(work, f"d{rows}.csv")
    if not os.path.exists(path):
        write_csv(path, rows, seed=7)
    return path


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


# --- preprocess ----------------------------------------------------------------------------


def run_preprocess(csv: str, data: str, shards: int, env: dict, disk_dir: str):
    """``tfpipes preprocess`` of ``csv`` into ``data``: what :func:`run_tfpipes` returns."""
    args = ["preprocess", "--source", csv, "--output", data, "--label", "label"]
    return run_tfpipes([*args, "--num-shards", str(shards)], env, disk_dir)


PREPROCESSED = re.compile(r"preprocess: (\d+) rows .* in ([\d.]+) s, (\d+) rows/s")


def preprocess_section(a, work: str) -> dict[int, str]:
    """Preprocess 1x/2x/4x; returns the data set directory of each size."""
    out, times = {}, {}
    for k in SIZES:
        rows = a.rows * k
        csv = make_csv(work, rows)
        tmp = tempfile.mkdtemp(prefix="pre-tmp-", dir=work)
        data = os.path.join(work, f"data{k}x")
        shutil.rmtree(data, ignore_errors=True)
        out_text, rss, disk = run_preprocess(csv, data, a.shards * k, base_env(TMPDIR=tmp), tmp)
        m = PREPROCESSED.search(out_text)
        if not m:
            raise SystemExit(f"no 'preprocess: ...' line in:\n{out_text[-2000:]}")
        spent = int(m.group(1)) / max(int(m.group(3)), 1)  # its rows/s: more digits than its s
        emit(f"preprocess s/Mrows {k}x", spent / rows * 1e6, "{:.2f}")
        times[k] = (spent, rows)
        emit(f"preprocess peak RSS MB {k}x", rss / 2**20, "{:.0f}")
        emit(f"preprocess peak disk MB {k}x", disk / 2**20, "{:.2f}")
        out[k] = data
    marginal("preprocess", times)
    return out


def marginal(what: str, times: dict[int, tuple[float, int]]) -> None:
    """The cost of the rows 4x adds over 2x, per million rows: the slope without any fixed
    cost the per-size figures still hold (preprocess: its worker pool's start)."""
    (t2, r2), (t4, r4) = times[2], times[4]
    emit(f"{what} marginal s/Mrows 2x-4x", (t4 - t2) / (r4 - r2) * 1e6, "{:.2f}")


# --- streaming training ----------------------------------------------------------------------

TRAINED = re.compile(r"train: steps \d+ -> (\d+) \((\d+) run\) in ([\d.]+) s, ([\d.]+) examples/s")
STEP = re.compile(r"step (\d+)/\d+ loss \S+ lr \S+ examples/s (\d+)")
CHUNKS = 8  # logged chunks per training run: the first one holds the start-up


def steady_seconds(out: str, batch_size: int) -> tuple[float, int]:
    """(seconds, examples) of the chunks after the first logged one, from the run's step
    lines (each chunk's examples over its examples/s)."""
    steps = [(int(a), int(b)) for a, b in STEP.findall(out)]
    if len(steps) < 2:
        raise SystemExit(f"fewer than 2 'step k/n' lines in:\n{out[-2000:]}")
    seconds = examples = 0
    for (s0, _), (s1, eps) in zip(steps, steps[1:]):
        examples += (s1 - s0) * batch_size
        seconds += (s1 - s0) * batch_size / max(eps, 1)
    return seconds, examples


def train_once(data: str, steps: int, a, env: dict, cache_dir: str, work: str):
    """One ``tfpipes train`` run: (seconds of training, examples/s, peak RSS, peak disk,
    its output)."""
    model = tempfile.mkdtemp(prefix="model-", dir=work)
    try:
        out, rss, disk = run_tfpipes(
            ["train", "--data", data, "--model-dir", model, "--train-steps", str(steps),
             "--batch-size", str(a.batch_size), "--log-every", str(max(1, steps // CHUNKS))],
            env,
            cache_dir,
        )  # fmt: skip
    finally:
        shutil.rmtree(model, ignore_errors=True)
    m = TRAINED.search(out)
    if not m:
        raise SystemExit(f"no 'train: ...' line in:\n{out[-2000:]}")
    return float(m.group(3)), float(m.group(4)), rss, disk, out


def publish(server, datasets: dict[int, str]) -> dict[int, str]:
    from tfpipes import storage

    bucket = server.create_bucket()
    urls = {}
    for k, d in datasets.items():
        urls[k] = f"gs://{bucket}/data{k}x"
        storage.publish_dir(d, urls[k])
    return urls


def train_rows(data: str) -> int:
    import json

    with open(os.path.join(data, "manifest.json")) as f:
        return int(json.load(f)["rows"]["train"])


def train_section(a, work: str, server, datasets: dict[int, str], urls: dict[int, str]) -> None:
    cache = os.path.join(work, "cache")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    env = stream_env(server, cache)
    times = {}
    for k in SIZES:
        steps = max(1, train_rows(datasets[k]) // a.batch_size)  # one epoch
        *_, rss, disk, out = train_once(urls[k], steps, a, env, cache, work)
        spent, examples = steady_seconds(out, a.batch_size)
        times[k] = (spent, examples)
        emit(f"train s/Mrows {k}x", spent / examples * 1e6, "{:.2f}")
        emit(f"peak RSS MB {k}x", rss / 2**20, "{:.0f}")
        emit(f"peak disk MB {k}x", disk / 2**20, "{:.2f}")
    marginal("train", times)
    for k in SIZES:  # from the launch to the first step's line: flat, whatever the size
        emit(f"first step s {k}x", first_step(urls[k], a, env, cache, work), "{:.1f}")


def first_step(data: str, a, env: dict, cache_dir: str, work: str) -> float:
    """Seconds from launching ``tfpipes train --data DATA`` to its ``step 1/`` line (Python
    and TensorFlow start-up, the data set's checks, the first shards, the first step)."""
    model = tempfile.mkdtemp(prefix="model-", dir=work)
    marks = {"step 1/": None}
    try:
        run_tfpipes(
            ["train", "--data", data, "--model-dir", model, "--train-steps", "1",
             "--batch-size", str(a.batch_size), "--log-every", "1"],
            env,
            cache_dir,
            marks,
        )  # fmt: skip
    finally:
        shutil.rmtree(model, ignore_errors=True)
    if marks["step 1/"] is None:
        raise SystemExit("no 'step 1/' line from a one-step run")
    return marks["step 1/"]


def stream_env(server, cache: str) -> dict:
    return base_env(
        STORAGE_EMULATOR_HOST=server.url, GOOGLE_CLOUD_PROJECT="bench", TFPIPES_STREAM_DIR=cache
    )


def gcs_section(a, work: str, server, datasets: dict[int, str], urls: dict[int, str]) -> None:
    cache = os.path.join(work, "cache")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    env = stream_env(server, cache)
    emit("gcs/local", gcs_ratio(a, work, env, cache, datasets[2], urls[2]), "{:.2f}")
    csv = make_csv(work, a.tiny_rows)
    tiny = os.path.join(work, "data-tiny")
    shutil.rmtree(tiny, ignore_errors=True)
    run_preprocess(csv, tiny, 32, base_env(), work)
    url = publish(server, {0: tiny})[0]
    emit("gcs/local tiny shards", gcs_ratio(a, work, env, cache, tiny, url), "{:.2f}")


def gcs_ratio(a, work: str, env: dict, cache: str, local: str, url: str) -> float:
    """The median over rounds of (rate streaming ``url``) / (rate reading ``local``), one
    epoch each, by the runs' own ``train:`` rates (the first shards' fetch included: it counts
    against streaming)."""
    steps = max(1, train_rows(local) // a.batch_size)
    ratios = []
    for r in range(a.rounds):
        order = ("gcs", "local") if r % 2 == 0 else ("local", "gcs")
        rate = {}
        for which in order:
            data = url if which == "gcs" else local
            rate[which] = train_once(data, steps, a, env, cache, work)[1]
        ratios.append(rate["gcs"] / rate["local"])
        print(
            f"  round {r}: gcs {rate['gcs']:.0f} ex/s, local {rate['local']:.0f} ex/s", flush=True
        )
    return statistics.median(ratios)


def fanout_section(a) -> None:
    """Commit time against the number of parts (1, 10, 100, 1000): bench/scale_fanout.py."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from scale_fanout import bench_fanout

    bench_fanout(rounds=max(1, a.rounds))


def main() -> None:
    a = _args()
    sections = set(a.sections.split(","))
    work = tempfile.mkdtemp(prefix="tfpipes-scale-")
    try:
        datasets = preprocess_section(a, work)  # the data sets the other sections train on
        if sections & {"train", "gcs"}:
            from tests.gcs_fixtures import FakeGcsServer

            with FakeGcsServer(backend="memory") as server:
                os.environ.update(STORAGE_EMULATOR_HOST=server.url, GOOGLE_CLOUD_PROJECT="bench")
                urls = publish(server, datasets)
                if "train" in sections:
                    train_section(a, work, server, datasets, urls)
                if "gcs" in sections:
                    gcs_section(a, work, server, datasets, urls)
        if "fanout" in sections:
            fanout_section(a)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
