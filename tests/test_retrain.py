"""The unattended retrain's safety: data check, champion/challenger gate, lineage, rollback."""

import csv
import json
import os

import numpy as np
import pytest

from tests.conftest import run_tfpipes
from tfpipes.datacheck import Thresholds, check_data, js_divergence, rebinned, schema_changes
from tfpipes.errors import UserError
from tfpipes.gate import judge, parse_rules
from tfpipes.sample_data import write_csv


def _rewrite(src: str, dst: str, change) -> None:
    """Copy the CSV ``src`` to ``dst`` with ``change(header, rows)`` -> (header, rows)."""
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    header, body = change(rows[0], rows[1:])
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows([header, *body])


def _shift(column: str, by: float):
    def change(header, rows):
        i = header.index(column)
        return header, [r[:i] + [f"{float(r[i]) + by:.5f}"] + r[i + 1 :] for r in rows]

    return change


def _drop(column: str):
    def change(header, rows):
        i = header.index(column)
        return header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows]

    return change


def _shuffle_labels(header, rows):
    i = header.index("label")
    labels = [r[i] for r in rows]
    np.random.default_rng(0).shuffle(labels)
    return header, [r[:i] + [lab] + r[i + 1 :] for r, lab in zip(rows, labels)]


def _dataset(d, name: str, rows: int, seed: int, change=None) -> str:
    """A preprocessed data set ``d/name`` of write_csv's data (seed), changed by ``change``."""
    from tfpipes.preprocess import PreprocessConfig, preprocess

    src = os.path.join(d, f"{name}.csv")
    write_csv(src, rows, seed=seed)
    if change:
        _rewrite(src, src, change)
    out = os.path.join(d, name)
    preprocess(PreprocessConfig(src, out, "label", num_shards=1, progress=False))
    return out


def _docs(data: str):
    return tuple(json.load(open(os.path.join(data, n))) for n in ("schema.json", "stats.json"))


def test_rebinning_on_a_common_grid_keeps_all_mass_and_sees_a_shift():
    q = list(np.quantile(np.random.default_rng(0).normal(size=5000), np.linspace(0, 1, 21)))
    edges, p, r = rebinned(q, q)
    assert p.sum() == pytest.approx(1.0) and js_divergence(p, r) == pytest.approx(0.0)
    _, p, r = rebinned(q, [x + 2.0 for x in q])  # two std further: mostly disjoint
    assert p.sum() == pytest.approx(1.0) and r.sum() == pytest.approx(1.0)
    assert 0.4 < js_divergence(p, r) < 0.55  # N(0,1) vs N(2,1): about 0.47 bits
    # a constant feature is a point mass, not a division by zero
    _, p, r = rebinned([3.0] * 21, [3.0] * 21)
    assert p.sum() == pytest.approx(1.0) and js_divergence(p, r) == pytest.approx(0.0)
    assert js_divergence(*rebinned([3.0] * 21, [4.0] * 21)[1:]) == pytest.approx(1.0)


def test_drift_names_the_shifted_feature_and_not_an_unshifted_resample(tmp_path):
    ref = _docs(_dataset(tmp_path, "ref", 3000, seed=1))
    same = _docs(_dataset(tmp_path, "same", 3000, seed=2))
    shifted = _docs(_dataset(tmp_path, "shifted", 3000, seed=3, change=_shift("x3", 1.5)))
    th = Thresholds(on_drift="fail")

    r = check_data(*ref, *same, th)
    assert r.verdict == "pass", r.reason
    assert r.drifting == []

    r = check_data(*ref, *shifted, th)
    assert r.verdict == "fail"
    drifting = {(f.feature, f.metric): f.value for f in r.drifting}
    assert list(drifting) == [("x3", "js")], r.reason
    assert drifting["x3", "js"] > th.numeric_js
    assert "x3 js" in r.reason
    # per-feature thresholds replace the kind's; warn instead of fail
    loose = Thresholds(per_feature=(("x3", 0.99),))
    assert check_data(*ref, *shifted, loose).verdict == "pass"
    assert check_data(*ref, *shifted, Thresholds()).verdict == "warn"


