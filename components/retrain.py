"""The unattended retrain's safety steps: data check, champion/challenger gate, publish.

(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)

Adapters over :mod:`tfpipes.datacheck`, :mod:`tfpipes.gate` and :mod:`tfpipes.lineage`, run in
the tfpipes image like :mod:`tfpipes_components.steps`. A run that publishes nothing (a failed
data check, a challenger not blessed) leaves its record under ``<publish_base>/_tfpipes_runs/``
(the step's own artifacts are lost with a failed KFP task), so ``tfpipes models list`` shows it.
"""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output
from tfpipes_components.steps import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def check_data_op(
    examples: Input[Dataset],
    report: Output[HTML],
    drift: Output[Metrics],
    publish_base: str = "",
    numeric_js: float = 0.1,
    categorical_linf: float = 0.1,
    missing_rise: float = 0.05,
    label_shift: float = 0.1,
    feature_thresholds: str = "",
    on_drift: str = "warn",
) -> str:
    """Compare ``examples`` with the data set the newest version under ``publish_base`` was
    trained on; returns the verdict as JSON (what publish_op records in the lineage). A schema
    change, or drift with ``on_drift`` ``fail``, fails the step (exit 2) before training."""
    import json

    from tfpipes import layout, lineage
    from tfpipes.datacheck import Thresholds, check_dataset, parse_per_feature
    from tfpipes.errors import UserError, exit_on_error
    from tfpipes.retrain_reports import data_check_page

    with exit_on_error("check-data"):
        th = Thresholds(
            numeric_js=numeric_js,
            categorical_linf=categorical_linf,
            missing_rise=missing_rise,
            label=label_shift,
            per_feature=parse_per_feature(feature_thresholds),
            on_drift=on_drift,
        )
        r = check_dataset(examples.path, publish_base, th)
        newest = lineage.newest_version(publish_base) if publish_base else None
        ref = lineage.reference_documents(publish_base, newest) if newest is not None else None
        page = data_check_page(
            r, examples.uri, ref[1] if ref else {}, layout.read_stats(examples.path)
        )
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(page)
        for k, v in r.metrics().items():
            drift.log_metric(k, v)
        with open(drift.path, "w") as f:
            json.dump(r.metrics(), f, indent=2)
        print(f"check-data: {r.verdict}: {r.reason}")
        if not r.passed:
            record = {"outcome": "data check failed", "reason": r.reason, "data": examples.uri}
            lineage.record_run(publish_base, {**record, "data_check": r.to_dict()})
            raise UserError(f"{examples.uri}: data check failed: {r.reason}")
    return json.dumps(r.to_dict(), sort_keys=True)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    exported: Input[Model],
    examples: Input[Dataset],
    report: Output[HTML],
    gate_metrics: Output[Metrics],
    publish_base: str = "",
    require: str = "",
    force: bool = False,
    data_check: str = "",
) -> str:
    """The gate: the exported challenger and the newest version under ``publish_base`` (the
    champion) on the eval split of ``examples``; ``require``: the rules (tfpipes.gate).
    Returns ``blessed`` or ``not blessed`` (the pipeline publishes only on the first; one plain
    output, as kfp.local's condition evaluator resolves only a task's ``Output``); the verdict
    is the JSON content of ``gate_metrics``. The report, both metric sets and the reason are
    written for every run; a run not blessed is recorded under ``publish_base``."""
    import json
    import os

    from tfpipes import lineage, storage
    from tfpipes.errors import exit_on_error
    from tfpipes.gate import (
        champion_metrics,
        evaluate_saved_model,
        judge,
        parse_rules,
    )
    from tfpipes.retrain_reports import gate_page

    with exit_on_error("evaluate"):
        # KFP hands numbers in metadata back as floats (1 -> 1.0)
        saved = storage.join(exported.path, str(int(exported.metadata["version"])))
        rules = parse_rules(require, flag="require")
        challenger = evaluate_saved_model(saved, examples.path)
        version, champion = champion_metrics(publish_base, examples.path)
        g = judge(challenger, champion, rules, version, force)
        with open(report.path, "w", encoding="utf-8") as f:
            f.write(gate_page(g, os.path.basename(saved)))
        for k, v in challenger.items():
            gate_metrics.log_metric(f"challenger.{k}", v)
        for k, v in champion.items():
            gate_metrics.log_metric(f"champion.{k}", v)
        gate_metrics.log_metric("blessed", int(g.blessed))
        with open(gate_metrics.path, "w") as f:
            json.dump(g.to_dict(), f, indent=2, sort_keys=True)
        print(f"evaluate: {g.verdict}: {g.reason}")
        if not g.blessed:
            record = {"outcome": "not blessed", "reason": g.reason, "data": examples.uri}
            check = json.loads(data_check) if data_check else {}
            lineage.record_run(publish_base, {**record, "gate": g.to_dict(), "data_check": check})
    return "blessed" if g.blessed else "not blessed"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_op(
    exported: Input[Model],
    examples: Input[Dataset],
    model: Input[Model],
    gate: Input[Metrics],
    publish_base: str,
    data_check: str = "",
    warm_start_from: str = "",
    image: str = "",
) -> str:
    """Publish the exported version to ``publish_base``/<version>/ with its lineage (the data
    set, the parent version, tfpipes' version and ``image``, the training configuration, the
    gate's metrics and both verdicts) and the data set's schema and statistics (``image``: the
    pipeline passes the image it was compiled for; a default here would not reach the
    container, which runs this function's source alone). Returns the
    version directory. A version that exists is never replaced (exit 2)."""
    import json

    from tfpipes import layout, lineage, manifest, storage
    from tfpipes.errors import exit_on_error

    if not publish_base:
        print("publish: no publish_base; the export stays in its artifact")
        return ""
    with exit_on_error("publish"):
        version = int(exported.metadata["version"])  # a float in KFP's metadata
        saved = storage.join(exported.path, str(version))
        verdict = layout.read_json_object(gate.path, "gate verdict")
        model_dir = model.metadata.get("model_dir") or layout.resolve_model_dir(model.path)
        config = layout.read_json_object(
            storage.join(model_dir, layout.MODEL_CONFIG), "model config"
        )
        parent = warm_start_from
        if parent.startswith("latest:"):
            champ = verdict.get("champion_version")
            parent = "" if champ is None else layout.version_dir(parent[len("latest:") :], champ)
        record = lineage.lineage_record(
            version=version,
            data=examples.uri,
            # an imported data set (the pipelines' OneOf of two branches) has no metadata
            fingerprint=examples.metadata.get("source_hash")
            or manifest.read_manifest(examples.path).source_hash,
            parent=parent,
            image=image,
            training={k: config.get(k) for k in ("model", "optimizer", "run") if k in config}
            | {"step": int(model.metadata.get("step") or 0)},
            metrics=verdict.get("challenger", {}),
            data_check=json.loads(data_check) if data_check else {},
            gate=verdict,
            forced=bool(verdict.get("forced")),
        )
        path = lineage.publish_version(saved, publish_base, version, record, examples.path)
    print(f"publish: {path}")
    return path
