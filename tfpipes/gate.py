"""The champion/challenger gate: may a newly trained model replace the published one?

Both models are SavedModels evaluated by :func:`evaluate_saved_model` on the same eval split of
the new data set (the figures ``tfpipes train`` reports: ``loss``, and ``accuracy`` or
``mse``). :func:`judge` applies the rules, each ``METRIC OP RHS`` with OP one of ``>= <= > <``
and RHS a number (an absolute threshold: ``accuracy>=0.8``) or ``champion``, ``champion-X``,
``champion+X``, ``champion*X`` (a tolerance against the published model:
``accuracy>=champion-0.002``, ``loss<=champion*1.01``). The challenger is blessed when every
rule holds; a champion rule holds trivially when nothing is published yet. A forced gate
blesses whatever the rules say, and says so.
"""

from __future__ import annotations

import dataclasses
import operator
import re

from tfpipes.errors import UserError, first_line

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_RULE = re.compile(
    r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*"
    r"(?:(champion)\s*(?:([-+*])\s*([0-9.eE+-]+))?|([-+]?[0-9.eE+-]+))\s*$"
)


@dataclasses.dataclass(frozen=True)
class Rule:
    """``metric op rhs``; ``relative``: rhs is computed from the champion's metric with
    ``combine`` (``-``, ``+``, ``*``, or "" for the champion's value itself) and ``value``."""

    metric: str
    op: str
    value: float
    relative: bool = False
    combine: str = ""
    text: str = ""

    def bound(self, champion: dict) -> float | None:
        """The figure the challenger's metric is compared with (None: no champion value)."""
        if not self.relative:
            return self.value
        if self.metric not in champion:
            return None
        c = float(champion[self.metric])
        return {"": c, "-": c - self.value, "+": c + self.value, "*": c * self.value}[self.combine]


def parse_rules(text: str, flag: str = "--require") -> tuple[Rule, ...]:
    """Comma-separated rules -> Rules; UserError naming ``flag`` and the bad rule."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        m = _RULE.match(item)
        try:
            if not m:
                raise ValueError
            metric, op, champ, combine, rel, number = m.groups()
            if champ:
                value = float(rel) if rel else 0.0
                out.append(Rule(metric, op, value, True, combine or "", item))
            else:
                out.append(Rule(metric, op, float(number), False, "", item))
        except ValueError:
            raise UserError(
                f"{flag} {item!r}: expected METRIC OP NUMBER or METRIC OP champion[-+*]NUMBER "
                "(e.g. accuracy>=0.8, loss<=champion*1.01)"
            ) from None
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class GateResult:
    """blessed: the challenger may be published. forced: blessed only because it was forced.
    reason: one line. checks: one line per rule. champion_version: None when nothing is
    published."""

    blessed: bool
    forced: bool
    reason: str
    challenger: dict
    champion: dict
    champion_version: int | None
    checks: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        if self.forced:
            return "forced"
        return "blessed" if self.blessed else "not blessed"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["checks"] = list(self.checks)
        d["verdict"] = self.verdict
        return d


def judge(
    challenger: dict,
    champion: dict,
    rules: tuple[Rule, ...],
    champion_version: int | None = None,
    force: bool = False,
) -> GateResult:
    """Apply ``rules`` to the challenger's metrics (see the module docstring)."""
    checks, failed = [], []
    for r in rules:
        if r.metric not in challenger:
            raise UserError(
                f"--require {r.text!r}: the evaluation has no metric {r.metric!r} "
                f"(it has {', '.join(sorted(challenger))})"
            )
        got = float(challenger[r.metric])
        bound = None if r.relative and champion_version is None else r.bound(champion)
        if r.relative and bound is None:
            checks.append(f"{r.text}: no champion, holds")
            continue
        ok = OPS[r.op](got, bound)
        line = f"{r.metric} {got:.4g} {r.op} {bound:.4g} ({r.text}): {'ok' if ok else 'FAILS'}"
        checks.append(line)
        if not ok:
            failed.append(f"{r.metric} {got:.4g} is not {r.op} {bound:.4g} ({r.text})")
    if failed:
        reason = "; ".join(failed)
    elif champion_version is None:
        reason = "nothing published yet; " + ("every rule holds" if rules else "no rules")
    else:
        reason = f"every rule holds against version {champion_version}"
    if force:
        reason = f"forced ({reason})"
    return GateResult(
        blessed=force or not failed,
        forced=force and bool(failed),
        reason=reason,
        challenger=dict(challenger),
        champion=dict(champion),
        champion_version=champion_version,
        checks=tuple(checks),
    )


