"""The training step's report: an HTML page with the run's loss and eval curves.

The curves are read back from the run's TensorBoard event files (``<model_dir>/logs/train``
and ``logs/eval``, written by the controller: the one record of every logged figure), so the
report shows the whole history of the model directory, resumed runs included.
"""

from __future__ import annotations

import os

from tfpipes import report_html, storage

# Train-split tags that are not curves of the model (they would only squash the loss axis).
_NOT_MODEL_CURVES = frozenset({"learning_rate", "examples_per_second", "loss_scale"})


def read_curves(logs_dir: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{split: {tag: [(step, value), ...]}}`` of the scalar summaries under ``logs_dir``
    (local or remote; ``train`` and ``eval`` sub-folders), sorted by step; a later event of
    the same step (a resumed run redoing it) replaces the earlier one. Missing folders give
    empty splits."""
    import tensorflow as tf

    curves: dict[str, dict[str, dict[int, float]]] = {"train": {}, "eval": {}}
    if not storage.is_dir(logs_dir):
        return {split: {} for split in curves}
    with storage.local_dir(logs_dir) as root:
        for split, tags in curves.items():
            folder = os.path.join(root, split)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):  # event files sort by creation time
                for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
                    for v in event.summary.value:
                        if v.HasField("tensor"):
                            value = float(tf.make_ndarray(v.tensor))
                        else:
                            value = float(v.simple_value)
                        tags.setdefault(v.tag, {})[int(event.step)] = value
    return {
        split: {tag: sorted(points.items()) for tag, points in tags.items()}
        for split, tags in curves.items()
    }


def training_report(
    title: str, model_dir: str, metrics: dict, logs_dir: str, start_step: int, final_step: int
) -> str:
    """The report's HTML: the loss of both splits over the steps, the other eval metrics over
    the steps, the final metrics as a table and where the TensorBoard logs are."""
    curves = read_curves(logs_dir)
    train, evals = curves["train"], curves["eval"]
    sections = [
        report_html.paragraph(f"Steps {start_step} -> {final_step}. Model directory: {model_dir}")
    ]
    loss = {f"{split} loss": c["loss"] for split, c in curves.items() if c.get("loss")}
    if loss:
        sections += [report_html.heading("Loss"), report_html.line_chart("loss by step", loss)]
    others = {f"eval {tag}": pts for tag, pts in sorted(evals.items()) if tag != "loss" and pts}
    others.update(
        (f"train {tag}", pts)
        for tag, pts in sorted(train.items())
        if tag != "loss" and tag not in _NOT_MODEL_CURVES and pts
    )
    if others:
        sections += [
            report_html.heading("Eval metrics"),
            report_html.line_chart("eval metrics by step", others),
        ]
    if not loss and not others:
        sections.append(report_html.paragraph(f"No summaries found in {logs_dir}.", note=True))
    rows = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float))]
    sections += [
        report_html.heading("Final metrics"),
        report_html.table(("metric", "value"), rows),
        report_html.paragraph(f"TensorBoard: tensorboard --logdir {logs_dir}", note=True),
    ]
    return report_html.page(title, sections)
