"""Statistics: per-block sums, extremes, distinct strings and label histogram
(:func:`block_stats`, on a worker), folded in input order into ``stats.json`` (:class:`Stats`).
"""

from __future__ import annotations

import math

import numpy as np

from tfpipes.preprocess.blocks import Plan

MAX_LABEL_CLASSES = 10_000


def block_stats(plan: Plan, cols: dict, n: int) -> dict:
    """Sums, extremes, distinct strings and the label histogram of one block."""
    import pyarrow.compute as pc

    out: dict = {"n": n, "num": {}, "str": {}, "hist": None}
    for name in plan.header:
        dtype = plan.types[name]
        v = cols[name]
        if dtype == "string":
            u = pc.unique(v)
            out["str"][name] = u.to_pylist() if len(u) <= MAX_LABEL_CLASSES else len(u)
            continue
        a = v.astype(np.float64)
        out["num"][name] = (
            n,
            float(a.sum()),
            float(np.square(a).sum()),
            float(a.min()),
            float(a.max()),
        )
    lab = cols[plan.label]
    if plan.types[plan.label] == "int64":
        vals, counts = np.unique(lab, return_counts=True)
        out["hist"] = (vals.tolist(), counts.tolist())
    elif plan.types[plan.label] == "string":
        vc = pc.value_counts(lab)
        out["hist"] = (vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return out


class Stats:
    """Statistics folded block by block, in input order."""

    def __init__(self, schema_types: dict[str, str], label: str):
        self.types = schema_types
        self.label = label
        self.n = 0
        self.num = {
            k: [0, 0.0, 0.0, math.inf, -math.inf] for k, t in schema_types.items() if t != "string"
        }
        self.str_unique: dict[str, set] = {
            k: set() for k, t in schema_types.items() if t == "string"
        }
        self.str_over: set[str] = set()  # columns with more distinct values than we track
        self.label_hist: dict = {}

    def merge(self, part: dict) -> None:
        self.n += part["n"]
        for k, (c, s, ss, lo, hi) in part["num"].items():
            acc = self.num[k]
            acc[0] += c
            acc[1] += s
            acc[2] += ss
            acc[3] = min(acc[3], lo)
            acc[4] = max(acc[4], hi)
        for k, vals in part["str"].items():
            u = self.str_unique[k]
            if isinstance(vals, int) or k in self.str_over:
                self.str_over.add(k)
                continue
            u.update(vals)
            if len(u) > MAX_LABEL_CLASSES and k != self.label:
                self.str_over.add(k)
        if part["hist"] is not None:
            for v, c in zip(*part["hist"]):
                self.label_hist[v] = self.label_hist.get(v, 0) + c

    def to_dict(self, train_rows: int, eval_rows: int, vocab: list, skipped: int = 0) -> dict:
        """The ``stats.json`` document."""
        feats = {}
        for k, (c, s, ss, lo, hi) in self.num.items():
            mean = s / c if c else 0.0
            var = max(ss / c - mean * mean, 0.0) if c else 0.0
            feats[k] = {"count": c, "mean": mean, "std": math.sqrt(var), "min": lo, "max": hi}
        for k, u in self.str_unique.items():
            feats[k] = {"count": self.n, "unique": len(u)}
            if k in self.str_over:
                feats[k]["unique_at_least"] = True
        out = {"num_rows": self.n, "train_rows": train_rows, "eval_rows": eval_rows}
        out["skipped_rows"] = skipped
        out["features"] = {k: feats[k] for k in self.types if k != self.label}
        out["label"] = {"name": self.label, **feats[self.label]}
        if self.label_hist:
            if vocab:
                out["label"]["histogram"] = {str(v): self.label_hist.get(v, 0) for v in vocab}
            else:
                out["label"]["histogram"] = {str(k): v for k, v in sorted(self.label_hist.items())}
        return out
