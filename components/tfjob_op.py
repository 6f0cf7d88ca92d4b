"""Distributed training as a KFP step: a cluster job runs ``tfpipes train``; its outputs are
handed on.

(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)

KFP's own TFJob launcher was removed upstream and Kubeflow Trainer v2 has no TensorFlow
runtime, so :func:`tfjob_train_op` runs the job itself through the library
(:func:`tfpipes.cluster.supervisor.run_launcher`: create what ``tfpipes launch --launcher L``
would print — a TFJob, a TrainJob, a JobSet or Indexed Jobs; ``auto`` picks the first the
cluster serves —, stream the chief's log into the step's own, follow the job's conditions).
This module is the adapter around it: KFP parameters → :class:`~tfpipes.cluster.tfjob.TFJobSpec`,
and the job's model directory and the chief's ``metrics.json`` → KFP artifacts
(:func:`run_step`).

Every pod of the job must reach the data and the model directory: use a ``gs://`` pipeline
root (the data set is passed by URI) or ``model_dir``. The step's service account needs
``create``, ``get`` and ``delete`` on the launcher's resources and ``get``/``list`` on ``pods``
and ``pods/log`` (see ``docs/kfp-cluster.md``).
"""

import json
import os
import sys
import uuid
from typing import List, TextIO

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from tfpipes import __version__, layout, storage
from tfpipes.cluster import pods
from tfpipes.cluster.kube_api import JobError, JobOutcome
from tfpipes.cluster.supervisor import run_launcher
from tfpipes.cluster.tfjob import TFJobSpec

IMAGE = os.environ.get("TFPIPES_IMAGE", f"tfpipes:{__version__}")


def job_name_for_task(task_uid: str) -> str:
    """A job name that is the same for every attempt of one KFP task ("" when the task id is
    unknown, e.g. an unresolved placeholder: then each attempt gets a fresh name)."""
    import hashlib

    if not task_uid or "{{" in task_uid:
        return ""
    return "tfpipes-train-" + hashlib.sha256(task_uid.encode()).hexdigest()[:12]


def run_step(
    model,
    metrics,
    *,
    train_argv: List[str],
    model_dir: str,
    image: str,
    workers: int,
    ps: int,
    chief: bool,
    gpus_per_worker: int,
    cpu: str,
    memory: str,
    gcs_secret: str,
    namespace: str,
    job_name: str,
    backoff_limit: int,
    timeout: float,
    launcher: str = "auto",
    runtime: str = "",
    node_selector: str = "",
    tolerations: str = "",
    poll: float = 5.0,
    api_client=None,
    out: "TextIO | None" = None,
) -> JobOutcome:
    """The whole step: run a job (``launcher``: auto, tfjob, trainjob, jobset or job) whose
    tasks run ``tfpipes train <train_argv>``, then fill the output artifacts.

    ``model``, ``metrics``: KFP artifacts (their ``uri``, ``path`` and ``metadata``).
    ``model_dir``: the directory ``train_argv``'s ``--model-dir`` names, where the chief writes
    checkpoints and ``metrics.json`` ('' means the ``model`` artifact's URI, written to directly
    by the chief). Empty strings mean "not set" for the other string parameters (KFP has no
    None). ``runtime``: an installed ClusterTrainingRuntime for ``trainjob``.
    ``node_selector``: ``KEY=VALUE`` items, ``tolerations``: ``KEY[=VALUE][:EFFECT]`` items,
    comma-separated (``tfpipes launch``'s ``--node-selector`` / ``--toleration`` syntax), for
    every pod of the job. Raises UserError for bad parameters and JobError when the job
    fails, times out or succeeds without writing its metrics.
    """
    model_dir = model_dir or model.uri
    out = out or sys.stdout  # looked up now: whatever sys.stdout is when the step runs
    spec = TFJobSpec(
        image=image,
        workers=workers,
        ps=ps,
        chief=True if ps > 0 else chief,
        gpus_per_worker=gpus_per_worker,
        name=job_name or f"tfpipes-train-{uuid.uuid4().hex[:8]}",
        namespace=namespace or None,
        cpu=cpu or None,
        memory=memory or None,
        gcs_secret=gcs_secret or None,
        backoff_limit=backoff_limit,
        train_args=tuple(train_argv),
        node_selector=pods.parse_node_selector(_items(node_selector)),
        tolerations=tuple(pods.parse_toleration(t) for t in _items(tolerations)),
    )
    outcome = run_launcher(
        spec, launcher, runtime or None, timeout, poll=poll, api_client=api_client, out=out
    )
    job = f"{outcome.namespace}/{outcome.name}"
    metrics_path = storage.join(model_dir, layout.METRICS)
    if not storage.exists(metrics_path):
        raise JobError(f"{outcome.kind} {job} succeeded but wrote no {metrics_path}")
    values = layout.read_json_object(metrics_path, "metrics of the chief")
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, v)
    storage.write_text(metrics.path, json.dumps(values, indent=2))
    if storage.normalize(model_dir) != storage.normalize(model.path):
        layout.write_model_dir_pointer(model.path, model_dir)
    model.metadata.update(
        {
            "model_dir": model_dir,
            "step": values.get("step", 0),
            "job": job,
            "launcher": outcome.launcher,
        }
    )
    if outcome.launcher == "tfjob":
        model.metadata["tfjob"] = job  # the key this step wrote when it ran only TFJobs
    return outcome


