"""Data sets in the schema.json v2 / stats.json contract, written directly (not by preprocess):
mixed kinds, missing cells as absent features, a date column and a high-cardinality ID.

``write_v2_dataset`` returns the raw columns too (``None`` for a missing cell), so a test can
fit a scikit-learn pipeline on exactly the rows the trainer sees.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfpipes import manifest as manifest_lib
from tfpipes.layout import SCHEMA, STATS
from tfpipes.schema import Feature, Schema

DAY = 86400
START = 1_600_000_000  # 2020-09-13, a Sunday, 12:26 UTC

# name, dtype, kind, missing fraction
COLUMNS = (
    ("x1", "float32", "numeric", 0.20),
    ("x2", "float32", "numeric", 0.10),
    ("items", "int64", "numeric", 0.05),
    ("color", "string", "categorical", 0.15),
    ("grade", "int64", "categorical", 0.10),
    ("member", "int64", "boolean", 0.10),
    ("signup", "int64", "timestamp", 0.10),
    ("user_id", "string", "id", 0.05),
)
COLORS = ("red", "green", "blue", "black", "white")


def generate(rows: int, seed: int, bias: float = -0.3) -> tuple[dict[str, list], np.ndarray]:
    """Raw columns (``None`` where a cell is missing) and binary labels. The label depends on
    the true values, so a missing cell loses information; weekends and the grade matter."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=rows)
    x2 = rng.normal(2.0, 3.0, size=rows)
    items = rng.poisson(3, size=rows)
    color = rng.integers(0, len(COLORS), size=rows)
    grade = rng.integers(1, 5, size=rows)
    member = rng.integers(0, 2, size=rows)
    signup = START + rng.integers(0, 730 * DAY, size=rows)
    user = rng.integers(0, 3000, size=rows)
    weekend = ((signup // DAY + 3) % 7) >= 5
    logit = (
        1.5 * x1
        - 0.4 * x2
        + 0.4 * (items - 3)
        + np.array([1.0, -1.0, 0.5, 0.0, -0.5])[color]
        + np.array([0, -1.2, 0.3, 1.0, 0.0])[grade]
        + 0.8 * member
        + 1.0 * weekend
        + bias
    )
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    values = {
        "x1": x1.astype(np.float32),
        "x2": x2.astype(np.float32),
        "items": items,
        "color": np.array(COLORS)[color],
        "grade": grade,
        "member": member,
        "signup": signup,
        "user_id": np.array([f"u{u:05d}" for u in user]),
    }
    cols = {}
    for name, _, _, frac in COLUMNS:
        missing = rng.random(rows) < frac
        cols[name] = [None if m else v.item() for v, m in zip(values[name], missing)]
    return cols, y


def _example(cols: dict, y: np.ndarray, i: int) -> bytes:
    import tensorflow as tf

    feats = {}
    for name, dtype, _, _ in COLUMNS:
        v = cols[name][i]
        if v is None:
            continue  # a missing cell is an absent feature
        if dtype == "float32":
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        elif dtype == "int64":
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
        else:
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
    feats["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[i])]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def feature_stats(kind: str, values: list) -> dict:
    """One feature's stats.json entry in the v2 contract."""
    present = [v for v in values if v is not None]
    out = {"kind": kind, "count": len(present), "missing": len(values) - len(present)}
    if kind in ("categorical", "id"):
        uniq, counts = np.unique(np.array(present, dtype=object).astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")[:1000]
        top = [[str(uniq[j]), int(counts[j])] for j in order]
        if present and isinstance(present[0], int):
            top = [[int(v), c] for v, c in top]
        out |= {"unique": len(uniq), "top": top}
        return out
    x = np.array(present, dtype=np.float64)
    q = np.quantile(x, np.linspace(0, 1, 21))
    counts, edges = np.histogram(x, bins=10)
    out |= {
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        "max": float(x.max()),
        "median": float(np.median(x)),
        "quantiles": [float(v) for v in q],
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }
    return out


def write_v2_dataset(
    out: str, rows: int = 4000, seed: int = 0, eval_rows: int = 0, shards: int = 2, bias=-0.3
):
    """Write a committed v2 data set to ``out`` (train shards, eval shards, schema.json v2,
    stats.json of the train split, manifest.json last); ``bias`` shifts the label's logit
    (class imbalance). Returns ``(cols, y, n_train)``: the
    raw columns of every row, train rows first."""
    import tensorflow as tf

    cols, y = generate(rows, seed, bias)
    n_eval = eval_rows or rows // 5
    n_train = rows - n_eval
    os.makedirs(out, exist_ok=True)
    entries = []
    for split, lo, hi in (("train", 0, n_train), ("eval", n_train, rows)):
        os.makedirs(os.path.join(out, split), exist_ok=True)
        bounds = np.linspace(lo, hi, shards + 1).astype(int)
        for s in range(shards):
            rel = f"{split}/part-{s:05d}-of-{shards:05d}.tfrecord"
            with tf.io.TFRecordWriter(os.path.join(out, rel)) as w:
                for i in range(bounds[s], bounds[s + 1]):
                    w.write(_example(cols, y, i))
            entries.append((rel, split, int(bounds[s + 1] - bounds[s])))
    features = tuple(Feature(n, d, (), k) for n, d, k, _ in COLUMNS)
    label = Feature("label", "int64", (), "categorical")
    schema = Schema(features, label, "classification", num_classes=2)
    with open(os.path.join(out, SCHEMA), "w") as f:
        f.write(schema.to_json())
    train = {n: cols[n][:n_train] for n in cols}
    stats = {
        "num_rows": rows,
        "train_rows": n_train,
        "eval_rows": n_eval,
        "missing_label_rows": 0,
        "features": {n: feature_stats(k, train[n]) for n, _, k, _ in COLUMNS},
        "label": {
            "name": "label",
            "kind": "categorical",
            "count": n_train,
            "missing": 0,
            "histogram": {str(c): int((y[:n_train] == c).sum()) for c in (0, 1)},
        },
    }
    with open(os.path.join(out, STATS), "w") as f:
        json.dump(stats, f)
    manifest_lib.write_manifest(
        out, entries, [SCHEMA, STATS], {"train": n_train, "eval": n_eval}, ""
    )
    return cols, y, n_train
