"""The environment decides the distribution, here and nowhere else.

:func:`resolve` is a pure function of ``TF_CONFIG`` and the visible GPU count (so every
environment shape is testable without TensorFlow); :func:`create_strategy` turns its answer into
a ``tf.distribute`` strategy. Nothing else in tfpipes parses ``TF_CONFIG``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from tfpipes.errors import UserError

log = logging.getLogger("tfpipes.strategy")

KINDS = ("default", "one_device", "mirrored", "multi_worker", "parameter_server")


@dataclasses.dataclass(frozen=True)
class Resolution:
    """Which strategy, and this task's role in the cluster."""

    kind: str
    task_type: str = "worker"  # chief | worker | ps | evaluator
    task_index: int = 0
    num_workers: int = 1  # processes that train (MWMS: chief + workers)
    num_ps: int = 0
    num_gpus: int = 0
    cluster: dict = dataclasses.field(default_factory=dict)

    @property
    def is_chief(self) -> bool:
        """The task whose checkpoints, metrics and summaries count."""
        if self.kind == "parameter_server":
            return self.task_type == "chief"
        if self.kind == "multi_worker":
            has_chief = bool(self.cluster.get("chief"))
            return self.task_type == "chief" or (
                not has_chief and self.task_type == "worker" and self.task_index == 0
            )
        return True

    @property
    def input_pipeline_id(self) -> int:
        """This task's input pipeline among ``num_workers`` (MWMS: the chief is 0, then the
        workers; what ``tf.distribute.InputContext.input_pipeline_id`` says there)."""
        if self.kind != "multi_worker":
            return 0
        if self.task_type == "chief":
            return 0
        return self.task_index + (1 if self.cluster.get("chief") else 0)


def parse_tf_config(text: str | None) -> dict:
    """The ``TF_CONFIG`` JSON text as a dict, its shape checked (``{}`` when unset or empty).

    ``cluster``: an object of task type -> list of ``host:port`` strings; ``task``: an object
    with a string ``type`` and an integer ``index``. Raises UserError, one line starting
    ``TF_CONFIG``, for anything else (a task that is a string, an index of ``"1"`` or ``1.5``,
    a cluster entry that is not a list of strings).
    """
    if not text or not text.strip():
        return {}
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e})") from None
    if not isinstance(cfg, dict) or ("cluster" in cfg and not isinstance(cfg["cluster"], dict)):
        raise UserError("TF_CONFIG must be a JSON object with a 'cluster' object")
    for task_type, addresses in cfg.get("cluster", {}).items():
        if addresses is None:
            continue
        if not isinstance(addresses, list) or not all(
            isinstance(a, str) and a.strip() for a in addresses
        ):
            raise UserError(
                f"TF_CONFIG: cluster[{_shown(task_type)}] must be a list of 'host:port' "
                f"strings, got {_shown(addresses)}"
            )
    task = cfg.get("task", {})
    if task is None:
        task = {}
    if not isinstance(task, dict):
        raise UserError(
            f'TF_CONFIG: \'task\' must be an object like {{"type": "worker", "index": 0}}, '
            f"got {_shown(task)}"
        )
    if not isinstance(task.get("type", "worker"), str):
        raise UserError(f"TF_CONFIG: task type must be a string, got {_shown(task['type'])}")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int):
        raise UserError(f"TF_CONFIG: task index must be an integer, got {_shown(index)}")
    return cfg | {"task": task}


