"""Statistics: per-block summaries (:func:`block_stats`, on a worker), folded in input order
into ``stats.json`` (:class:`Stats`).

Per feature (and the label), over the rows written (all rows, train and eval — the split is a
hash of the row, so both splits follow one distribution): ``kind``, ``count`` (present values)
and ``missing``. Numeric, timestamp and boolean features add ``mean``, ``std``, ``min``, ``max``
(exact, over present values), ``median``, ``quantiles`` (21, at 0, 5, ..., 100 %) and
``histogram`` (10 fixed bins between min and max). Quantiles and histogram come from a
deterministic sample of at most ``SAMPLE_VALUES`` rows (rows chosen by a hash of their place
in the input, so the result does not depend on the worker count): exact up to that many rows,
scaled to the exact count beyond. The share sampled depends on the rows parsed in all (the
rows of every block as read, before dropping bad or unlabeled ones), known only at the end:
each block sends every value with its row's hash, and the fold keeps those under the share
the rows so far allow, which can only shrink — so memory stays under about twice ``SAMPLE_VALUES``
values a column, and the end keeps the same rows a known share would have.

Categorical and id features add ``unique`` (exact up to ``EXACT_UNIQUE`` distinct values,
then a k-minimum-values estimate with ``unique_approximate``) and ``top``: ``[value, count]``
pairs, most frequent first (ties by value), at most ``TOP_K`` (counts exact while the column
has at most ``EXACT_UNIQUE`` distinct values, lower bounds after). The label keeps its
``histogram`` (class -> count) for classification.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from tfpipes.preprocess.blocks import Block, Plan

MAX_LABEL_CLASSES = 10_000
SAMPLE_VALUES = 100_000
EXACT_UNIQUE = 10_000
TOP_K = 1_000
_KMV = 4096  # hashes kept by the distinct-count sketch: ~1.6 % error
QUANTILES = np.linspace(0.0, 1.0, 21)


def is_categorical(plan: Plan, name: str) -> bool:
    kind = plan.kind(name)
    return kind in ("categorical", "id") or (not kind and plan.types[name] == "string")


def row_hashes(block: Block, n: int) -> np.ndarray:
    """The hash of each row's place that picks the statistics sample (uint64)."""
    key = (np.uint64(block.first) << np.uint64(24)) + np.arange(n, dtype=np.uint64)
    return _mix(key)