def test_categorical_drift_new_values_missing_rise_and_label_shift():
    def cat(top, missing=0):
        return {"kind": "categorical", "count": sum(c for _, c in top), "missing": missing,
                "top": top, "unique": len(top)}  # fmt: skip

    old = {"features": {"color": cat([["red", 50], ["blue", 50]])},
           "label": {"name": "y", "histogram": {"0": 50, "1": 50}}}  # fmt: skip
    new = {"features": {"color": cat([["red", 40], ["blue", 30], ["pink", 30]], missing=25)},
           "label": {"name": "y", "histogram": {"0": 90, "1": 10}}}  # fmt: skip
    schema = {"features": [{"name": "color", "dtype": "string"}], "label": {"name": "y"}}
    r = check_data(schema, old, schema, new, Thresholds())
    got = {(f.feature, f.metric): round(f.value, 3) for f in r.drifting}
    assert got == {
        ("color", "linf"): 0.3,  # pink 0 -> 0.3
        ("color", "new_values"): 0.3,
        ("color", "missing_rise"): 0.2,  # 0 -> 25 of 125
        ("y", "linf"): 0.4,
    }
    assert r.verdict == "warn"
    pink = next(f for f in r.drifting if f.metric == "new_values")
    assert "'pink'" in pink.detail


def test_schema_changes_fail_whatever_the_thresholds():
    old = {"features": [{"name": "a", "dtype": "float32"}, {"name": "b", "dtype": "string"}],
           "label": {"name": "y", "dtype": "int64"}, "task": "classification"}  # fmt: skip
    new = {"features": [{"name": "b", "dtype": "int64"}, {"name": "c", "dtype": "float32"}],
           "label": {"name": "y", "dtype": "int64"}, "task": "classification"}  # fmt: skip
    assert schema_changes(old, new) == [
        "column 'a' is missing",
        "column 'b' was string/categorical, is now int64/numeric",
        "column 'c' is new",
    ]
    r = check_data(old, {}, new, {}, Thresholds(on_drift="warn"))
    assert r.verdict == "fail" and not r.passed and "column 'a' is missing" in r.reason


def test_gate_rules_absolute_and_against_the_champion():
    rules = parse_rules("accuracy>=0.8, accuracy>=champion-0.002, loss<=champion*1.01")
    good = {"accuracy": 0.9, "loss": 0.30}
    champ = {"accuracy": 0.9015, "loss": 0.298}
    g = judge(good, champ, rules, champion_version=4)
    assert g.blessed and g.verdict == "blessed" and "version 4" in g.reason
    g = judge({"accuracy": 0.85, "loss": 0.30}, champ, rules, 4)
    assert not g.blessed and g.reason == (
        "accuracy 0.85 is not >= 0.8995 (accuracy>=champion-0.002)"
    )
    assert g.champion == champ and g.challenger["accuracy"] == 0.85  # both metric sets kept
    g = judge({"accuracy": 0.5, "loss": 1.0}, {}, rules, None)  # nothing published
    assert not g.blessed and "accuracy 0.5 is not >= 0.8" in g.reason
    assert judge({"accuracy": 0.81, "loss": 9.0}, {}, rules, None).blessed
    forced = judge({"accuracy": 0.5, "loss": 1.0}, champ, rules, 4, force=True)
    assert forced.blessed and forced.forced and forced.verdict == "forced"
    assert forced.reason.startswith("forced (")
    with pytest.raises(UserError, match=r"--require 'accuracy=>1'"):
        parse_rules("accuracy=>1")
    with pytest.raises(UserError, match="no metric 'auc'"):
        judge(good, champ, parse_rules("auc>=0.5"), 4)


