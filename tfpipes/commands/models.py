"""``tfpipes check-data | evaluate | models list|show|rollback``: the unattended retrain's safety.

See docs/retrain.md. The work is in :mod:`tfpipes.datacheck`, :mod:`tfpipes.gate` and
:mod:`tfpipes.lineage`; these handlers parse flags, call them and print.
"""

from __future__ import annotations

import argparse
import json
import sys

from tfpipes.commands import add_command


def add_threshold_flags(p: argparse.ArgumentParser) -> None:
    from tfpipes.datacheck import Thresholds

    d = Thresholds()
    p.add_argument("--numeric-js", type=float, default=d.numeric_js, help="JS divergence limit")
    p.add_argument(
        "--categorical-linf", type=float, default=d.categorical_linf, help="L-inf distance limit"
    )
    p.add_argument("--missing-rise", type=float, default=d.missing_rise, help="missing-share rise")
    p.add_argument("--label-shift", type=float, default=d.label, help="label distribution limit")
    p.add_argument(
        "--feature-threshold", default="", help="per-feature limits: NAME=NUMBER,... (any figure)"
    )
    p.add_argument("--on-drift", choices=["warn", "fail"], default=d.on_drift)


def thresholds_from_args(args):
    from tfpipes.datacheck import Thresholds, parse_per_feature

    return Thresholds(
        numeric_js=args.numeric_js,
        categorical_linf=args.categorical_linf,
        missing_rise=args.missing_rise,
        label=args.label_shift,
        per_feature=parse_per_feature(args.feature_threshold),
        on_drift=args.on_drift,
    )


def register(sub) -> None:
    c = add_command(
        sub,
        "check-data",
        _check_data,
        help="compare a data set with the one the published model was trained on",
        description="Schema changes fail; per-feature drift (JS divergence, L-inf distance, new\n"
        "or vanished values, missing share, label shift) above a threshold warns or fails.\n"
        "With nothing published under --base it passes and says so. Exit 2 on failure.\n\n"
        "example:\n  tfpipes check-data --data out/data --base serving/mymodel --on-drift fail",
    )
    c.add_argument("--data", required=True, help="the new data set")
    c.add_argument("--base", default="", help="publish base holding the reference version")
    c.add_argument("--report", default="", help="write the Markdown report here")
    add_threshold_flags(c)

    e = add_command(
        sub,
        "evaluate",
        _evaluate,
        help="champion/challenger gate: evaluate a SavedModel against the published one",
        description="Evaluate --model (a SavedModel) and the newest version under --base on the\n"
        "eval split of --data; blessed when every --require rule holds. With --publish a\n"
        "blessed model is published under --base with its lineage; a run that is not\n"
        "blessed is recorded there with its reason.\n\n"
        "example:\n  tfpipes evaluate --model exp/1 --data out/data --base serving/m \\\n"
        "      --require 'accuracy>=0.8,accuracy>=champion-0.002' --publish",
    )
    e.add_argument("--model", required=True, help="the challenger: a SavedModel directory")
    e.add_argument("--data", required=True, help="data set whose eval split both are judged on")
    e.add_argument("--base", default="", help="publish base (the champion: its newest version)")
    e.add_argument("--require", default="", help="rules, comma-separated (see docs/retrain.md)")
    e.add_argument("--force", action="store_true", help="bless whatever the rules say (recorded)")
    e.add_argument("--publish", action="store_true", help="publish to --base when blessed")
    e.add_argument("--version", type=int, default=0, help="published version (0: newest + 1)")
    e.add_argument("--report", default="", help="write the Markdown report here")

    m = add_command(
        sub,
        "models",
        help="published versions and their lineage; rollback",
        description="list: every published version and every run that published nothing.\n"
        "show: one version's lineage record. rollback: republish an earlier version under a\n"
        "new, higher number (nothing is deleted or edited).",
    )
    msub = m.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="versions and unpublished runs, oldest first")
    ml.add_argument("--base", required=True)
    ml.add_argument("--json", action="store_true", help="one JSON document")
    ml.set_defaults(handler=_list)
    ms = msub.add_parser("show", help="one version's lineage (default: the newest)")
    ms.add_argument("--base", required=True)
    ms.add_argument("--version", type=int, default=0)
    ms.set_defaults(handler=_show)
    mr = msub.add_parser("rollback", help="republish an earlier version as the newest")
    mr.add_argument("--base", required=True)
    mr.add_argument("--to", type=int, default=None, help="version to bring back (the previous)")
    mr.set_defaults(handler=_rollback)


