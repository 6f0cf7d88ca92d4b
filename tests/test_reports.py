"""HTML reports (tfpipes/report_html.py, the training step's report) rendered in headless
Chromium: every chart is laid out with the bars, curves and points it was given, nothing is
loaded from anywhere, and the browser logs no console message."""

import os
import re

import pytest

from tests.chromium import render
from tfpipes import report_html


def _no_outside_resources(text: str) -> None:
    # The SVG namespace is an identifier, not a load; nothing else may name a URL or a script.
    rest = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?:|//[a-z]|<script|<link|src=|@import", rest, re.I), rest[:500]


def test_the_three_charts_render_in_chromium(tmp_path):
    bins = [f"[{i}, {i + 1})" for i in range(10)]
    old = [5, 9, 14, 20, 25, 20, 14, 9, 5, 1]
    new = [0, 1, 5, 9, 14, 20, 25, 20, 14, 9]  # shifted by two bins
    text = report_html.page(
        "Data check & gate <test>",  # escaped, not markup
        [
            report_html.histogram_pair("income: old vs new", bins, old, new),
            report_html.metrics_bars(
                "champion vs challenger",
                {
                    "champion": {"accuracy": 0.91, "loss": 0.25, "auc": 0.95},
                    "challenger": {"accuracy": 0.93, "loss": 0.21, "auc": 0.96, "extra": 1.0},
                },
            ),
            report_html.line_chart(
                "loss by step",
                {
                    "train loss": [(s, 1.0 / (1 + s)) for s in range(0, 100, 10)],
                    "eval loss": [(50, 0.03), (99, 0.02)],
                },
            ),
            report_html.table(("metric", "value"), [("accuracy", 0.93), ("step", 100)]),
        ],
    )
    _no_outside_resources(text)
    assert "&lt;test&gt;" in text and "<test>" not in text
    path = tmp_path / "report.html"
    path.write_text(text)

    charts, console = render(str(path))
    assert console == []
    assert [c["kind"] for c in charts] == ["histogram", "metrics", "line"]
    assert all(c["shown"] for c in charts)
    hist, metrics, line = charts
    assert hist["bars"] == 19 and hist["series"] == ["old", "new"]  # new's empty first bin: no box
    assert metrics["bars"] == 6  # 3 shared metrics x 2 models; "extra" only one model has
    assert metrics["series"] == ["champion", "challenger"]
    assert line["curves"] == 2 and line["points"] == 12
    assert line["series"] == ["train loss", "eval loss"]


def test_histogram_pair_compares_fractions_not_counts():
    svg = report_html.histogram_pair("f", ["a", "b"], [10, 30], [1, 3])
    heights = re.findall(r'data-series="(old|new)"[^>]*height="([\d.]+)"', svg)
    assert [name for name, _ in heights] == ["old", "new", "old", "new"]
    assert heights[0][1] == heights[1][1]  # 25 % of either side
    assert heights[2][1] == heights[3][1] != heights[0][1]


def test_charts_refuse_what_they_cannot_draw():
    with pytest.raises(ValueError, match="one value per group"):
        report_html.histogram_pair("f", ["a", "b"], [1], [1, 2])
    with pytest.raises(ValueError, match="no metric in common"):
        report_html.metrics_bars("m", {"a": {"x": 1.0}, "b": {"y": 1.0}})
    with pytest.raises(ValueError, match="no point"):
        report_html.line_chart("l", {"a": []})
    with pytest.raises(ValueError, match="finite"):
        report_html.line_chart("l", {"a": [(0, float("nan"))]})


@pytest.mark.slow
def test_the_train_steps_report_is_html_with_the_runs_curves(tmp_path, capsys):
    from kfp.dsl import HTML, Dataset, Metrics, Model

    from components.steps import train_op
    from tfpipes.preprocess import PreprocessConfig, preprocess
    from tfpipes.sample_data import write_csv

    write_csv(str(tmp_path / "data.csv"), 600, "classification", seed=5)
    data = str(tmp_path / "data")
    preprocess(
        PreprocessConfig(str(tmp_path / "data.csv"), data, "label", num_shards=1, progress=False)
    )
    report = HTML(uri=str(tmp_path / "report.html"))
    for steps in (200, 300):  # a run, then its resume: the report shows the whole history
        train_op.python_func(
            examples=Dataset(uri=data),
            model=Model(uri=str(tmp_path / "model")),
            metrics=Metrics(uri=str(tmp_path / "metrics")),
            report=report,
            hidden="8",
            batch_size=32,
            train_steps=steps,
            checkpoint_every=100,
        )
    capsys.readouterr()
    text = open(report.path).read()
    _no_outside_resources(text)
    assert "Training: mlp" in text and "accuracy" in text

    from tfpipes.training.report import read_curves

    curves = read_curves(os.path.join(tmp_path, "model", "logs"))
    eval_steps = [s for s, _ in curves["eval"]["loss"]]
    assert eval_steps == [200, 300]  # one eval at the end of each run
    train_points = len(curves["train"]["loss"])
    assert train_points >= 3  # every --log-every (100) steps

    charts, console = render(report.path)
    assert console == []
    loss, others = charts
    assert (loss["kind"], others["kind"]) == ("line", "line")
    assert loss["series"] == ["train loss", "eval loss"] and loss["curves"] == 2
    assert loss["points"] == train_points + len(eval_steps)
    assert "eval accuracy" in others["series"]
    assert "train learning_rate" not in others["series"]
