"""The distributed pipeline: preprocess -> TFJob train -> export.

The same DAG as ``training.py`` with the train step replaced by ``tfjob_train_op``, which runs
``tfpipes train`` as a TFJob (MultiWorkerMirroredStrategy, or ParameterServerStrategy with
``ps > 0``) and hands the model directory and metrics to export. The cluster's shape, image,
GPUs and resources are run-time parameters: the TFJob manifest is built when the step runs.

Every pod of the TFJob reads the data set by its URI and writes the model directory itself, so
run it with a ``gs://`` pipeline root (or pass ``model_dir``) and, outside GKE workload
identity, a credentials secret (``gcs_secret``, mounted into the KFP steps at compile time by
``PipelineOptions`` and into the TFJob's pods by the step).
"""

import warnings
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components.tfjob_op import IMAGE, tfjob_train_op
from tfpipes_pipelines.training import (
    PipelineOptions,
    data_steps,
    export_step,
    with_credentials,
)

PIPELINE_NAME = "tfpipes-distributed-training"


class DistributedOutputs(NamedTuple):
    examples: Dataset
    model: Model
    metrics: Metrics
    exported: Model


def build_distributed_pipeline(options: PipelineOptions = PipelineOptions()):
    """The distributed pipeline function for ``options`` (only ``gcs_secret`` applies: the
    TFJob's own GPUs and resources are parameters of the run)."""

    def platform(task):
        return with_credentials(task, options)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CSV -> TFRecords -> distributed training as a Kubeflow TFJob -> SavedModel",
    )
    def distributed_pipeline(
        source: str,
        label: str,
        image: str = IMAGE,
        workers: int = 2,
        ps: int = 0,
        chief: bool = False,
        gpus_per_worker: int = 0,
        worker_cpu: str = "",
        worker_memory: str = "",
        namespace: str = "",
        model_dir: str = "",
        model_name: str = "mlp",
        hidden: str = "64,32",
        optimizer: str = "",
        learning_rate: float = 0.0,
        batch_size: int = 64,
        train_steps: int = 1000,
        seed: int = 42,
        steps_per_loop: int = 50,
        checkpoint_every: int = 200,
        cache: bool = False,
        mixed_precision: str = "",
        warm_start_from: str = "",
        eval_fraction: float = 0.2,
        num_shards: int = 16,
        model_version: str = "",
        publish_base: str = "",
        cache_index: str = "",
        timeout_seconds: int = 86400,
    ) -> DistributedOutputs:
        """``workers``/``ps``/``chief``: the TFJob's shape (``ps > 0``: ParameterServerStrategy
        with a chief; else MultiWorkerMirroredStrategy). ``num_shards`` must be at least the
        number of workers. ``model_dir``: durable storage all pods reach (default: the model
        artifact's URI). ``timeout_seconds``: the job is deleted and the step fails after it.
        The training parameters (``model_name`` to ``warm_start_from``) are those of the
        single-pod pipeline (``tests/test_params.py`` checks both against TrainConfig).
        """
        pre = data_steps(options, source, label, eval_fraction, num_shards, cache_index)
        tr = platform(
            tfjob_train_op(
                examples=pre.outputs["examples"],
                image=image,
                workers=workers,
                ps=ps,
                chief=chief,
                gpus_per_worker=gpus_per_worker,
                cpu=worker_cpu,
                memory=worker_memory,
                gcs_secret=options.gcs_secret,
                namespace=namespace,
                model_dir=model_dir,
                model_name=model_name,
                hidden=hidden,
                optimizer=optimizer,
                learning_rate=learning_rate,
                batch_size=batch_size,
                train_steps=train_steps,
                seed=seed,
                steps_per_loop=steps_per_loop,
                checkpoint_every=checkpoint_every,
                cache=cache,
                mixed_precision=mixed_precision,
                warm_start_from=warm_start_from,
                timeout_seconds=timeout_seconds,
            )
        )
        # It only waits on the job: a small pod. Never cached, as the plain train step.
        tr.set_cpu_request("100m")
        tr.set_memory_request("256Mi")
        tr.set_caching_options(False)
        return export_step(options, pre, tr, model_version, publish_base, DistributedOutputs)

    return distributed_pipeline


distributed_pipeline = build_distributed_pipeline()


def compile_distributed_pipeline(path: str, options: PipelineOptions = PipelineOptions()) -> str:
    """Write the distributed pipeline spec (YAML) to ``path``; returns the path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        compiler.Compiler().compile(build_distributed_pipeline(options), package_path=path)
    return path
