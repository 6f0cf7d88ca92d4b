"""glibc told to keep block-sized buffers: reading a CSV block by block stops faulting in fresh
pages for every block (tfpipes/preprocess/malloc.py)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from tfpipes.preprocess import malloc

BLOCK = 4 << 20

# Reads the CSV block by block as preprocess does and prints the minor page faults per block
# past the first few (which grow the heap either way); argv[2] == "1": after
# keep_block_memory().
CHILD = """
import ctypes, json, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages whatever the host's
from tfpipes.preprocess.csv_blocks import CsvInput
from tfpipes.preprocess.malloc import keep_block_memory
tuned = keep_block_memory() if sys.argv[2] == "1" else False
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
inp = CsvInput(sys.argv[1], int(sys.argv[3]))
blocks, f0 = 0, 0
for block in inp.blocks():
    blocks += 1
    if blocks == 3:
        f0 = faults()
print(json.dumps({"tuned": tuned, "blocks": blocks, "per_block": (faults() - f0) / (blocks - 3)}))
"""


def _faults(path: str, tuned: bool) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(
        [sys.executable, "-c", CHILD, path, "1" if tuned else "0", str(BLOCK)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_block_reads_reuse_their_pages(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "f.csv"
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(20)) + ",label\n")
        for _ in range(10):  # ~60 MB: 15 blocks, rows as wide as the benchmark's
            x = rng.random((30_000, 20)).astype(np.float32)
            y = rng.integers(0, 9, 30_000)
            np.savetxt(f, np.column_stack([x, y]), fmt="%.7g", delimiter=",")
    before = _faults(str(path), tuned=False)
    after = _faults(str(path), tuned=True)
    assert after["tuned"] and after["blocks"] == before["blocks"] >= 8
    pages = BLOCK // os.sysconf("SC_PAGE_SIZE")
    # Untuned, each block's buffers are partly fresh pages (measured: ~40 % of a block's);
    # tuned, the heap hands the same pages back.
    assert before["per_block"] > pages / 8, before
    assert after["per_block"] < pages / 10 and after["per_block"] < before["per_block"] / 3, (
        before,
        after,
    )


def test_every_block_loop_tunes_once(monkeypatch):
    """OrderedRunner (the loop of preprocess, the fan-out's plan, scans and parts) asks for
    it; the thresholds are set on the first call only."""
    from tfpipes.preprocess import parallel

    calls = []
    monkeypatch.setattr(malloc, "_tuned", None)
    monkeypatch.setattr(malloc, "_mallopt", lambda: calls.append(1) or True)
    for workers in (1, 2, 2):
        parallel.OrderedRunner(workers, len).close()
    assert calls == [1] and malloc._tuned is True