def _items(text: str) -> List[str]:
    """Comma-separated items; blanks around them ignored (commas cannot occur in a label or
    taint)."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tfjob_train_op(
    examples: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    image: str = "",
    workers: int = 2,
    ps: int = 0,
    chief: bool = False,
    gpus_per_worker: int = 0,
    cpu: str = "",
    memory: str = "",
    gcs_secret: str = "",
    namespace: str = "",
    job_name: str = "",
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
    backoff_limit: int = 3,
    timeout_seconds: int = 86400,
    poll_seconds: float = 10.0,
    launcher: str = "auto",
    runtime: str = "",
    node_selector: str = "",
    tolerations: str = "",
    task_uid: str = "",
):
    """Train on ``examples`` with a cluster job (``workers`` workers, ``ps`` parameter
    servers, a chief when ``chief`` or ``ps > 0``) of ``launcher`` (``auto``: the first of
    TFJob, TrainJob, JobSet, Job the cluster serves); stream its chief's log; fail with its
    condition's message if it fails; output the model directory and its metrics. ``image``:
    the pods' image (default: this step's own). ``runtime``: an installed
    ClusterTrainingRuntime (``trainjob``; default: the one tfpipes ships, created if
    missing). ``node_selector`` (``KEY=VALUE,...``) and ``tolerations``
    (``KEY[=VALUE][:EFFECT],...``): where every pod of the job may run. The training
    parameters are ``tfpipes train``'s, as in ``train_op`` (checked against TrainConfig by
    ``tests/test_params.py``). ``task_uid``: the KFP task's id (the pipeline passes
    ``dsl.PIPELINE_TASK_ID_PLACEHOLDER``, the same for every retry of the task), which names the
    job when ``job_name`` is empty, so a retried step follows the job its first attempt made.
    The body runs on its own in the container (KFP copies just this function), so everything
    it uses is imported here, defaults included."""
    from tfpipes_components.tfjob_op import IMAGE, job_name_for_task, run_step

    from tfpipes.errors import exit_on_error
    from tfpipes.training.params import pick, to_argv

    with exit_on_error("tfjob_train"):
        model_dir = model_dir or model.uri
        # A bad value fails here, before any job exists.
        train_argv = to_argv(dict(pick(locals()), data=examples.uri, model_dir=model_dir))
        outcome = run_step(
            model,
            metrics,
            train_argv=train_argv,
            model_dir=model_dir,
            image=image or IMAGE,
            workers=workers,
            ps=ps,
            chief=chief,
            gpus_per_worker=gpus_per_worker,
            cpu=cpu,
            memory=memory,
            gcs_secret=gcs_secret,
            namespace=namespace,
            job_name=job_name or job_name_for_task(task_uid),
            backoff_limit=backoff_limit,
            timeout=float(timeout_seconds),
            launcher=launcher,
            runtime=runtime,
            node_selector=node_selector,
            tolerations=tolerations,
            poll=poll_seconds,
        )
    model.metadata["model"] = model_name
    print(
        f"tfjob_train: {outcome.kind} {model.metadata['job']} succeeded in {outcome.seconds:.0f} s"
    )
