"""The few Kubernetes API calls every launcher needs, on any kind, through one REST helper.

An object is addressed by a :class:`Ref` (kind, apiVersion, plural, name, namespace or None for
a cluster-scoped one); :func:`request` is the one call that reaches the API server (the
``kubernetes`` package's ``ApiClient``, so a kubeconfig or the pod's service account apply).
The same path scheme serves core objects (``/api/v1/...``), API groups (``/apis/<g>/<v>/...``)
and discovery. The ``kubernetes`` package is imported inside the functions: importing this
module costs nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple

from tfpipes.errors import EXIT_FAILURE, TfpipesError

NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# A single call never blocks the step for longer: the deadline loop decides, not a stuck socket.
REQUEST_TIMEOUT = 60.0
PLURALS = {
    "TFJob": "tfjobs",
    "TrainJob": "trainjobs",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
    "JobSet": "jobsets",
    "Job": "jobs",
    "Service": "services",
}
CLUSTER_SCOPED = frozenset({"ClusterTrainingRuntime"})


class JobError(TfpipesError):
    """The job failed, could not be created, or did not finish in time. One line; exit 1:
    the job has already had its restarts (``backoffLimit``), so a rerun would not help."""

    exit_code = EXIT_FAILURE


class JobOutcome(NamedTuple):
    phase: str  # Succeeded
    message: str
    seconds: float
    namespace: str = ""
    name: str = ""
    launcher: str = ""
    kind: str = ""


@dataclass(frozen=True)
class Ref:
    """Where one object lives. ``namespace`` None: cluster-scoped."""

    kind: str
    api_version: str
    plural: str
    name: str
    namespace: str | None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def path(self, with_name: bool = True) -> str:
        """The REST path of the object (or of its collection)."""
        group, _, version = self.api_version.rpartition("/")
        base = f"/apis/{group}/{version}" if group else f"/api/{version}"
        if self.namespace:
            base += f"/namespaces/{self.namespace}"
        base += f"/{self.plural}"
        return f"{base}/{self.name}" if with_name else base


def ref_of(obj: dict, namespace: str) -> Ref:
    """The :class:`Ref` of a manifest we built (``namespace`` unless its kind is cluster-wide)."""
    kind = obj["kind"]
    scope = None if kind in CLUSTER_SCOPED else namespace
    return Ref(kind, obj["apiVersion"], PLURALS[kind], obj["metadata"]["name"], scope)


def request(api_client, method: str, path: str, body=None, query: dict | None = None):
    """One API call; the decoded JSON answer. Raises ``kubernetes.client.ApiException`` for an
    HTTP error, ``OSError`` / ``urllib3`` errors when the server cannot be reached."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return api_client.call_api(
        path,
        method,
        query_params=list((query or {}).items()),
        header_params=headers,
        body=body,
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=True,
        _request_timeout=REQUEST_TIMEOUT,
    )


def unreachable_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a call raises when the API server is away (not an HTTP answer)."""
    import urllib3

    return (OSError, urllib3.exceptions.HTTPError)


def error_text(e) -> str:
    """``<code> <reason>: <the server's message>`` of an ``ApiException``, one line."""
    try:
        message = json.loads(e.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = str(e.body or "")
    message = " ".join(str(message).split())[:500]
    return f"{e.status} {e.reason}" + (f": {message}" if message else "")


def load_api_client(kubeconfig: str | None = None):
    """An ApiClient from the pod's service account, else from ``kubeconfig`` (default
    ``$KUBECONFIG``, else ``~/.kube/config``; read when called: the kubernetes package reads
    the variable only at its import)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace this pod runs in, else the kube config's current one, else default."""
    if os.path.exists(NAMESPACE_FILE):
        with open(NAMESPACE_FILE) as f:
            return f.read().strip()
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(
            kubeconfig or os.environ.get("KUBECONFIG") or None
        )
        return current.get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"