def test_check_data_cli_passes_with_nothing_published_and_fails_on_a_dropped_column(tmp_path):
    """`tfpipes check-data` against a base: nothing there passes and says so; a data set that
    lost a column, against the reference a published version stores, exits 2 naming it."""
    from tfpipes import lineage

    d = str(tmp_path)
    ref = _dataset(tmp_path, "ref", 400, seed=1)
    dropped = _dataset(tmp_path, "dropped", 400, seed=2, change=_drop("x4"))
    p = run_tfpipes("check-data", "--data", ref, "--base", "base", cwd=d)
    assert p.returncode == 0, p.stderr
    assert "no-reference" in p.stderr and "nothing is published" in p.stderr
    # a published version with its data set's documents (the SavedModel stands in: a marker)
    fake = tmp_path / "sm"
    (fake / "assets.extra").mkdir(parents=True)
    (fake / "saved_model.pb").write_bytes(b"x")
    (fake / "assets.extra" / "schema.json").write_text("{}")
    lineage.publish_version(str(fake), os.path.join(d, "base"), 1, {}, data=ref)
    p = run_tfpipes("check-data", "--data", dropped, "--base", "base", "--report", "r.md", cwd=d)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].endswith("schema changed: column 'x4' is missing")
    assert "column 'x4' is missing" in open(os.path.join(d, "r.md")).read()
    p = run_tfpipes("check-data", "--data", ref, "--base", "base", "--on-drift", "bad", cwd=d)
    assert p.returncode == 2 and "invalid choice" in p.stderr


@pytest.mark.slow
def test_three_retrains_a_broken_fourth_and_a_rollback_on_one_publish_base(tmp_path):
    """Through run-local on one publish base: 1 publishes version 1; 2 (same distribution,
    warm-started from 1) is blessed and publishes 2; 3 (labels shuffled) is not blessed and
    publishes nothing, saying why; 4 (a column dropped) fails the data check before training.
    `tfpipes models list` shows all of it; a rollback republishes 1 as 3, same predictions."""
    import tensorflow as tf
    from tfpipes_pipelines.training import run_local

    d = str(tmp_path)
    base = os.path.join(d, "serving", "m")
    csvs = {}
    for i, change in enumerate([None, None, _shuffle_labels, _drop("x4")], start=1):
        csvs[i] = os.path.join(d, f"day{i}.csv")
        write_csv(csvs[i], 1500, seed=20 + i)
        if change:
            _rewrite(csvs[i], csvs[i], change)

    def retrain(i: int) -> dict:
        params = {
            "source": csvs[i],
            "label": "label",
            "train_steps": 300,
            "num_shards": 2,
            "model_version": str(i),
            "publish_base": base,
            "warm_start_from": f"latest:{base}",
            "require": "accuracy>=0.6,accuracy>=champion-0.05",
        }
        return run_local(params, os.path.join(d, f"root{i}"))

    retrain(1)
    assert os.listdir(base) == ["1"]
    retrain(2)
    assert sorted(os.listdir(base)) == ["1", "2"]
    out3 = retrain(3)
    assert os.path.exists(os.path.join(out3["exported"], "3", "saved_model.pb"))  # exported...
    assert sorted(n for n in os.listdir(base) if n.isdigit()) == ["1", "2"]  # ...not published
    with pytest.raises(RuntimeError, match="check-data-op"):
        retrain(4)
    import glob

    assert glob.glob(os.path.join(d, "root4", "*", "check-data-op"))
    assert not glob.glob(os.path.join(d, "root4", "*", "train-op"))  # failed before training

    p = run_tfpipes("models", "list", "--base", base, "--json", cwd=d)
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert [(r["version"], r["outcome"]) for r in rows] == [
        (1, "published"),
        (2, "published"),
        (None, "not blessed"),
        (None, "data check failed"),
    ]
    assert "accuracy" in rows[2]["reason"] and "is not >= 0.6" in rows[2]["reason"]
    assert "column 'x4' is missing" in rows[3]["reason"]
    lin2 = json.loads(run_tfpipes("models", "show", "--base", base, "--version", "2", cwd=d).stdout)
    assert lin2["parent"] == os.path.join(base, "1")
    assert lin2["gate"]["verdict"] == "blessed" and lin2["gate"]["champion_version"] == 1
    assert lin2["data_check"]["verdict"] in ("pass", "warn")
    assert lin2["data"]["fingerprint"] and lin2["training"]["model"]["name"] == "mlp"
    assert lin2["metrics"]["accuracy"] >= 0.6 and lin2["tfpipes"]["version"]
    assert os.path.exists(os.path.join(base, "2", "assets.extra", "stats.json"))
    table = run_tfpipes("models", "list", "--base", base, cwd=d).stdout
    assert "not blessed" in table and "data check failed" in table

    p = run_tfpipes("models", "rollback", "--base", base, cwd=d)
    assert p.returncode == 0 and p.stdout.strip() == "3", p.stderr
    lin3 = json.loads(run_tfpipes("models", "show", "--base", base, cwd=d).stdout)
    assert (lin3["version"], lin3["rollback_of"], lin3["rolled_back_from"]) == (3, 1, 2)
    from tfpipes.records import dataset_row_records

    data = os.path.join(d, "day1")  # any eval rows of the same schema
    from tfpipes.preprocess import PreprocessConfig, preprocess

    preprocess(PreprocessConfig(csvs[1], data, "label", num_shards=1, progress=False))
    records = tf.constant(dataset_row_records(data, "eval", 50))
    out = {
        v: tf.saved_model.load(os.path.join(base, v))
        .signatures["serving_default"](examples=records)["logits"]
        .numpy()
        for v in ("1", "2", "3")
    }
    np.testing.assert_array_equal(out["3"], out["1"])
    assert not np.array_equal(out["3"], out["2"])
    p = run_tfpipes("models", "rollback", "--base", base, "--to", "9", cwd=d)
    assert p.returncode == 2 and "--to 9: not a published version" in p.stderr