def _shown(value) -> str:
    """A JSON value as a short one-line excerpt for an error message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve(tf_config: str | None, num_gpus: int, override: str | None = None) -> Resolution:
    """Choose the strategy from ``TF_CONFIG`` (JSON text or None) and the visible GPU count.

    ``ps`` tasks in the cluster -> parameter_server; workers (and chief) only, more than one
    task -> multi_worker; else several GPUs -> mirrored, one GPU -> one_device, none -> default.
    ``override`` (``--strategy``) forces a kind; it must fit the environment.
    """
    cfg = parse_tf_config(tf_config)
    cluster = {k: list(v) for k, v in cfg.get("cluster", {}).items() if v}
    task = cfg.get("task", {})
    task_type = task.get("type", "worker")
    task_index = task.get("index", 0)
    if cluster:
        if task_type not in cluster and task_type != "evaluator":
            raise UserError(f"TF_CONFIG: task type {task_type!r} is not in the cluster")
        if task_type in cluster and not 0 <= task_index < len(cluster[task_type]):
            raise UserError(f"TF_CONFIG: task index {task_index} out of range for {task_type}")
        if "master" in cluster:
            raise UserError("TF_CONFIG: task type 'master' is not supported by TF2; use 'chief'")
    n_workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    n_ps = len(cluster.get("ps", []))
    if n_ps:
        auto = "parameter_server"
        n_workers = len(cluster.get("worker", []))
        if not cluster.get("chief"):
            raise UserError("TF_CONFIG: parameter-server training needs a 'chief' task")
    elif n_workers > 1:
        auto = "multi_worker"
    elif num_gpus > 1:
        auto = "mirrored"
    elif num_gpus == 1:
        auto = "one_device"
    else:
        auto = "default"
    kind = override or auto
    if kind not in KINDS:
        raise UserError(f"--strategy {kind!r}: choose one of {', '.join(KINDS)}")
    if override and override != auto:
        if kind in ("multi_worker", "parameter_server") and not cluster:
            raise UserError(f"--strategy {kind}: needs a TF_CONFIG cluster")
        if kind == "parameter_server" and not n_ps:
            raise UserError("--strategy parameter_server: TF_CONFIG names no 'ps' tasks")
        if auto in ("multi_worker", "parameter_server"):
            # Each task would train alone, or a ps cluster would run without its coordinator.
            raise UserError(
                f"--strategy {kind}: TF_CONFIG describes a {auto} cluster; unset TF_CONFIG "
                "to train in one process"
            )
        # one_device / mirrored without a GPU run on the CPU: allowed, useful for tests.
    return Resolution(kind, task_type, task_index, max(n_workers, 1), n_ps, num_gpus, cluster)


def create_strategy(res: Resolution):
    """Create the ``tf.distribute`` strategy for a resolution and log what was chosen."""
    import tensorflow as tf

    # Physical, not logical devices: listing logical ones starts TensorFlow's runtime, after
    # which MultiWorkerMirroredStrategy can no longer configure its collectives.
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if res.kind == "default":
        strategy = tf.distribute.get_strategy()
    elif res.kind == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpu else "/cpu:0")
    elif res.kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif res.kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256 << 10, max_shards=res.num_ps
        )
        strategy = tf.distribute.experimental.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner
        )
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    log.info(
        "strategy: %s (%s), task %s:%d, %d replica(s) in sync, devices: %s",
        res.kind,
        type(strategy).__name__,
        res.task_type,
        res.task_index,
        strategy.num_replicas_in_sync,
        ", ".join(gpus) or "CPU",
    )
    return strategy


def resolve_from_environment(override: str | None = None) -> Resolution:
    """:func:`resolve` on this process's ``TF_CONFIG`` and visible GPUs. Without ``TF_CONFIG``,
    a JobSet / Indexed-Job pod's is derived (:mod:`tfpipes.cluster.pod_env`), logged, and set
    in the environment, where TensorFlow's cluster resolvers read it."""
    import tensorflow as tf

    tf_config = os.environ.get("TF_CONFIG")
    if not tf_config:
        from tfpipes.cluster import pod_env

        tf_config = pod_env.derive_tf_config(os.environ)
        if tf_config:
            log.info("TF_CONFIG derived from the pod's environment: %s", tf_config)
            os.environ["TF_CONFIG"] = tf_config
    return resolve(tf_config, len(tf.config.list_physical_devices("GPU")), override)
