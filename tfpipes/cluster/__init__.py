"""Clusters that run ``tfpipes train``: Kubeflow TFJobs on Kubernetes, and the same cluster as
processes on 127.0.0.1.

- :mod:`tfpipes.cluster.tfjob`: the TFJob manifest (:class:`TFJobSpec` → :func:`build_tfjob`,
  :func:`render_yaml`), the resource's names (API group, version, kind, container name).
- :mod:`tfpipes.cluster.supervisor`: :func:`run_launcher` runs one job of any launcher:
  creates its objects (or follows the existing ones of a retried step), follows its chief's log
  (:mod:`~tfpipes.cluster.pod_logs`) and its conditions (:mod:`~tfpipes.cluster.job_status`),
  deletes what it created on timeout; :mod:`~tfpipes.cluster.discovery` picks the launcher for
  ``auto``; :mod:`~tfpipes.cluster.kube_api` is the REST side (:class:`JobError`).
  :mod:`tfpipes.cluster.jobs` keeps the TFJob names (:func:`run_tfjob`).
- :mod:`tfpipes.cluster.launchers`: the table of launchers (``tfjob``, ``trainjob``,
  ``jobset``, ``job``) and what each builds, from :mod:`~tfpipes.cluster.tfjob`,
  :mod:`~tfpipes.cluster.trainjob`, :mod:`~tfpipes.cluster.jobset`,
  :mod:`~tfpipes.cluster.indexed_job`, all on one pod template (:mod:`~tfpipes.cluster.pods`).
- :mod:`tfpipes.cluster.pod_env`: ``TF_CONFIG`` derived from a JobSet / Indexed-Job pod.
- :mod:`tfpipes.cluster.local`: :func:`run_cluster` starts chief, workers and parameter
  servers as local processes with the ``TF_CONFIG`` the Training Operator would give them.

None of them imports kfp, TensorFlow or the kubernetes package at import time.
"""

from tfpipes.cluster.jobs import TFJobError, run_tfjob
from tfpipes.cluster.kube_api import JobError, JobOutcome
from tfpipes.cluster.local import ClusterResult, run_cluster
from tfpipes.cluster.supervisor import run_launcher
from tfpipes.cluster.tfjob import TFJobSpec, build_tfjob, render_yaml

__all__ = [
    "ClusterResult",
    "JobError",
    "JobOutcome",
    "TFJobError",
    "TFJobSpec",
    "build_tfjob",
    "render_yaml",
    "run_cluster",
    "run_launcher",
    "run_tfjob",
]
