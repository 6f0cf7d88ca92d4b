"""The data check of a retrain: a new data set against the one the published model learned from.

:func:`check_data` compares two data sets' ``schema.json`` and ``stats.json`` (the reference
is stored with every published version, see :mod:`tfpipes.lineage`):

- **schema**: a column missing, new, or of another dtype or kind, or another label or task, is a
  schema change; it always fails.
- **drift**, per feature, each figure against a threshold (:class:`Thresholds`, one per figure
  and optionally one per feature):

  * numeric features (and a regression label): the Jensen–Shannon divergence (base 2, 0..1)
    of the two distributions. The two data sets' histograms have different edges, so both are
    re-binned on one grid: the union of both sets' 21 quantiles (0, 5, ..., 100 %). A data
    set's mass in a grid bin is read from its CDF, piecewise linear through its own quantiles
    (a run of equal quantiles is a point mass: the CDF jumps there).
  * categorical features (and a classification label): the L-infinity distance of the value
    frequencies (the largest change of any value's share; values beyond the stored top list
    share one "other" bucket), with new and vanished values listed; their share counts
    against the same threshold. ``id`` features are skipped (every value is new by nature).
  * every feature: the rise of the missing fraction.

Above a threshold the result is a warning or a failure (``on_drift``). The figures are pure
functions of the JSON documents (no TensorFlow); :func:`check_dataset` reads them from storage.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from tfpipes.errors import UserError

if TYPE_CHECKING:  # numpy is imported where it is used: the CLI loads this module for --help
    import numpy as np

OTHER = "<other>"  # the bucket of values beyond a stats.json top list


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """Drift thresholds. numeric_js: JS divergence of a numeric feature. categorical_linf:
    L-inf distance of a categorical feature's frequencies (also the largest share new or
    vanished values may carry). missing_rise: rise of a feature's missing fraction. label: the
    label's JS divergence (regression) or L-inf distance (classification). per_feature:
    ``{feature: threshold}`` replacing the kind's figure for that feature. on_drift: ``warn``
    or ``fail``."""

    numeric_js: float = 0.1
    categorical_linf: float = 0.1
    missing_rise: float = 0.05
    label: float = 0.1
    per_feature: tuple[tuple[str, float], ...] = ()
    on_drift: str = "warn"

    def __post_init__(self) -> None:
        if self.on_drift not in ("warn", "fail"):
            raise UserError(f"--on-drift {self.on_drift!r}: expected warn or fail")
        for name in ("numeric_js", "categorical_linf", "missing_rise", "label"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{name.replace('_', '-')} {value}: expected 0..1")

    def for_feature(self, name: str, default: float) -> float:
        return dict(self.per_feature).get(name, default)


def parse_per_feature(text: str) -> tuple[tuple[str, float], ...]:
    """``name=0.2,other=0.05`` -> pairs; UserError naming the flag on a bad entry."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out.append((name.strip(), float(value)))
        except ValueError:
            raise UserError(f"--feature-threshold {item!r}: expected NAME=NUMBER") from None
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One figure of one feature: ``metric`` (js, linf, missing_rise, new_values,
    vanished_values), its ``value`` and ``threshold``; ``detail`` says what changed."""

    feature: str
    metric: str
    value: float
    threshold: float
    detail: str = ""

    @property
    def drifting(self) -> bool:
        return self.value > self.threshold


@dataclasses.dataclass(frozen=True)
class DataCheckResult:
    """verdict: ``pass``, ``warn`` (drift, on_drift=warn), ``fail`` (a schema change, or drift
    with on_drift=fail) or ``no-reference`` (nothing published yet: passes). findings: every
    figure computed; schema_changes: one line each. ``passed``: the run may go on."""

    verdict: str
    reason: str
    schema_changes: tuple[str, ...] = ()
    findings: tuple[Finding, ...] = ()
    reference: str = ""

    @property
    def passed(self) -> bool:
        return self.verdict != "fail"

    @property
    def drifting(self) -> list[Finding]:
        return [f for f in self.findings if f.drifting]

    def to_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "reference": self.reference,
            "schema_changes": list(self.schema_changes),
            "drifting": [dataclasses.asdict(f) for f in self.drifting],
        }

    def metrics(self) -> dict[str, float]:
        """Flat figures for a KFP Metrics artifact: ``<feature>.<metric>``, plus counts."""
        out = {f"{f.feature}.{f.metric}": round(f.value, 6) for f in self.findings}
        out["drifting_features"] = len({f.feature for f in self.drifting})
        out["schema_changes"] = len(self.schema_changes)
        return out


def no_reference(reason: str = "nothing is published yet") -> DataCheckResult:
    return DataCheckResult("no-reference", f"{reason}: no reference to compare with; passed")


def _columns(schema: dict) -> dict[str, tuple[str, str]]:
    """name -> (dtype, kind) of the features of a schema.json document."""
    out = {}
    for f in schema.get("features", []):
        kind = f.get("kind") or ("categorical" if f.get("dtype") == "string" else "numeric")
        out[f["name"]] = (f.get("dtype", ""), kind)
    return out


def schema_changes(old: dict, new: dict) -> list[str]:
    """One line per difference between two schema.json documents (features, label, task)."""
    a, b = _columns(old), _columns(new)
    out = [f"column {n!r} is missing" for n in a if n not in b]
    out += [f"column {n!r} is new" for n in b if n not in a]
    for n in a.keys() & b.keys():
        if a[n] != b[n]:
            out.append(f"column {n!r} was {a[n][0]}/{a[n][1]}, is now {b[n][0]}/{b[n][1]}")
    ol, nl = old.get("label", {}), new.get("label", {})
    if (ol.get("name"), ol.get("dtype")) != (nl.get("name"), nl.get("dtype")):
        out.append(f"label was {ol.get('name')!r} ({ol.get('dtype')}), is now {nl.get('name')!r}")
    if old.get("task") != new.get("task"):
        out.append(f"task was {old.get('task')!r}, is now {new.get('task')!r}")
    return sorted(out)


def _cdf(quantiles: list[float], x: np.ndarray) -> np.ndarray:
    """A right-continuous CDF, piecewise linear through ``quantiles`` (evenly spaced levels)."""
    import numpy as np

    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.linspace(0.0, 1.0, len(q))
    i = np.searchsorted(q, x, side="right")  # quantiles <= x
    out = np.where(i >= len(q), 1.0, 0.0)
    inner = (i > 0) & (i < len(q))
    j = np.clip(i, 1, len(q) - 1)
    lo, hi = q[j - 1], q[j]
    frac = np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    interp = levels[j - 1] + frac * (levels[j] - levels[j - 1])
    return np.where(inner, interp, out)


def rebinned(old_q: list[float], new_q: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grid edges, old mass, new mass) on the common grid of both quantile lists (see the
    module docstring); each mass sums to 1."""
    import numpy as np

    edges = np.unique(np.concatenate([old_q, new_q]).astype(np.float64))

    def mass(q):
        c = _cdf(q, edges)
        # the first bin also holds the mass at the lowest edge (a point mass there)
        return np.diff(np.concatenate([[0.0], c]))

    return edges, mass(old_q), mass(new_q)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (base 2: 0 equal, 1 disjoint) of two mass vectors."""
    import numpy as np

    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, min(1.0, (kl(p) + kl(q)) / 2))


def _frequencies(pairs, total: int) -> dict:
    freq = {str(v): c / total for v, c in pairs} if total else {}
    rest = 1.0 - sum(freq.values())
    if rest > 1e-9:
        freq[OTHER] = rest
    return freq


def categorical_findings(name: str, old: dict, new: dict, threshold: float) -> list[Finding]:
    """L-inf distance of two categorical stats' frequencies, and the new / vanished values."""
    a = _frequencies(old.get("top", []), old.get("count", 0))
    b = _frequencies(new.get("top", []), new.get("count", 0))
    keys = a.keys() | b.keys()
    worst = max(keys, key=lambda k: (abs(a.get(k, 0.0) - b.get(k, 0.0)), k), default=None)
    linf = abs(a.get(worst, 0.0) - b.get(worst, 0.0)) if worst is not None else 0.0
    out = [
        Finding(
            name,
            "linf",
            linf,
            threshold,
            f"share of {worst!r} {a.get(worst, 0.0):.3f} -> {b.get(worst, 0.0):.3f}"
            if worst is not None
            else "",
        )
    ]
    new_vals = sorted(k for k in b.keys() - a.keys() if k != OTHER)
    gone = sorted(k for k in a.keys() - b.keys() if k != OTHER)
    if new_vals:
        share = sum(b[k] for k in new_vals)
        out.append(Finding(name, "new_values", share, threshold, _listed(new_vals)))
    if gone:
        share = sum(a[k] for k in gone)
        out.append(Finding(name, "vanished_values", share, threshold, _listed(gone)))
    return out