def _check_data(args) -> int:
    from tfpipes import storage
    from tfpipes.datacheck import check_dataset, report_markdown
    from tfpipes.errors import UserError

    r = check_dataset(args.data, args.base, thresholds_from_args(args))
    if args.report:
        storage.write_text(args.report, report_markdown(r, args.data))
    for f in r.drifting:
        print(f"drift: {f.feature} {f.metric} {f.value:.4f} > {f.threshold:g} {f.detail}")
    print(f"check-data: {r.verdict}: {r.reason}", file=sys.stderr)
    if not r.passed:
        raise UserError(f"{args.data}: data check failed: {r.reason}")
    return 0


def _evaluate(args) -> int:
    from tfpipes import lineage, storage
    from tfpipes.gate import (
        champion_metrics,
        evaluate_saved_model,
        judge,
        parse_rules,
        report_markdown,
    )

    rules = parse_rules(args.require)
    challenger = evaluate_saved_model(args.model, args.data)
    version, champion = champion_metrics(args.base, args.data)
    g = judge(challenger, champion, rules, version, args.force)
    if args.report:
        storage.write_text(args.report, report_markdown(g, args.model))
    print(json.dumps(g.to_dict(), indent=2, sort_keys=True))
    print(f"evaluate: {g.verdict}: {g.reason}", file=sys.stderr)
    if args.publish:
        if not args.base:
            from tfpipes.errors import UserError

            raise UserError("--publish needs --base")
        if g.blessed:
            rec = lineage.lineage_record(
                version=0,
                data=args.data,
                parent=f"{args.base}/{version}" if version is not None else "",
                metrics=challenger,
                gate=g.to_dict(),
                forced=g.forced,
            )
            path = lineage.publish_version(args.model, args.base, args.version, rec, args.data)
            print(f"evaluate: published {path}", file=sys.stderr)
        else:
            rec = {"outcome": "not blessed", "reason": g.reason, "gate": g.to_dict()}
            lineage.record_run(args.base, {**rec, "data": args.data})
    return 0


def _list(args) -> int:
    from tfpipes import lineage

    rows = lineage.table(args.base)
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"{args.base}: nothing published, no runs recorded")
        return 0
    print(f"{'when':27} {'version':>7}  {'outcome':22} {'metrics':32} reason")
    for r in rows:
        m = r["metrics"]
        figures = " ".join(
            f"{k}={m[k]:.4g}" for k in ("accuracy", "loss", "mse") if isinstance(m.get(k), float)
        )
        v = "-" if r["version"] is None else str(r["version"])
        print(f"{r['when']:27} {v:>7}  {r['outcome']:22} {figures:32} {r['reason']}")
    return 0


def _show(args) -> int:
    from tfpipes import lineage
    from tfpipes.errors import UserError

    version = args.version or lineage.newest_version(args.base)
    if version is None:
        raise UserError(f"--base {args.base}: no published versions")
    print(json.dumps(lineage.read_lineage(args.base, version), indent=2, sort_keys=True))
    return 0


def _rollback(args) -> int:
    from tfpipes import lineage

    version, path = lineage.rollback(args.base, args.to)
    source = lineage.read_lineage(args.base, version)["rollback_of"]
    print(f"models rollback: {path} (a copy of version {source})", file=sys.stderr)
    print(version)
    return 0
