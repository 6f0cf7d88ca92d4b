"""Clusters that run ``tfpipes train``: Kubeflow TFJobs on Kubernetes, and the same cluster as
processes on 127.0.0.1.

- :mod:`tfpipes.cluster.tfjob`: the TFJob manifest (:class:`TFJobSpec` → :func:`build_tfjob`,
  :func:`render_yaml`), the resource's names (API group, version, kind, container name).
- :mod:`tfpipes.cluster.jobs`: the Kubernetes client side: :func:`run_tfjob` creates a TFJob,
  follows its chief's log and waits for it (:class:`TFJobError` when it fails).
- :mod:`tfpipes.cluster.launchers`: the table of launchers (``tfjob``, ``trainjob``,
  ``jobset``, ``job``) and what each builds, from :mod:`~tfpipes.cluster.tfjob`,
  :mod:`~tfpipes.cluster.trainjob`, :mod:`~tfpipes.cluster.jobset`,
  :mod:`~tfpipes.cluster.indexed_job`, all on one pod template (:mod:`~tfpipes.cluster.pods`).
- :mod:`tfpipes.cluster.pod_env`: ``TF_CONFIG`` derived from a JobSet / Indexed-Job pod.
- :mod:`tfpipes.cluster.local`: :func:`run_cluster` starts chief, workers and parameter
  servers as local processes with the ``TF_CONFIG`` the Training Operator would give them.

None of them imports kfp, TensorFlow or the kubernetes package at import time.
"""

from tfpipes.cluster.jobs import JobOutcome, TFJobError, run_tfjob
from tfpipes.cluster.local import ClusterResult, run_cluster
from tfpipes.cluster.tfjob import TFJobSpec, build_tfjob, render_yaml

__all__ = [
    "ClusterResult",
    "JobOutcome",
    "TFJobError",
    "TFJobSpec",
    "build_tfjob",
    "render_yaml",
    "run_cluster",
    "run_tfjob",
]
