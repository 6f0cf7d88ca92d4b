"""Run a TFJob through the Kubernetes API: create it, follow its chief's log, wait, delete.

:func:`run_tfjob` is the whole sequence a launcher needs (the KFP step
``tfpipes_components.tfjob_op.tfjob_train_op`` is one): it creates the TFJob that ``tfpipes
tfjob`` would print (:func:`tfpipes.cluster.tfjob.build_tfjob`), follows an existing one of
that name instead (a retried step), streams the chief's log (worker 0's without a chief),
waits for the job's ``Succeeded`` or ``Failed`` condition, and deletes the job when the wait
runs out. Each piece (:func:`create_tfjob`, :class:`LogFollower`, :func:`wait_for_tfjob`,
:func:`delete_tfjob`, :func:`job_phase`) takes a ``kubernetes.client.ApiClient``, so tests
drive them against a local stand-in of the API.

The caller needs ``create``, ``get`` and ``delete`` on ``tfjobs.kubeflow.org`` and ``get`` on
``pods`` and ``pods/log`` (see ``docs/distributed.md``). The ``kubernetes`` package is imported
inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, TextIO

from tfpipes.cluster.tfjob import CONTAINER_NAME, GROUP, PLURAL, VERSION, TFJobSpec, build_tfjob
from tfpipes.errors import EXIT_FAILURE, TfpipesError

TERMINAL = ("Succeeded", "Failed")
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TFJobError(TfpipesError):
    """The TFJob failed, could not be created, or did not finish in time. One line; exit 1:
    the job has already had its restarts (``backoffLimit``), so a rerun would not help."""

    exit_code = EXIT_FAILURE


class JobOutcome(NamedTuple):
    phase: str  # Succeeded
    message: str
    seconds: float
    namespace: str = ""
    name: str = ""


def job_phase(status: dict | None) -> tuple[str, str]:
    """(phase, message) of a TFJob ``status``: ``Succeeded`` or ``Failed`` when such a
    condition is true, else the newest true condition (``Created``, ``Running``,
    ``Restarting``, ``Suspended``), else ``Pending``.

    The Training Operator keeps one condition per type and flips its ``status``; order is by
    ``lastTransitionTime`` (RFC 3339, so it sorts as text), then position.
    """
    conditions = [c for c in (status or {}).get("conditions") or [] if c.get("status") == "True"]
    for terminal in TERMINAL:
        for c in conditions:
            if c.get("type") == terminal:
                return terminal, c.get("message") or c.get("reason") or ""
    if not conditions:
        return "Pending", ""
    _, newest = max(
        enumerate(conditions), key=lambda ic: (ic[1].get("lastTransitionTime") or "", ic[0])
    )
    return newest.get("type", "Pending"), newest.get("message") or newest.get("reason") or ""


def log_pod_name(manifest: dict) -> tuple[str, str]:
    """(pod name, task) whose log is streamed: the chief's, else worker 0's. The operator
    names pods ``<job>-<replica type in lower case>-<index>``."""
    name = manifest["metadata"]["name"]
    replica = "Chief" if "Chief" in manifest["spec"]["tfReplicaSpecs"] else "Worker"
    return f"{name}-{replica.lower()}-0", f"{replica.lower()}:0"


def create_tfjob(api_client, manifest: dict, namespace: str, out: TextIO = sys.stdout) -> dict:
    """Create the TFJob; if one of that name exists (a retried step), return that one.
    TFJobError with the server's message if the API refuses it."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    name = manifest["metadata"]["name"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        print(f"tfjob: created {namespace}/{name}", file=out, flush=True)
        return created
    except client.ApiException as e:
        if e.status == 409:
            print(f"tfjob: {namespace}/{name} exists; following it", file=out, flush=True)
            return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        raise TFJobError(
            f"cannot create TFJob {namespace}/{name}: {e.status} {e.reason}: {_body(e)}"
        ) from None


def _body(e) -> str:
    try:
        return json.loads(e.body).get("message", "")[:500]
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "")[:500]


