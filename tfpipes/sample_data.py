"""Synthetic tabular data sets for the demo, the tests and the benchmarks.

Columns of every kind preprocess handles: floats, an integer, a string category; a label that
depends on them through a known rule, so a model that learns can be told from one that does not.
"""

from __future__ import annotations

import numpy as np


def write_csv(path: str, rows: int, task: str = "classification", seed: int = 0) -> None:
    """Write ``rows`` rows with header ``x1..x4,count,color,label`` to ``path``.

    classification: label in {0, 1, 2} from a linear rule on the features (learnable to >90%);
    regression: label = a linear function of the features plus small noise.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    count = rng.integers(0, 20, size=rows)
    colors = np.array(["red", "green", "blue"])
    color_idx = rng.integers(0, 3, size=rows)
    color_effect = np.array([-1.0, 0.0, 1.0])[color_idx]
    score = 1.5 * x[:, 0] - 2.0 * x[:, 1] + 0.5 * x[:, 2] + 0.1 * (count - 10) + color_effect
    if task == "classification":
        label = np.digitize(score, [-1.0, 1.0]).astype(str)
    elif task == "regression":
        label = np.char.mod("%.5f", score + 0.1 * rng.normal(size=rows))
    else:
        raise ValueError(task)
    cols = [np.char.mod("%.5f", x[:, j]) for j in range(4)]
    body = np.stack(cols + [count.astype(str), colors[color_idx], label], axis=1)
    with open(path, "w", encoding="utf-8") as f:
        f.write("x1,x2,x3,x4,count,color,label\n")
        f.write("\n".join(",".join(r) for r in body.tolist()))
        f.write("\n")


def write_float_csv(
    path: str, rows: int, features: int = 20, classes: int = 10, seed=0, sort: bool = False
) -> None:
    """The benchmark shape: ``features`` float columns f0.. and an int label in [0, classes);
    ``sort``: rows in label order within each chunk of 200,000 (the worst case of a shuffle)."""
    rng = np.random.default_rng(seed)
    chunk = 200_000
    w = rng.normal(size=(features, classes))
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join([f"f{i}" for i in range(features)] + ["label"]) + "\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = rng.normal(size=(n, features)).astype(np.float32)
            y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, classes)), axis=1)
            if sort:
                order = np.argsort(y, kind="stable")
                x, y = x[order], y[order]
            text = np.char.mod("%.6f", x)
            lines = [",".join(r) + f",{lab}" for r, lab in zip(text.tolist(), y.tolist())]
            f.write("\n".join(lines) + "\n")


def write_realistic_csv(
    path: str, rows: int, features: int = 15, missing: float = 0.1, seed: int = 0
) -> None:
    """The realistic benchmark shape: ``features`` float columns f0.., 5 string columns s0..s4,
    one ISO date column ``date`` and an int label in [0, 10); ``missing`` of the feature cells
    are empty."""
    rng = np.random.default_rng(seed)
    chunk = 200_000
    cats = np.array([f"cat{i}" for i in range(50)])
    days = np.array(
        [str(np.datetime64("2020-01-01") + np.timedelta64(d, "D")) for d in range(2000)]
    )
    with open(path, "w", encoding="utf-8") as f:
        names = [f"f{i}" for i in range(features)] + [f"s{i}" for i in range(5)] + ["date"]
        f.write(",".join(names + ["label"]) + "\n")
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            x = np.char.mod("%.6f", rng.normal(size=(n, features)).astype(np.float32))
            s = cats[rng.integers(0, len(cats), size=(n, 5))]
            d = days[rng.integers(0, len(days), size=(n, 1))]
            cells = np.concatenate([x, s, d], axis=1).astype(object)
            cells[rng.random(cells.shape) < missing] = ""
            y = rng.integers(0, 10, size=n).astype(str)
            lines = [",".join(r) + f",{lab}" for r, lab in zip(cells.tolist(), y.tolist())]
            f.write("\n".join(lines) + "\n")
