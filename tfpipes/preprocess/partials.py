"""A fan-out part's partial statistics: written by the part, merged by the commit.

What makes the merge give single-process preprocess's ``stats.json`` for any number of parts
(the parts cut the same blocks, :mod:`.fanout`):

- counts, missing, min, max and the label histogram add up exactly;
- mean and std: each block's figures (count, mean, M2, min, max) are kept and folded in input
  order by the same update (:class:`.statistics._Numeric`), so they are bit for bit the same;
- categorical counts and top values: a part's counts add up exactly while the column has at
  most ``EXACT_UNIQUE`` distinct values (past it, counts are lower bounds, as in one process);
- distinct counts: the k-minimum-values sketch (the 4096 smallest value hashes) merges
  exactly — the union's smallest are the smallest of the parts' — so the estimate is the same
  for any N (relative standard error 1/sqrt(4094) ≈ 1.6 % against the true count);
- quantiles, median, histograms: the statistics sample is the rows whose hash (of their line
  number) is under a threshold set by the rows parsed in all; a part keeps the rows under the
  threshold its own rows allow (a superset), the commit keeps those under the final one: the
  same rows in the same order, hence the same figures (a uniform sample of ``SAMPLE_VALUES``
  rows: rank error within ±0.5 % with 99 % confidence, by the DKW inequality, against the
  exact quantiles of every row).

A partial is one ``.npz`` (no pickles): a JSON ``meta`` string and the arrays.
"""

from __future__ import annotations

import io
import json

import numpy as np

from tfpipes.preprocess.blocks import Plan
from tfpipes.preprocess.statistics import (
    Stats,
    _Categorical,
    _take,
    is_categorical,
    sample_threshold,
)


def partial_bytes(run, part: int, plan_id: str, shards: dict, figures: list) -> bytes:
    """The ``.npz`` of a finished part's run (:class:`.fanout_part._PartRun`): its counts,
    per-block numeric figures (``figures``: one ``[(missing, count, mean, m2, lo, hi)]`` per
    block with rows), categorical folds, label histogram and sample; ``shards``: data set
    name -> (rows, bytes, crc hex)."""
    stats: Stats = run.stats
    plan: Plan = run.plan
    num = [h for h in plan.header if not is_categorical(plan, h)]
    cat = [h for h in plan.header if is_categorical(plan, h)]
    meta = {
        "plan": plan_id,
        "part": part,
        "n": stats.n,
        "parsed": stats.parsed,
        "missing_label": stats.missing_label,
        "skipped": run.skipped,
        "notes": run.notes,
        "shards": shards,
        "num": num,
        "cat": {},
        "hist": [[v, c] for v, c in stats.label_hist.items()],
    }
    arrays = {}
    fig = np.array(figures, dtype=np.float64).reshape(len(figures), len(num), 6)
    arrays["num_counts"] = fig[:, :, :2].astype(np.int64)
    arrays["num_figures"] = fig[:, :, 2:]
    for j, name in enumerate(cat):
        col = stats.cols[name]
        meta["cat"][name] = {
            "missing": col.missing,
            "count": col.count,
            "approximate": col.approximate,
            "counts": [[v, c] for v, c in col.counts.items()],
        }
        arrays[f"sketch{j}"] = col.sketch
    sample = stats.sample
    sample.keep_under(sample_threshold(stats.parsed))
    blocks = sample.blocks
    arrays["sample_rows"] = np.concatenate([np.zeros(0, np.uint64), *(r for r, _ in blocks)])
    for j, name in enumerate(num):
        vals = [cols[name][0] for _, cols in blocks]
        arrays[f"v{j}"] = np.concatenate(vals) if vals else np.zeros(0, np.float32)
        ons = [np.ones(len(r), bool) if c[name][1] is None else c[name][1] for r, c in blocks]
        arrays[f"on{j}"] = np.concatenate([np.zeros(0, bool), *ons])
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_partial(data: bytes) -> dict:
    """A partial's contents: ``meta`` (dict) and its arrays. Raises ValueError (or the zip
    reader's errors) when it is not one."""
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


def merge_partials(plan: Plan, partials: list[dict]) -> Stats:
    """The parts' statistics (in part order) folded into one :class:`Stats`, as if its
    blocks had been folded in input order by one process."""
    stats = Stats(plan)
    for p in partials:
        meta = p["meta"]
        stats.n += meta["n"]
        stats.parsed += meta["parsed"]
        stats.missing_label += meta["missing_label"]
        cols = [stats.cols[name] for name in meta["num"]]
        for counts, figs in zip(p["num_counts"].tolist(), p["num_figures"].tolist()):
            for col, (missing, c), (mean, m2, lo, hi) in zip(cols, counts, figs):
                col.merge(missing, c, mean, m2, lo, hi)
        for j, (name, d) in enumerate(meta["cat"].items()):
            col: _Categorical = stats.cols[name]
            counts = {v: c for v, c in d["counts"]}
            col.absorb(d["missing"], d["count"], counts, p[f"sketch{j}"], d["approximate"])
        for v, c in meta["hist"]:
            stats.label_hist[v] = stats.label_hist.get(v, 0) + c
    limit = sample_threshold(stats.parsed)
    for p in partials:
        rows = p["sample_rows"]
        sel = np.ones(len(rows), bool) if limit is None else rows < np.uint64(limit)
        columns = {
            name: _take(p[f"v{j}"], p[f"on{j}"], sel) for j, name in enumerate(p["meta"]["num"])
        }
        stats.sample.blocks.append((rows[sel], columns))
        stats.sample.kept += int(sel.sum())
    return stats
