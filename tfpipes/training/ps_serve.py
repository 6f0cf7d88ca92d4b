"""A parameter-server job's workers and ps: serve until stopped.

Workers and parameter servers start a gRPC server and serve until they are stopped (the
Training Operator's ``cleanPodPolicy: Running``, or ``local-cluster``); the chief drives them
(:mod:`~tfpipes.training.ps_runner`).

Data on ``gs://``: workers run the shards' reads inside TensorFlow, so they need a path they
can open, and TensorFlow's own GCS filesystem is not our storage layer (it has no retries of
ours, no CRC checks, and cannot reach an emulator). So each worker first copies the data set
through the storage layer (:mod:`~tfpipes.training.worker_data`), then starts its server; the
chief names that same local path in the workers' input pipelines.
"""

from __future__ import annotations

import logging
from typing import NoReturn

from tfpipes import storage
from tfpipes.strategy import Resolution
from tfpipes.training import worker_data

log = logging.getLogger("tfpipes.ps_train")


def serve_task(cfg, res: Resolution) -> NoReturn:
    """This worker's or ps's part of a job of ``cfg`` (a ``TrainConfig``): a worker copies a
    remote data set first; then serve until the process is stopped."""
    if res.task_type == "worker" and storage.is_remote(cfg.data):
        local, fetched = worker_data.fetch_worker_data(cfg.data)
        how = "copied to" if fetched else "already copied to"
        log.info("%s:%d data %s %s %s", res.task_type, res.task_index, cfg.data, how, local)
    serve(res)


def serve(res: Resolution) -> NoReturn:
    """Start this worker's or ps's gRPC server and serve until the process is stopped."""
    import tensorflow as tf

    server = tf.distribute.Server(
        tf.train.ClusterSpec(res.cluster),
        job_name=res.task_type,
        task_index=res.task_index,
        protocol="grpc",
        start=True,
    )
    log.info("%s:%d serving at %s", res.task_type, res.task_index, server.target)
    server.join()
    raise RuntimeError("tf.distribute.Server.join() returned")
