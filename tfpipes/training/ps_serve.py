"""A parameter-server job's workers and ps: serve until stopped.

Workers and parameter servers start a gRPC server and serve until they are stopped (the
Training Operator's ``cleanPodPolicy: Running``, or ``local-cluster``); the chief drives them
(:mod:`~tfpipes.training.ps_runner`).

Data on ``gs://``: workers run the shards' reads inside TensorFlow, from the graph the chief
sends, so no Python of the chief's runs there. Each worker therefore runs its own shard cache
(:func:`tfpipes.stream.serve_worker_shards`) next to its server: it fetches this worker's share
of the train split a few shards ahead through the storage layer, into the directory the
chief's graph names (``stream.shared_dir``), and deletes each shard once read. No worker
copies the data set.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import NoReturn

from tfpipes import storage
from tfpipes.strategy import Resolution

log = logging.getLogger("tfpipes.ps_train")


def serve_task(cfg, res: Resolution) -> NoReturn:
    """This worker's or ps's part of a job of ``cfg`` (a ``TrainConfig``): a worker of a
    remote data set starts its shard cache first; then serve until the process is stopped
    (SIGTERM removes the cache's files)."""
    if res.task_type == "worker" and storage.is_remote(cfg.data):
        from tfpipes import stream

        cache = stream.serve_worker_shards(cfg.data, cfg.model_dir, res.task_index, res.num_workers)
        log.info(
            "%s:%d streams its %d train shard(s) of %s through %s (at most %d on disk)",
            res.task_type, res.task_index, len(cache.shards), cfg.data, cache.directory,
            cache.limit,
        )  # fmt: skip

        def stop(signum, _frame):
            cache.close()
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        serve(res, block=False)
        while True:  # the main thread stays in Python so that SIGTERM's handler runs
            time.sleep(3600)
    serve(res)


def serve(res: Resolution, block: bool = True):
    """Start this worker's or ps's gRPC server and serve until the process is stopped
    (``block`` False: return the running server)."""
    import tensorflow as tf

    server = tf.distribute.Server(
        tf.train.ClusterSpec(res.cluster),
        job_name=res.task_type,
        task_index=res.task_index,
        protocol="grpc",
        start=True,
    )
    log.info("%s:%d serving at %s", res.task_type, res.task_index, server.target)
    if not block:
        return server
    server.join()
    raise RuntimeError("tf.distribute.Server.join() returned")
