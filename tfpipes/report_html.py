"""Self-contained HTML reports with inline SVG charts (KFP ``HTML`` artifacts).

The KFP UI shows an ``HTML`` artifact in a sandboxed frame, and a cluster may have no route to
the internet: so a report is one file with no script, no stylesheet, font or image from
anywhere else. Charts are plain SVG drawn here:

* :func:`histogram_pair` — a feature's distribution in two data sets (old vs new), bin by bin;
* :func:`metrics_bars` — metrics of two models side by side (champion vs challenger);
* :func:`line_chart` — curves over training steps (loss and eval metrics of a run).

Each returns an SVG fragment (``<svg class="chart" data-chart=KIND>``; bars are ``rect.bar``,
curves ``polyline.curve``, one ``data-series`` attribute each, so a test can count them);
:func:`table` an HTML table; :func:`page` joins sections into the document to write. Every
piece of text is HTML-escaped. Functions raise ValueError for data they cannot draw (series of
different lengths, no point at all).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence

WIDTH, HEIGHT = 560, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 28, 44  # plot margins: room for axis labels and title
# Colour-blind-safe pairs (Okabe-Ito); the first series of any chart is always the blue one.
COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 60em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
svg.chart { display: block; margin: 0.5em 0 1em; }
svg.chart text { font-size: 11px; fill: #333; }
svg.chart .title { font-size: 13px; font-weight: bold; }
svg.chart .axis { stroke: #888; stroke-width: 1; }
.note { color: #555; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def fmt(value: float) -> str:
    """A number as a report shows it: 4 significant digits."""
    return f"{value:.4g}"


def _svg(kind: str, title: str, body: list[str], legend: Sequence[str]) -> str:
    items = [
        f'<rect x="{_LEFT + i * 120}" y="{HEIGHT - 16}" width="10" height="10"'
        f' fill="{COLORS[i % len(COLORS)]}"/>'
        f'<text x="{_LEFT + i * 120 + 14}" y="{HEIGHT - 7}">{_e(name)}</text>'
        for i, name in enumerate(legend)
    ]
    return (
        f'<svg class="chart" data-chart="{kind}" xmlns="http://www.w3.org/2000/svg"'
        f' width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' aria-label="{_e(title)}">'
        f'<text class="title" x="{_LEFT}" y="16">{_e(title)}</text>'
        f'<line class="axis" x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH - _RIGHT}"'
        f' y2="{HEIGHT - _BOTTOM}"/>'
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{HEIGHT - _BOTTOM}"/>'
        + "".join(body)
        + "".join(items)
        + "</svg>"
    )


def _y_axis(lo: float, hi: float) -> tuple[list[str], Callable[[float], float]]:
    """Tick labels at lo, middle and hi, and the value -> y pixel function."""
    span = (hi - lo) or 1.0
    plot_h = HEIGHT - _TOP - _BOTTOM

    def y(v: float) -> float:
        return HEIGHT - _BOTTOM - (v - lo) / span * plot_h

    ticks = [
        f'<text x="{_LEFT - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>'
        for v in (lo, (lo + hi) / 2, hi)
    ]
    return ticks, y


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what}: needs at least one value, all finite")
    return out


def _bars(
    kind: str, title: str, groups: Sequence[str], series: Mapping[str, Sequence[float]]
) -> str:
    """Grouped bars: one group per label, one bar per series inside each group."""
    names = list(series)
    values = {n: _finite(series[n], f"{title}: series {n!r}") for n in names}
    if any(len(v) != len(groups) for v in values.values()):
        raise ValueError(f"{title}: every series needs one value per group ({len(groups)})")
    every = [v for vs in values.values() for v in vs]
    lo, hi = min(0.0, *every), max(0.0, *every)
    ticks, y = _y_axis(lo, hi)
    plot_w = WIDTH - _LEFT - _RIGHT
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.8 / len(names)
    body = list(ticks)
    for g, label in enumerate(groups):
        x0 = _LEFT + g * group_w + group_w * 0.1
        for s, name in enumerate(names):
            v = values[name][g]
            top, bottom = sorted((y(v), y(0.0)))
            body.append(
                f'<rect class="bar" data-series="{_e(name)}" x="{x0 + s * bar_w:.1f}"'
                f' y="{top:.1f}" width="{max(bar_w - 1, 1):.1f}" height="{bottom - top:.1f}"'
                f' fill="{COLORS[s % len(COLORS)]}"><title>{_e(name)} {_e(label)}: {fmt(v)}'
                "</title></rect>"
            )
        if len(groups) <= 12:  # more labels than that would overlap
            body.append(
                f'<text x="{x0 + group_w * 0.4:.1f}" y="{HEIGHT - _BOTTOM + 14}"'
                f' text-anchor="middle">{_e(label)}</text>'
            )
    return _svg(kind, title, body, names)


def histogram_pair(
    title: str,
    bins: Sequence[str],
    old: Sequence[float],
    new: Sequence[float],
    names: tuple[str, str] = ("old", "new"),
) -> str:
    """Two distributions of one feature over the same ``bins`` (labels: a numeric range or a
    category each), as fractions of each side's total, so data sets of different sizes
    compare. ``old``/``new``: counts (or fractions) per bin."""
    sides = []
    for side, counts in zip(names, (old, new)):
        counts = _finite(counts, f"{title}: {side}")
        total = sum(counts)
        sides.append([c / total for c in counts] if total else counts)
    return _bars("histogram", title, list(bins), dict(zip(names, sides)))


def metrics_bars(title: str, metrics: Mapping[str, Mapping[str, float]]) -> str:
    """Metrics of several models side by side: ``{model: {metric: value}}`` (e.g. champion and
    challenger), one group per metric that every model has, in the first model's order."""
    models = list(metrics)
    if not models:
        raise ValueError(f"{title}: no model to compare")
    shared = [m for m in metrics[models[0]] if all(m in metrics[x] for x in models)]
    if not shared:
        raise ValueError(f"{title}: the models have no metric in common")
    return _bars("metrics", title, shared, {x: [metrics[x][m] for m in shared] for x in models})


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]]) -> str:
    """Curves of ``(x, y)`` points (e.g. step, loss), one polyline per series and a dot per
    point (so a one-point series still shows); all series share both axes."""
    points = {n: sorted((float(x), float(y)) for x, y in pts) for n, pts in series.items() if pts}
    if not points:
        raise ValueError(f"{title}: no point to draw")
    xs = _finite([x for pts in points.values() for x, _ in pts], f"{title}: x")
    ys = _finite([y for pts in points.values() for _, y in pts], f"{title}: y")
    x_lo, x_hi = min(xs), max(xs)
    ticks, y = _y_axis(min(ys), max(ys))
    plot_w = WIDTH - _LEFT - _RIGHT

    def x(v: float) -> float:
        return _LEFT + (v - x_lo) / ((x_hi - x_lo) or 1.0) * plot_w

    body = list(ticks)
    for v, anchor in ((x_lo, "start"), (x_hi, "end")):
        body.append(
            f'<text x="{x(v):.1f}" y="{HEIGHT - _BOTTOM + 14}" text-anchor="{anchor}">'
            f"{fmt(v)}</text>"
        )
    for i, (name, pts) in enumerate(points.items()):
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in pts)
        body.append(
            f'<polyline class="curve" data-series="{_e(name)}" points="{coords}" fill="none"'
            f' stroke="{color}" stroke-width="2"/>'
        )
        body += [
            f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="2.5" fill="{color}">'
            f"<title>{_e(name)} @ {fmt(a)}: {fmt(b)}</title></circle>"
            for a, b in pts
        ]
    return _svg("line", title, body, list(points))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; numbers are right-aligned and shown with :func:`fmt`."""

    def cell(v: object) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f'<td class="num">{_e(fmt(v) if isinstance(v, float) else v)}</td>'
        return f"<td>{_e(v)}</td>"

    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def heading(text: str, level: int = 2) -> str:
    return f"<h{level}>{_e(text)}</h{level}>"


def paragraph(text: str, note: bool = False) -> str:
    return f"<p{' class=note' if note else ''}>{_e(text)}</p>"


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document: ``title`` as its title and first heading, then ``sections`` (HTML
    from the functions above, already escaped) in order."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>" + "\n".join(sections) + "</body></html>\n"
    )