def test_the_data_check_and_gate_reports_render_their_charts_in_chromium(tmp_path):
    from tests.chromium import render
    from tfpipes.gate import GateResult
    from tfpipes.retrain_reports import data_check_page, gate_page

    ref = _docs(_dataset(tmp_path, "ref", 2000, seed=1))
    shifted = _docs(_dataset(tmp_path, "shifted", 2000, seed=3, change=_shift("x3", 1.5)))
    r = check_data(*ref, *shifted, Thresholds())
    assert [f.feature for f in r.drifting] == ["x3"]
    pages = {
        "check.html": data_check_page(r, "gs://b/new", ref[1], shifted[1]),
        "gate.html": gate_page(
            GateResult(
                blessed=False,
                forced=False,
                reason="accuracy 0.61 < champion - 0.002",
                challenger={"accuracy": 0.61, "loss": 0.9, "examples": 400},
                champion={"accuracy": 0.93, "loss": 0.2, "examples": 400},
                champion_version=2,
                checks=("accuracy>=champion-0.002: 0.61 < 0.928",),
            ),
            "3",
        ),
    }
    for name, text in pages.items():
        (tmp_path / name).write_text(text)
    charts, console = render(str(tmp_path / "check.html"))
    assert console == [] and [c["kind"] for c in charts] == ["histogram"]
    assert charts[0]["shown"] and charts[0]["series"] == ["old", "new"] and charts[0]["bars"] > 5
    assert "x3: js" in pages["check.html"]
    charts, console = render(str(tmp_path / "gate.html"))
    assert console == [] and [c["kind"] for c in charts] == ["metrics"]
    assert charts[0]["bars"] == 4 and charts[0]["series"] == ["challenger", "champion"]