def _listed(values: list[str], n: int = 5) -> str:
    more = f" and {len(values) - n} more" if len(values) > n else ""
    return ", ".join(repr(v) for v in values[:n]) + more


def numeric_finding(name: str, old: dict, new: dict, threshold: float) -> Finding:
    if not old.get("count") or not new.get("count"):
        return Finding(name, "js", 0.0, threshold, "no present values on one side")
    _, p, q = rebinned(old["quantiles"], new["quantiles"])
    js = js_divergence(p, q)
    detail = f"mean {old['mean']:.4g} -> {new['mean']:.4g}, std {old['std']:.4g} -> "
    detail += f"{new['std']:.4g}"
    return Finding(name, "js", js, threshold, detail)


def _missing_fraction(s: dict) -> float:
    total = s.get("count", 0) + s.get("missing", 0)
    return s.get("missing", 0) / total if total else 0.0


def drift_findings(old: dict, new: dict, th: Thresholds) -> list[Finding]:
    """Every figure of every feature both stats.json documents have, and of the label."""
    out: list[Finding] = []
    of, nf = old.get("features", {}), new.get("features", {})
    for name in sorted(of.keys() & nf.keys()):
        a, b = of[name], nf[name]
        kind = b.get("kind", "")
        if kind == "id":
            continue
        if "top" in a and "top" in b:
            out += categorical_findings(name, a, b, th.for_feature(name, th.categorical_linf))
        elif "quantiles" in a and "quantiles" in b:
            out.append(numeric_finding(name, a, b, th.for_feature(name, th.numeric_js)))
        ma, mb = _missing_fraction(a), _missing_fraction(b)
        out.append(
            Finding(
                name,
                "missing_rise",
                max(0.0, mb - ma),
                th.for_feature(name, th.missing_rise),
                f"missing {ma:.1%} -> {mb:.1%}",
            )
        )
    out += _label_findings(old.get("label", {}), new.get("label", {}), th)
    return out


