"""The distributed pipeline: preprocess -> distributed train (any launcher) -> export.

The same DAG as ``training.py`` with the train step replaced by ``tfjob_train_op``, which runs
``tfpipes train`` as a cluster job (MultiWorkerMirroredStrategy, or ParameterServerStrategy
with ``ps > 0``) and hands the model directory and metrics to export. The launcher (``auto``:
the first of TFJob, TrainJob, JobSet, Job the cluster serves), the cluster's shape, image, GPUs
and resources are run-time parameters: the manifests are built when the step runs.

Every pod of the job reads the data set by its URI and writes the model directory itself, so
run it with a ``gs://`` pipeline root (or pass ``model_dir``) and, outside GKE workload
identity, a credentials secret (``gcs_secret``, mounted into the KFP steps at compile time by
``PipelineOptions`` and into the job's pods by the step). ``PipelineOptions.node_selector`` and
``tolerations`` place the job's pods (the step itself only waits, anywhere).
"""

import warnings
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components.tfjob_op import IMAGE, tfjob_train_op
from tfpipes_pipelines.training import (
    PipelineOptions,
    check_step,
    data_steps,
    gated_publish_step,
    with_credentials,
)

from tfpipes.errors import UserError
from tfpipes.pipeline_params import TRAINING, params, pick, pipeline_signature

PIPELINE_NAME = "tfpipes-distributed-training"
# The distributed pipeline's own parameters. The job's (JOB, PLACE, TIMEOUT) are passed on to
# tfjob_train_op under the same names; RESOURCES become its ``cpu`` and ``memory``.
JOB = params(
    ("image", str, IMAGE),
    ("launcher", str, "auto"),
    ("workers", int, 2),
    ("ps", int, 0),
    ("chief", bool, False),
    ("gpus_per_worker", int, 0),
)
RESOURCES = params(("worker_cpu", str, ""), ("worker_memory", str, ""))
PLACE = params(("namespace", str, ""), ("model_dir", str, ""))
TIMEOUT = params(("timeout_seconds", int, 86400))


class DistributedOutputs(NamedTuple):
    examples: Dataset
    model: Model
    metrics: Metrics
    exported: Model


def build_distributed_pipeline(options: PipelineOptions = PipelineOptions()):
    """The distributed pipeline function for ``options`` (``gcs_secret``, and
    ``node_selector`` / ``tolerations`` for the job's pods; the job's own GPUs and resources
    are parameters of the run). UserError for a toleration the job's pods cannot take."""

    def platform(task):
        return with_credentials(task, options)

    node_selector = ",".join(f"{k}={v}" for k, v in options.node_selector)
    tolerations = ",".join(toleration_item(t) for t in options.tolerations)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CSV -> TFRecords -> distributed training (TFJob, TrainJob, JobSet or Jobs)"
        " -> SavedModel",
    )
    @pipeline_signature(JOB + RESOURCES + PLACE + TIMEOUT, returns=DistributedOutputs)
    def distributed_pipeline(**p) -> DistributedOutputs:
        """``launcher``: ``auto``, ``tfjob``, ``trainjob``, ``jobset`` or ``job`` (see
        ``docs/kfp-cluster.md``). ``workers``/``ps``/``chief``: the job's shape (``ps > 0``:
        ParameterServerStrategy with a chief; else MultiWorkerMirroredStrategy). ``num_shards``
        must be at least the number of workers. ``model_dir``: durable storage all pods reach
        (default: the model artifact's URI). ``timeout_seconds``: the job is deleted and the
        step fails after it. ``numeric_js`` to ``force_publish``: the data check and the gate, as
        in the single-pod pipeline (publishing happens only when the gate blesses the model).
        The training parameters (``model_name`` to ``warm_start_from``) are those of the
        single-pod pipeline (``tests/test_params.py`` checks both against TrainConfig).
        """
        pre = data_steps(options, p)
        chk = check_step(options, pre, p)
        tr = platform(
            tfjob_train_op(
                examples=pre.outputs["examples"],
                task_uid=dsl.PIPELINE_TASK_ID_PLACEHOLDER,  # one job name for all retries
                node_selector=node_selector,
                tolerations=tolerations,
                cpu=p["worker_cpu"],
                memory=p["worker_memory"],
                gcs_secret=options.gcs_secret,
                **pick(p, JOB + PLACE + TRAINING + TIMEOUT),
            )
        )
        # It only waits on the job: a small pod. Never cached, as the plain train step.
        tr.set_cpu_request("100m")
        tr.set_memory_request("256Mi")
        tr.set_caching_options(False)
        tr.after(chk)
        return gated_publish_step(options, pre, tr, chk, p, DistributedOutputs)

    return distributed_pipeline


distributed_pipeline = build_distributed_pipeline()


def toleration_item(toleration: dict) -> str:
    """A :class:`PipelineOptions` toleration in the step's ``KEY[=VALUE][:EFFECT]`` syntax;
    UserError naming ``--toleration`` for one it cannot express."""
    key, value, effect = (toleration.get(k) or "" for k in ("key", "value", "effect"))
    operator = toleration.get("operator") or ("Equal" if value else "Exists")
    extra = set(toleration) - {"key", "value", "effect", "operator"}
    if not key or extra or operator != ("Equal" if value else "Exists"):
        raise UserError(
            f"--toleration {toleration}: the distributed step takes KEY[=VALUE][:EFFECT] "
            "tolerations only (a key; no tolerationSeconds)"
        )
    return key + (f"={value}" if value else "") + (f":{effect}" if effect else "")


def compile_distributed_pipeline(path: str, options: PipelineOptions = PipelineOptions()) -> str:
    """Write the distributed pipeline spec (YAML) to ``path``; returns the path."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        compiler.Compiler().compile(build_distributed_pipeline(options), package_path=path)
    return path