class LogFollower(threading.Thread):
    """Streams one pod's ``tensorflow`` container log to ``out`` with a ``[task]`` prefix.

    A pod that does not exist yet or whose container has not started is polled again; when a
    stream ends (the container exited) it waits for a new container (the pod recreated, or
    restarted in place) before streaming again, so no line is shown twice. Set ``stopping``
    to end it.
    """

    def __init__(self, api_client, pod: str, namespace: str, prefix: str, out: TextIO, poll=2.0):
        super().__init__(daemon=True, name=f"log-{pod}")
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.pod, self.namespace, self.prefix, self.out, self.poll = (
            pod,
            namespace,
            prefix,
            out,
            poll,
        )
        self.stopping = threading.Event()
        self.streams = 0
        self.lines = 0

    def run(self) -> None:
        from kubernetes import client

        streamed = None  # (pod uid, restart count) of the container last streamed to its end
        while not self.stopping.is_set():
            try:
                pod = self.core.read_namespaced_pod(self.pod, self.namespace)
                ident = _container_identity(pod)
                if ident is None or ident == streamed:
                    self.stopping.wait(self.poll)
                    continue
                response = self.core.read_namespaced_pod_log(
                    self.pod,
                    self.namespace,
                    container=CONTAINER_NAME,
                    follow=True,
                    _preload_content=False,
                )
                self.streams += 1
                self._copy(response)
                streamed = ident
            except client.ApiException:
                self.stopping.wait(self.poll)  # no pod yet, or the container not started
            except Exception as e:  # a dropped connection: the job's status decides, not this
                print(f"tfjob: log stream of {self.pod} broke ({e}); retrying", file=self.out)
                self.stopping.wait(self.poll)

    def _copy(self, response) -> None:
        buf = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._line(line)
            if buf:
                self._line(buf)
        finally:
            response.release_conn()

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        print(f"[{self.prefix}] {text}", file=self.out, flush=True)


def _container_identity(pod) -> tuple[str, int] | None:
    """(pod uid, restart count) once the ``tensorflow`` container has started, else None."""
    for cs in (pod.status and pod.status.container_statuses) or []:
        if cs.name == CONTAINER_NAME and cs.state and (cs.state.running or cs.state.terminated):
            return (pod.metadata.uid, cs.restart_count or 0)
    return None


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
    import urllib3
    from kubernetes import client

    api = client.CustomObjectsApi(api_client)
    start = clock()
    deadline = start + timeout
    follower = None
    if follow:
        follower = LogFollower(api_client, follow[0], namespace, follow[1], out, poll=poll)
        follower.start()
    phase, last_error = None, ""
    try:
        while True:
            try:
                job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
                new_phase, message = job_phase(job.get("status"))
                if new_phase != phase:
                    phase = new_phase
                    extra = f": {message}" if message else ""
                    print(f"tfjob: {namespace}/{name} {phase}{extra}", file=out, flush=True)
                if phase == "Succeeded":
                    return JobOutcome(phase, message, clock() - start, namespace, name)
                if phase == "Failed":
                    raise TFJobError(f"TFJob {namespace}/{name} failed: {message or 'no reason'}")
            except client.ApiException as e:
                if e.status == 404:
                    raise TFJobError(f"TFJob {namespace}/{name} was deleted") from None
                last_error = f"{e.status} {e.reason}"
            except (OSError, urllib3.exceptions.HTTPError) as e:  # the API server is away
                last_error = f"{type(e).__name__}: {e}"[:300]
            if clock() >= deadline:
                delete_tfjob(api_client, name, namespace, out)
                stuck = f"; last API error: {last_error}" if last_error else ""
                raise TFJobError(
                    f"TFJob {namespace}/{name} did not finish within {timeout:g} s "
                    f"(last phase {phase or 'unknown'}{stuck}); deleted it"
                )
            sleep(poll)
    finally:
        if follower:
            # Let the stream of a finished container drain, then stop polling.
            follower.stopping.set()
            follower.join(timeout=10)


def delete_tfjob(api_client, name: str, namespace: str, out: TextIO = sys.stdout) -> bool:
    """Delete the TFJob and, in the foreground, its pods. Whether it worked: a failure is
    printed, not raised (the caller is already reporting a failure of its own)."""
    import urllib3
    from kubernetes import client

    try:
        client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
        )
        print(f"tfjob: deleted {namespace}/{name}", file=out, flush=True)
        return True
    except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as e:
        print(f"tfjob: could not delete {namespace}/{name}: {e}", file=out, flush=True)
        return False


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


def run_tfjob(
    spec: TFJobSpec,
    timeout: float,
    poll: float = 5.0,
    api_client=None,
    out: TextIO = sys.stdout,
) -> JobOutcome:
    """Build the TFJob for ``spec``, create it (or follow the existing one of that name),
    stream its chief's log to ``out`` and wait for it to succeed.

    ``spec.namespace`` None means :func:`default_namespace`; ``api_client`` None means
    :func:`load_api_client`. Returns the outcome (with the namespace and name used). Raises
    UserError for an invalid spec (before anything is sent) and TFJobError when the job cannot
    be created, fails, is deleted, or does not finish within ``timeout`` seconds (it is
    deleted then).
    """
    manifest = build_tfjob(spec)
    namespace = spec.namespace or default_namespace()
    manifest["metadata"]["namespace"] = namespace
    api_client = api_client or load_api_client()
    create_tfjob(api_client, manifest, namespace, out)
    return wait_for_tfjob(
        api_client,
        spec.name,
        namespace,
        timeout,
        poll=poll,
        out=out,
        follow=log_pod_name(manifest),
    )