def _label_findings(a: dict, b: dict, th: Thresholds) -> list[Finding]:
    name = b.get("name") or "label"
    limit = th.for_feature(name, th.label)
    ha, hb = a.get("histogram"), b.get("histogram")
    if isinstance(ha, dict) and isinstance(hb, dict) and "edges" not in ha:
        pairs = lambda h: sorted(h.items())  # noqa: E731
        old = {"top": pairs(ha), "count": sum(ha.values())}
        new = {"top": pairs(hb), "count": sum(hb.values())}
        return categorical_findings(name, old, new, limit)
    if "quantiles" in a and "quantiles" in b:
        return [numeric_finding(name, a, b, limit)]
    return []


def check_data(
    old_schema: dict, old_stats: dict, new_schema: dict, new_stats: dict, th: Thresholds
) -> DataCheckResult:
    """The verdict of a new data set against the reference one (see the module docstring)."""
    changes = schema_changes(old_schema, new_schema)
    if changes:
        return DataCheckResult("fail", "schema changed: " + "; ".join(changes), tuple(changes))
    findings = tuple(drift_findings(old_stats, new_stats, th))
    drifting = [f for f in findings if f.drifting]
    if not drifting:
        return DataCheckResult("pass", "no feature drifts above its threshold", (), findings)
    names = sorted({f.feature for f in drifting})
    reason = f"{len(names)} feature(s) drift: " + ", ".join(
        f"{f.feature} {f.metric} {f.value:.3f} > {f.threshold:g}" for f in drifting
    )
    return DataCheckResult("fail" if th.on_drift == "fail" else "warn", reason, (), findings)


def report_markdown(r: DataCheckResult, new_data: str) -> str:
    """The Markdown report: the verdict, the schema changes, each drifting feature with its
    figure, then every figure computed."""
    lines = [f"# Data check: {r.verdict}", "", f"Data set: `{new_data}`"]
    if r.reference:
        lines.append(f"Reference: `{r.reference}`")
    lines += ["", r.reason, ""]
    if r.schema_changes:
        lines += ["## Schema changes", ""] + [f"- {c}" for c in r.schema_changes] + [""]
    if r.drifting:
        lines += ["## Drifting features", "", "| feature | figure | value | threshold | what |"]
        lines.append("|---|---|---|---|---|")
        for f in r.drifting:
            lines.append(
                f"| {f.feature} | {f.metric} | {f.value:.4f} | {f.threshold:g} | {f.detail} |"
            )
        lines.append("")
    if r.findings:
        lines += ["## Every figure", "", "| feature | figure | value | threshold |"]
        lines.append("|---|---|---|---|")
        lines += [
            f"| {f.feature} | {f.metric} | {f.value:.4f} | {f.threshold:g} |" for f in r.findings
        ]
    return "\n".join(lines) + "\n"


def check_dataset(data: str, base: str, th: Thresholds) -> DataCheckResult:
    """Check the data set at ``data`` against the one the newest version published under
    ``base`` was trained on (passes with ``no-reference`` when nothing is published or
    ``base`` is empty). UserError naming the file when a document is missing or bad."""
    from tfpipes import layout, lineage, storage

    if not base:
        return no_reference("no publish base given")
    newest = lineage.newest_version(base)
    if newest is None:
        return no_reference(f"nothing is published under {base} yet")
    ref = lineage.reference_documents(base, newest)
    if ref is None:
        return no_reference(f"{layout.version_dir(base, newest)} stores no data set statistics")
    new_schema = layout.read_json_object(storage.join(data, layout.SCHEMA), "schema.json")
    r = check_data(ref[0], ref[1], new_schema, layout.read_stats(data), th)
    return dataclasses.replace(r, reference=layout.version_dir(base, newest))