def sample_threshold(rows: int) -> int | None:
    """Rows whose hash is below this are in the sample of ``rows`` parsed rows (None: all)."""
    rate = min(1.0, SAMPLE_VALUES / max(rows, 1))
    return None if rate >= 1.0 else int(rate * 2.0**64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a stable 64-bit hash of uint64 keys."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hashes(values: list) -> np.ndarray:
    if values and isinstance(values[0], int):
        return _mix(np.array(values, dtype=np.int64).view(np.uint64))
    digest = (hashlib.blake2b(str(v).encode(), digest_size=8).digest() for v in values)
    return np.frombuffer(b"".join(digest), dtype=np.uint64).copy()


def block_stats(
    plan: Plan, block: Block, cols: dict, present: dict, n: int, limit: int | None = None
) -> dict:
    """One block's summary per column (see :class:`Stats`) and its label histogram; the
    numeric values sent for the sample are those whose row hash is under ``limit`` (a bound
    at or above the final threshold; None: all)."""
    import pyarrow.compute as pc

    h = row_hashes(block, n)
    keep = None if limit is None else h < np.uint64(limit)
    # The sampled rows' hashes once for the block; each column sends its values on those rows
    # and which of them it has (a byte a row instead of eight: results in flight stay small).
    out: dict = {"n": n, "num": {}, "cat": {}, "hist": None}
    out["hashes"] = h if keep is None else h[keep]
    for name in plan.header:
        v, p = cols[name], present.get(name)
        missing = 0 if p is None else int(n - p.sum())
        if is_categorical(plan, name):
            if isinstance(v, np.ndarray):
                vals, counts = np.unique(v if p is None else v[p], return_counts=True)
                vals, counts = vals.tolist(), counts.tolist()
            else:
                vc = pc.value_counts(v if p is None else v.filter(p))
                vals, counts = vc.field("values").to_pylist(), vc.field("counts").to_pylist()
            out["cat"][name] = (missing, vals, counts, _hashes(vals))
            continue
        raw = np.asarray(v)  # the sample keeps this dtype (float32: half of float64's bytes)
        a = (raw if p is None else raw[p]).astype(np.float64)
        if keep is None:
            sample, on = (raw if p is None else raw[p]), p
        else:
            sample, on = raw[keep if p is None else keep & p], (None if p is None else p[keep])
        c = len(a)
        mean = float(a.mean()) if c else 0.0
        m2 = float(np.square(a - mean).sum()) if c else 0.0
        lo, hi = (float(a.min()), float(a.max())) if c else (math.inf, -math.inf)
        out["num"][name] = (
            missing,
            c,
            mean,
            m2,
            lo,
            hi,
            sample,
            on,
        )
    lab = cols[plan.label]
    if plan.types[plan.label] == "int64":
        vals, counts = np.unique(lab, return_counts=True)
        out["hist"] = (vals.tolist(), counts.tolist())
    elif plan.types[plan.label] == "string":
        vc = pc.value_counts(lab)
        out["hist"] = (vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return out


class _Numeric:
    def __init__(self) -> None:
        self.missing = self.count = 0
        self.mean = self.m2 = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def merge(self, missing, c, mean, m2, lo, hi) -> None:
        """Fold one block's figures (the sample values are :class:`_RowSample`'s)."""
        self.missing += missing
        if c:  # Chan et al.'s parallel update: stable for large offsets such as epoch seconds
            total = self.count + c
            delta = mean - self.mean
            self.mean += delta * c / total
            self.m2 += m2 + delta * delta * self.count * c / total
            self.count = total
            self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def to_dict(self, kind: str, s: np.ndarray, is_sorted: bool = False) -> dict:
        """The feature's ``stats.json`` entry; ``s``: its sample values (float64; sorted if
        ``is_sorted``)."""
        d = {"kind": kind, "count": self.count, "missing": self.missing}
        if not self.count:
            d.update(mean=0.0, std=0.0, min=0.0, max=0.0, median=0.0, unique=0)
            d["quantiles"] = [0.0] * len(QUANTILES)
            d["histogram"] = {"edges": [0.0] * 11, "counts": [0] * 10}
            return d
        if not is_sorted:  # once: the quantiles, histogram and distinct count read it sorted
            s = np.sort(s)
        q = np.quantile(s, QUANTILES) if len(s) else np.full(len(QUANTILES), self.mean)
        q[0], q[-1] = self.lo, self.hi
        edges = np.linspace(self.lo, self.hi, 11)
        if self.hi > self.lo and len(s):
            # np.histogram's counts for these edges (the last bin closed), without its sort
            ends = np.concatenate(
                [s.searchsorted(edges[:-1], "left"), s.searchsorted(edges[-1:], "right")]
            )
            counts = np.diff(ends)
            if len(s) != self.count:  # a sample: scale to the count, largest remainders up
                exact = counts * (self.count / len(s))
                counts = np.floor(exact).astype(np.int64)
                rest = self.count - int(counts.sum())
                counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
        else:
            counts = np.zeros(10, dtype=np.int64)
            counts[0] = self.count
        d.update(mean=self.mean, std=math.sqrt(max(self.m2 / self.count, 0.0)))
        d.update(min=self.lo, max=self.hi, median=float(np.quantile(s, 0.5)) if len(s) else 0.0)
        d["quantiles"] = [float(x) for x in q]
        d["histogram"] = {"edges": [float(x) for x in edges], "counts": counts.tolist()}
        d["unique"] = _distinct_sorted(s)  # of the sample: exact up to SAMPLE_VALUES rows
        return d


def _distinct_sorted(s: np.ndarray) -> int:
    """Distinct values of a sorted array (what len(np.unique(s)) counts)."""
    return int(np.count_nonzero(s[1:] != s[:-1])) + 1 if len(s) else 0


class _Categorical:
    def __init__(self) -> None:
        self.missing = self.count = 0
        self.counts: dict = {}
        self.approximate = False
        self.sketch = np.zeros(0, dtype=np.uint64)  # the _KMV smallest value hashes

    def merge(self, missing, vals, counts, hashes) -> None:
        self.missing += missing
        self.count += sum(counts)
        self.sketch = np.union1d(self.sketch, hashes)[:_KMV]
        get = self.counts.get
        for v, c in zip(vals, counts):
            self.counts[v] = get(v, 0) + c
        if len(self.counts) > EXACT_UNIQUE:
            # Past the exact limit keep the most frequent values (their counts become lower
            # bounds) so memory stays bounded on an id column.
            self.approximate = True
            keep = sorted(self.counts.items(), key=lambda kv: -kv[1])[: EXACT_UNIQUE // 2]
            self.counts = dict(keep)

    def absorb(self, missing: int, count: int, counts: dict, sketch, approximate: bool) -> None:
        """Fold another fold's figures (a fan-out part's): the same result as folding its
        blocks here while neither passes ``EXACT_UNIQUE`` values; the sketch exactly so."""
        self.merge(missing, list(counts), list(counts.values()), np.asarray(sketch, np.uint64))
        self.count += count - sum(counts.values())  # a truncated fold's count is the true one
        self.approximate |= approximate

    def unique(self) -> int:
        if not self.approximate:
            return len(self.counts)
        if len(self.sketch) < _KMV:
            return len(self.sketch)
        return int(round((_KMV - 1) / (float(self.sketch[-1]) / 2.0**64)))

    def to_dict(self, kind: str) -> dict:
        top = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_K]
        d = {"kind": kind, "count": self.count, "missing": self.missing}
        d["unique"] = self.unique()
        if self.approximate:
            d["unique_approximate"] = True
        d["top"] = [[v if isinstance(v, int) else str(v), c] for v, c in top]
        return d


class _RowSample:
    """The statistics sample as it is folded: per block, its sampled rows' hashes once and
    each numeric column's values on those rows (with which rows it has), dropping the rows
    that fall past the threshold as it shrinks. At most about twice ``SAMPLE_VALUES`` rows are
    kept."""

    def __init__(self) -> None:
        self.blocks: list[tuple[np.ndarray, dict]] = []
        self.kept = 0
        self.limit: int | None = None  # the threshold every kept row is under (None: all)

    def add(self, rows: np.ndarray, columns: dict, limit: int | None) -> None:
        """One block: ``rows`` the hashes, ``columns`` name -> (values, present mask or None)."""
        self.blocks.append((rows, columns))
        self.kept += len(rows)
        # Earlier blocks kept a larger share: bound the memory. Pruning at twice the sample
        # (not just past it) keeps the work per row constant: about half of what is kept goes.
        if limit is not None and self.kept > 2 * SAMPLE_VALUES:
            self.keep_under(limit)

    def keep_under(self, limit: int | None) -> None:
        if limit is None or (self.limit is not None and limit >= self.limit):
            return  # nothing kept is at or past it
        # Block by block, not one concatenation: large arrays freed and reallocated again and
        # again fragment the heap and resident memory grows with the input.
        lim = np.uint64(limit)
        blocks = []
        for rows, columns in self.blocks:
            sel = rows < lim
            if sel.any():
                blocks.append((rows[sel], {k: _take(*vo, sel) for k, vo in columns.items()}))
        self.blocks = blocks
        self.kept = sum(len(rows) for rows, _ in blocks)
        self.limit = limit

    def sorted_values(self, name: str, limit: int | None) -> np.ndarray:
        """``np.sort(self.values(name, limit))``, sorted in the values' own dtype (float32 or
        int64: faster, and the conversion to float64 keeps the order)."""
        self.keep_under(limit)
        parts = [columns[name][0] for _, columns in self.blocks]
        if not parts:
            return np.zeros(0)
        return np.sort(np.concatenate(parts)).astype(np.float64)

    def values(self, name: str, limit: int | None) -> np.ndarray:
        """The column's sample (float64, input order) under the final threshold ``limit``."""
        self.keep_under(limit)
        parts = [columns[name][0] for _, columns in self.blocks]
        return np.concatenate([np.zeros(0), *parts]).astype(np.float64)


def _take(values: np.ndarray, on: np.ndarray | None, sel: np.ndarray):
    """(values, present) of the rows ``sel`` picks, ``values`` being those of the present."""
    if on is None:
        return values[sel], None
    return values[sel[on]], on[sel]


class Stats:
    """Statistics folded block by block, in input order."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.label = plan.label
        self.n = 0
        self.parsed = 0  # rows read, before dropping bad or unlabeled ones: sets the sample
        self.missing_label = 0
        self.cols = {
            h: _Categorical() if is_categorical(plan, h) else _Numeric() for h in plan.header
        }
        self.label_hist: dict = {}
        self.sample = _RowSample()
        self._unique: dict[str, int] = {}  # numeric columns' distinct counts, from to_dict

    def merge(self, part: dict) -> None:
        self.n += part["n"]
        limit = sample_threshold(self.parsed)
        rows, columns = part["hashes"], {}
        for k, (*figures, sample, on) in part["num"].items():
            self.cols[k].merge(*figures)
            columns[k] = (sample, on)
        if limit is not None:  # rows past the share the rows so far allow never come back
            sel = rows < np.uint64(limit)
            rows, columns = rows[sel], {k: _take(*vo, sel) for k, vo in columns.items()}
        self.sample.add(rows, columns, limit)
        for k, args in part["cat"].items():
            self.cols[k].merge(*args)
        if part["hist"] is not None:
            for v, c in zip(*part["hist"]):
                self.label_hist[v] = self.label_hist.get(v, 0) + c

    def unique(self, name: str) -> int:
        """Distinct present values of a column (approximate past the exact limits)."""
        col = self.cols[name]
        if isinstance(col, _Categorical):
            return col.unique()
        if name in self._unique:
            return self._unique[name]
        # what to_dict counts, without its quantiles and histogram
        return int(len(np.unique(self.sample.values(name, sample_threshold(self.parsed)))))

    @property
    def sampled(self) -> bool:
        """Whether quantiles and histograms come from a sample rather than every row."""
        return sample_threshold(self.parsed) is not None

    def to_dict(
        self, train_rows: int, eval_rows: int, vocab: list, skipped: int, kinds, workers: int = 1
    ) -> dict:
        """The ``stats.json`` document; ``kinds``: column -> its schema kind. ``workers``:
        threads for the numeric columns' sorts (numpy's sort lets other threads run)."""
        limit = sample_threshold(self.parsed)
        self.sample.keep_under(limit)  # before the threads: they only read the sample

        def one(k: str) -> dict:
            col = self.cols[k]
            if isinstance(col, _Categorical):
                return col.to_dict(kinds[k])
            return col.to_dict(kinds[k], self.sample.sorted_values(k, limit), is_sorted=True)

        if workers > 1 and len(self.cols) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers, thread_name_prefix="stats") as pool:
                feats = dict(zip(self.cols, pool.map(one, self.cols)))
        else:
            feats = {k: one(k) for k in self.cols}
        for k, f in feats.items():
            if "unique" in f and not isinstance(self.cols[k], _Categorical):
                self._unique[k] = f["unique"]
        for f in feats.values():
            if f["kind"] not in ("categorical", "id"):
                del f["unique"]  # the table shows it; stats.json keeps it for categories
        out = {"num_rows": self.n, "train_rows": train_rows, "eval_rows": eval_rows}
        out["skipped_rows"] = skipped
        out["missing_label_rows"] = self.missing_label
        out["features"] = {k: feats[k] for k in self.plan.header if k != self.label}
        out["label"] = {"name": self.label, **feats[self.label]}
        if self.label_hist:
            if vocab:
                out["label"]["histogram"] = {str(v): self.label_hist.get(v, 0) for v in vocab}
            else:
                out["label"]["histogram"] = {str(k): v for k, v in sorted(self.label_hist.items())}
        return out
