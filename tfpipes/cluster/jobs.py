"""The TFJob names of the Kubernetes client side (the first launcher's API, kept for callers).

Every launcher now runs through :func:`tfpipes.cluster.supervisor.run_launcher` (create, follow
the chief's log and the conditions, clean up); these are its TFJob-shaped entry points:
:func:`run_tfjob` (``run_launcher(spec, "tfjob")``), :func:`create_tfjob`,
:func:`wait_for_tfjob`, :func:`delete_tfjob`, :func:`job_phase`, and the shared pieces
(:class:`LogFollower`, :func:`load_api_client`, :func:`default_namespace`). Each takes a
``kubernetes.client.ApiClient``, so tests drive them against a local stand-in of the API.

The caller needs ``create``, ``get`` and ``delete`` on ``tfjobs.kubeflow.org`` and ``get`` on
``pods`` and ``pods/log`` (see ``docs/distributed.md``). The ``kubernetes`` package is imported
inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from tfpipes.cluster import job_status, kube_api
from tfpipes.cluster.kube_api import (  # noqa: F401 (public names)
    NAMESPACE_FILE,
    JobError,
    JobOutcome,
    Ref,
    default_namespace,
    load_api_client,
)
from tfpipes.cluster.pod_logs import LogFollower, LogSource  # noqa: F401 (public names)
from tfpipes.cluster.tfjob import CONTAINER_NAME, GROUP, PLURAL, VERSION, TFJobSpec  # noqa: F401

TERMINAL = job_status.TERMINAL
TFJobError = JobError  # the name this error had when the TFJob was the only launcher
job_phase = job_status.tfjob_phase


def _tfjob_ref(name: str, namespace: str) -> Ref:
    return Ref("TFJob", f"{GROUP}/{VERSION}", PLURAL, name, namespace)


def _tfjob_launcher():
    from tfpipes.cluster.launchers import LAUNCHERS

    return LAUNCHERS["tfjob"]


def log_pod_name(manifest: dict) -> tuple[str, str]:
    """(pod name, task) whose log is streamed: the chief's, else worker 0's. The operator
    names pods ``<job>-<replica type in lower case>-<index>``."""
    name = manifest["metadata"]["name"]
    replica = "Chief" if "Chief" in manifest["spec"]["tfReplicaSpecs"] else "Worker"
    return f"{name}-{replica.lower()}-0", f"{replica.lower()}:0"


def create_tfjob(api_client, manifest: dict, namespace: str, out: TextIO = sys.stdout) -> dict:
    """Create the TFJob; if one of that name exists (a retried step), follow that one.
    Returns the manifest sent. TFJobError with the server's message if the API refuses it."""
    from tfpipes.cluster.supervisor import create_objects

    create_objects(api_client, _tfjob_launcher(), [manifest], namespace, out)
    return manifest


def wait_for_tfjob(
    api_client,
    name: str,
    namespace: str,
    timeout: float,
    poll: float = 5.0,
    out: TextIO = sys.stdout,
    follow: tuple[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobOutcome:
    """Poll the TFJob's conditions until ``Succeeded`` (returned) or ``Failed``, or until
    ``timeout`` seconds pass (the job is deleted then); both raise TFJobError with the
    condition's message. ``follow``: (pod, task) whose log to stream meanwhile. API errors
    while polling are retried until the deadline: the job goes on without us."""
    from tfpipes.cluster import supervisor

    ref = _tfjob_ref(name, namespace)
    log = LogSource(follow[0], None, CONTAINER_NAME, follow[1]) if follow else None
    return supervisor.follow(
        api_client, _tfjob_launcher(), [ref], ref, timeout, poll, out, log, clock, sleep
    )


def delete_tfjob(api_client, name: str, namespace: str, out: TextIO = sys.stdout) -> bool:
    """Delete the TFJob and, in the foreground, its pods. Whether it worked: a failure is
    printed, not raised (the caller is already reporting a failure of its own)."""
    from tfpipes.cluster import supervisor

    ref = _tfjob_ref(name, namespace)
    return supervisor.delete_objects(api_client, [ref], _tfjob_launcher(), out)


def run_tfjob(
    spec: TFJobSpec,
    timeout: float,
    poll: float = 5.0,
    api_client=None,
    out: TextIO = sys.stdout,
) -> JobOutcome:
    """``run_launcher(spec, "tfjob", ...)``: build the TFJob for ``spec``, create it (or follow
    the existing one of that name), stream its chief's log to ``out`` and wait for it to
    succeed. Raises UserError for an invalid spec (before anything is sent) and TFJobError
    when the job cannot be created, fails, is deleted, or does not finish within ``timeout``
    seconds (it is deleted then)."""
    from tfpipes.cluster.supervisor import run_launcher

    return run_launcher(spec, "tfjob", None, timeout, poll, api_client, out)


__all__ = [
    "JobError",
    "JobOutcome",
    "LogFollower",
    "TFJobError",
    "create_tfjob",
    "default_namespace",
    "delete_tfjob",
    "job_phase",
    "kube_api",
    "load_api_client",
    "run_tfjob",
    "wait_for_tfjob",
]
