"""The data check's and the gate's reports as HTML pages with inline charts (the KFP UI shows
an ``HTML`` artifact): old-vs-new distributions of each drifting feature, and the champion's and
challenger's metrics side by side. Drawn by :mod:`tfpipes.report_html` (SVG, no network)."""

from __future__ import annotations

from tfpipes import report_html as h
from tfpipes.datacheck import DataCheckResult, Finding, rebinned
from tfpipes.gate import GateResult

MAX_CATEGORIES = 20  # bars per categorical chart: the most frequent values, the rest as one


def data_check_page(r: DataCheckResult, new_data: str, old_stats: dict, new_stats: dict) -> str:
    """The data check's page: verdict, schema changes, a chart per drifting feature (its old
    and new distribution on one grid), and every figure computed."""
    sections = [h.paragraph(f"Verdict: {r.verdict}. {r.reason}"), h.paragraph(f"Data: {new_data}")]
    if r.reference:
        sections.append(h.paragraph(f"Reference: {r.reference}", note=True))
    if r.schema_changes:
        sections += [
            h.heading("Schema changes"),
            h.table(["change"], [[c] for c in r.schema_changes]),
        ]
    charted: set[str] = set()
    for f in r.drifting:
        chart = _drift_chart(f, old_stats, new_stats)
        if chart and f.feature not in charted:
            charted.add(f.feature)
            sections += [
                h.heading(f"{f.feature}: {f.metric} {f.value:.3f} > {f.threshold:g}"),
                chart,
            ]
    if r.findings:
        rows = [[f.feature, f.metric, f.value, f.threshold, f.detail] for f in r.findings]
        sections += [
            h.heading("Every figure"),
            h.table(["feature", "figure", "value", "threshold", "what"], rows),
        ]
    return h.page(f"Data check: {r.verdict}", sections)


def _feature_stats(stats: dict, name: str) -> dict:
    if name == (stats.get("label") or {}).get("name"):
        return stats["label"]
    return (stats.get("features") or {}).get(name) or {}


def _drift_chart(f: Finding, old_stats: dict, new_stats: dict) -> str:
    old, new = _feature_stats(old_stats, f.feature), _feature_stats(new_stats, f.feature)
    if f.metric == "js" and old.get("quantiles") and new.get("quantiles"):
        edges, p, q = rebinned(old["quantiles"], new["quantiles"])
        labels = [f"≤ {h.fmt(float(e))}" for e in edges]
        return h.histogram_pair(f"{f.feature} (share of rows)", labels, list(p), list(q))
    if old.get("top") and new.get("top"):
        a = {str(v): c for v, c in old["top"]}
        b = {str(v): c for v, c in new["top"]}
        values = sorted(a.keys() | b.keys(), key=lambda v: -(a.get(v, 0) + b.get(v, 0)))
        values = values[:MAX_CATEGORIES]
        return h.histogram_pair(
            f"{f.feature} (share of rows)",
            values,
            [a.get(v, 0) for v in values],
            [b.get(v, 0) for v in values],
        )
    if old.get("histogram") and new.get("histogram") and isinstance(old["histogram"], dict):
        if "counts" not in old["histogram"]:  # the label's class histogram
            keys = sorted(old["histogram"].keys() | new["histogram"].keys())
            return h.histogram_pair(
                f"{f.feature} (share of rows)",
                keys,
                [old["histogram"].get(k, 0) for k in keys],
                [new["histogram"].get(k, 0) for k in keys],
            )
    return ""


def gate_page(g: GateResult, challenger_name: str) -> str:
    """The gate's page: verdict and reason, every rule, and both models' metrics (a chart of
    the metrics both have, and a table of all)."""
    champ = "none" if g.champion_version is None else f"version {g.champion_version}"
    sections = [
        h.paragraph(f"Verdict: {g.verdict}. {g.reason}"),
        h.paragraph(f"Challenger: {challenger_name}; champion: {champ}"),
    ]
    if g.checks:
        sections += [h.heading("Rules"), h.table(["rule"], [[c] for c in g.checks])]
    models = {"challenger": _numbers(g.challenger)}
    if g.champion:
        models["champion"] = _numbers(g.champion)
    shared = [k for k in models["challenger"] if all(k in m for m in models.values())]
    if shared:
        sections += [
            h.heading("Metrics"),
            h.metrics_bars(
                "champion vs challenger", {n: {k: m[k] for k in shared} for n, m in models.items()}
            ),
        ]
    keys = sorted(g.challenger.keys() | g.champion.keys())
    rows = [[k, g.challenger.get(k, ""), g.champion.get(k, "")] for k in keys]
    sections.append(h.table(["metric", "challenger", "champion"], rows))
    return h.page(f"Gate: {g.verdict}", sections)


def _numbers(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "examples"
    }