def evaluate_saved_model(saved_model: str, data: str, batch_size: int = 256) -> dict:
    """Loss and accuracy (classification) or MSE (regression) of the SavedModel at
    ``saved_model`` (local or gs://, a ``tfpipes export``) on the eval split of the data set
    ``data``, computed as training computes them. UserError when either is not what it should
    be (no SavedModel, another schema, no eval rows)."""
    import tensorflow as tf

    from tfpipes import layout, storage
    from tfpipes.input_pipeline import feature_spec, label_transform
    from tfpipes.manifest import verify_dataset
    from tfpipes.records import row_record_dataset
    from tfpipes.schema import load_schema
    from tfpipes.training.step import evaluate

    if not storage.exists(storage.join(saved_model, layout.SAVED_MODEL_PB)):
        raise UserError(f"{saved_model}: no SavedModel ({layout.SAVED_MODEL_PB})")
    schema = load_schema(data)
    classification = schema.task != "regression"
    label = schema.label.name
    label_spec = {label: feature_spec(schema)[label]}
    to_target = label_transform(schema)
    with storage.local_dir(saved_model) as sm, storage.local_dir(data) as root:
        loaded = tf.saved_model.load(sm)
        if "serving_default" not in loaded.signatures:
            raise UserError(f"{saved_model}: has no 'serving_default' signature")
        serve = loaded.signatures["serving_default"]

        # The serialized Examples go to the SavedModel as TF Serving would send them: it parses
        # the features itself, so a model with another schema fails here, not silently.
        def model(records, training=False):
            out = serve(examples=records)
            if classification:
                return out["logits"]
            return tf.expand_dims(out["predictions"], -1)

        m = verify_dataset(root)
        if not m.shard_paths("eval"):
            raise UserError(f"{data}: the data set has no eval split")
        ds = row_record_dataset(root, m, schema, "eval", batch_size).map(
            lambda r: (r, to_target(tf.io.parse_example(r, label_spec)[label]))
        )
        try:
            metrics = evaluate(model, classification, ds)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
            raise UserError(
                f"{saved_model}: cannot be evaluated on {data} ({first_line(e)})"
            ) from None
    if not metrics.get("examples"):
        raise UserError(f"{data}: the eval split is empty; nothing to evaluate on")
    return metrics


def champion_metrics(base: str, data: str) -> tuple[int | None, dict]:
    """(the newest published version under ``base``, its metrics on ``data``'s eval split), or
    (None, {}) when nothing is published."""
    from tfpipes import layout, lineage

    newest = lineage.newest_version(base) if base else None
    if newest is None:
        return None, {}
    return newest, evaluate_saved_model(layout.version_dir(base, newest), data)


def report_markdown(g: GateResult, challenger_name: str) -> str:
    """The gate's Markdown report: verdict, reason, every rule, both metric sets."""
    champ = "none" if g.champion_version is None else f"version {g.champion_version}"
    lines = [
        f"# Gate: {g.verdict}",
        "",
        f"Challenger: `{challenger_name}`; champion: {champ}",
        "",
        g.reason,
        "",
    ]
    if g.checks:
        lines += ["## Rules", ""] + [f"- {c}" for c in g.checks] + [""]
    keys = sorted(g.challenger.keys() | g.champion.keys())
    lines += ["| metric | challenger | champion |", "|---|---|---|"]
    for k in keys:
        a, b = g.challenger.get(k, ""), g.champion.get(k, "")
        lines.append(f"| {k} | {_fmt(a)} | {_fmt(b)} |")
    return "\n".join(lines) + "\n"


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, (int, float)) else str(x)
