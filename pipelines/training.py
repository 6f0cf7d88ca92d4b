"""preprocess -> train -> export as one KFP v2 pipeline; compile it or run it with kfp.local."""

import os
import warnings
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components import export_op, preprocess_op, train_op

PIPELINE_NAME = "tfpipes-training"


class TrainingOutputs(NamedTuple):
    examples: Dataset
    model: Model
    metrics: Metrics
    exported: Model


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="CSV -> TFRecords (schema, stats, split) -> custom-loop training -> SavedModel",
)
def training_pipeline(
    source: str,
    label: str,
    model_name: str = "mlp",
    hidden: str = "64,32",
    optimizer: str = "",
    learning_rate: float = 0.0,
    batch_size: int = 64,
    train_steps: int = 1000,
    eval_fraction: float = 0.2,
    num_shards: int = 8,
    checkpoint_dir: str = "",
    model_version: str = "",
    publish_base: str = "",
) -> TrainingOutputs:
    """``model_version``: the exported version number; empty: the export time in epoch
    seconds. Recurring runs pass ``[[ScheduledTime]]`` (YYYYMMDDhhmmss, UTC), so each
    scheduled retrain publishes a version named after its schedule time."""
    pre = preprocess_op(
        source=source, label=label, eval_fraction=eval_fraction, num_shards=num_shards
    )
    tr = train_op(
        examples=pre.outputs["examples"],
        model_name=model_name,
        hidden=hidden,
        optimizer=optimizer,
        learning_rate=learning_rate,
        batch_size=batch_size,
        train_steps=train_steps,
        checkpoint_dir=checkpoint_dir,
    )
    # Training is not cached: the same inputs may be retrained on purpose (a new seed, a
    # checkpoint directory that moved on); KFP's cache key would not see that.
    tr.set_caching_options(False)
    ex = export_op(
        model=tr.outputs["model"],
        examples=pre.outputs["examples"],
        version=model_version,
        publish_base=publish_base,
    )
    ex.set_caching_options(False)
    return TrainingOutputs(
        examples=pre.outputs["examples"],
        model=tr.outputs["model"],
        metrics=tr.outputs["metrics"],
        exported=ex.outputs["exported"],
    )


def compile_pipeline(path: str) -> str:
    """Write the pipeline spec (YAML) to ``path``; returns the path."""
    compiler.Compiler().compile(training_pipeline, package_path=path)
    return path


def run_local(params: dict, pipeline_root: str, runner: str = "subprocess") -> dict[str, str]:
    """Run the whole pipeline with kfp.local; returns {output name: local artifact path}.

    runner: ``subprocess`` (this Python environment; nothing installed at run time) or
    ``docker`` (each component in the tfpipes image).
    """
    from kfp import local

    os.makedirs(pipeline_root, exist_ok=True)
    if runner == "subprocess":
        cfg = local.SubprocessRunner(use_venv=False)
    elif runner == "docker":
        cfg = local.DockerRunner()
    else:
        raise ValueError(f"unknown runner {runner!r}")
    local.init(runner=cfg, pipeline_root=os.path.abspath(pipeline_root), raise_on_error=True)
    with warnings.catch_warnings():
        # The subprocess runner warns about any base image without "python" in its name.
        warnings.simplefilter("ignore", RuntimeWarning)
        task = training_pipeline(**params)
    return {name: art.path for name, art in task.outputs.items()}
