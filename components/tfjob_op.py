"""Distributed training as a KFP step: create a TFJob, follow it, hand its outputs on.

(No ``from __future__ import annotations`` here: kfp reads the annotations as types.)

KFP's own TFJob launcher was removed upstream and Kubeflow Trainer v2 has no TensorFlow
runtime, so :func:`tfjob_train_op` talks to the Kubernetes API itself: it creates the TFJob
that ``tfpipes tfjob`` would print (``tfpipes.tfjob.build_tfjob``), streams the chief's log
(worker 0's without a chief) into its own, waits for the job's ``Succeeded`` or ``Failed``
condition, and returns the model directory and the chief's ``metrics.json`` as KFP artifacts.

The component body is an adapter; the work is in plain functions here (:func:`run_step`,
:func:`create_tfjob`, :func:`wait_for_tfjob`, :func:`job_phase`) that take a
``kubernetes.client.ApiClient``, so tests drive them against a local stand-in of the API.

Every pod of the job must reach the data and the model directory: use a ``gs://`` pipeline
root (the data set is passed by URI) or ``model_dir``. The step's service account needs
``create``, ``get`` and ``delete`` on ``tfjobs.kubeflow.org`` and ``get`` on ``pods`` and
``pods/log`` (see ``docs/distributed.md``).
"""

import os
import sys
import threading
import time
import uuid
from typing import Callable, List, NamedTuple, TextIO, Tuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from tfpipes import __version__

IMAGE = os.environ.get("TFPIPES_IMAGE", f"tfpipes:{__version__}")

GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "tfjobs"
CONTAINER = "tensorflow"  # the container the Training Operator gives TF_CONFIG
TERMINAL = ("Succeeded", "Failed")
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class TFJobError(Exception):
    """The TFJob failed, could not be created, or did not finish in time. One line."""


class JobOutcome(NamedTuple):
    phase: str  # Succeeded
    message: str
    seconds: float


def job_phase(status: dict | None) -> Tuple[str, str]:
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


def log_pod_name(manifest: dict) -> Tuple[str, str]:
    """(pod name, task) whose log the step streams: the chief's, else worker 0's. The
    operator names pods ``<job>-<replica type in lower case>-<index>``."""
    name = manifest["metadata"]["name"]
    replica = "Chief" if "Chief" in manifest["spec"]["tfReplicaSpecs"] else "Worker"
    return f"{name}-{replica.lower()}-0", f"{replica.lower()}:0"


def create_tfjob(api_client, manifest: dict, namespace: str, out: TextIO = sys.stdout) -> dict:
    """Create the TFJob; if one of that name exists (a retried step), follow that one."""
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
    import json

    try:
        return json.loads(e.body).get("message", "")[:500]
    except (TypeError, ValueError, AttributeError):
        return str(e.body or "")[:500]


class LogFollower(threading.Thread):
    """Streams one pod's ``tensorflow`` container log to ``out`` with a ``[task]`` prefix.

    A pod that does not exist yet or whose container has not started is polled again; when a
    stream ends (the container exited) it waits for a new container (the pod recreated, or
    restarted in place) before streaming again, so no line is shown twice.
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
                    container=CONTAINER,
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


def _container_identity(pod) -> Tuple[str, int] | None:
    """(pod uid, restart count) once the ``tensorflow`` container has started, else None."""
    for cs in (pod.status and pod.status.container_statuses) or []:
        if cs.name == CONTAINER and cs.state and (cs.state.running or cs.state.terminated):
            return (pod.metadata.uid, cs.restart_count or 0)
    return None


def wait_for_tfjob(
    api_client,
    name: str,
    namespace: str,
    timeout: float,
    poll: float = 5.0,
    out: TextIO = sys.stdout,
    follow: Tuple[str, str] | None = None,
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
                    return JobOutcome(phase, message, clock() - start)
                if phase == "Failed":
                    raise TFJobError(f"TFJob {namespace}/{name} failed: {message or 'no reason'}")
            except client.ApiException as e:
                if e.status == 404:
                    raise TFJobError(f"TFJob {namespace}/{name} was deleted") from None
                last_error = f"{e.status} {e.reason}"
            except (OSError, urllib3.exceptions.HTTPError) as e:  # the API server is away
                last_error = f"{type(e).__name__}: {e}"[:300]
            if clock() >= deadline:
                _delete(api, name, namespace, out)
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


def _delete(api, name: str, namespace: str, out: TextIO) -> None:
    import urllib3
    from kubernetes import client

    try:
        api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
        )
        print(f"tfjob: deleted {namespace}/{name}", file=out, flush=True)
    except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as e:
        print(f"tfjob: could not delete {namespace}/{name}: {e}", file=out, flush=True)


def load_api_client():
    """An ApiClient from the pod's service account, else from ``$KUBECONFIG`` or
    ``~/.kube/config`` (read when called: the client reads the variable only at import)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    return client.ApiClient()


def default_namespace() -> str:
    """The namespace this pod runs in, else the kube config's current one, else default."""
    if os.path.exists(NAMESPACE_FILE):
        with open(NAMESPACE_FILE) as f:
            return f.read().strip()
    try:
        from kubernetes import config

        _, current = config.list_kube_config_contexts(os.environ.get("KUBECONFIG") or None)
        return current.get("context", {}).get("namespace") or "default"
    except Exception:
        return "default"


def run_step(
    examples,
    model,
    metrics,
    *,
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
    model_dir: str,
    train_argv: List[str],
    backoff_limit: int,
    timeout: float,
    poll: float = 5.0,
    api_client=None,
    out: TextIO = sys.stdout,
) -> JobOutcome:
    """The whole step: build the TFJob, create it, follow it, fill the output artifacts.

    ``examples``, ``model``, ``metrics``: KFP artifacts (their ``uri`` and ``path``).
    ``model_dir``: where the job writes checkpoints and metrics (default: the ``model``
    artifact's URI, written to directly by the chief). ``train_argv``: the training
    parameters' ``tfpipes train`` arguments (``tfpipes.training.params.to_argv``); every task
    runs ``tfpipes train --data <examples> --model-dir <model_dir> <train_argv>``. Raises
    UserError for bad parameters and TFJobError when the job fails or times out.
    """
    import json

    from tfpipes import storage
    from tfpipes.tfjob import TFJobSpec, build_tfjob

    model_dir = model_dir or model.uri
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
        train_args=("--data", examples.uri, "--model-dir", model_dir, *train_argv),
    )
    manifest = build_tfjob(spec)
    namespace = namespace or default_namespace()
    manifest["metadata"]["namespace"] = namespace
    api_client = api_client or load_api_client()
    create_tfjob(api_client, manifest, namespace, out)
    outcome = wait_for_tfjob(
        api_client,
        spec.name,
        namespace,
        timeout,
        poll=poll,
        out=out,
        follow=log_pod_name(manifest),
    )
    metrics_path = storage.join(model_dir, "metrics.json")
    if not storage.exists(metrics_path):
        raise TFJobError(f"TFJob {namespace}/{spec.name} succeeded but wrote no {metrics_path}")
    values = json.loads(storage.read_text(metrics_path))
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, v)
    os.makedirs(os.path.dirname(metrics.path) or ".", exist_ok=True)
    with open(metrics.path, "w") as f:
        json.dump(values, f, indent=2)
    if storage.normalize(model_dir) != storage.normalize(model.path):
        os.makedirs(model.path, exist_ok=True)
        with open(os.path.join(model.path, "MODEL_DIR"), "w") as f:
            f.write(model_dir)
    model.metadata.update(
        {
            "model_dir": model_dir,
            "step": values.get("step", 0),
            "tfjob": f"{namespace}/{spec.name}",
        }
    )
    return outcome


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
):
    """Train on ``examples`` with a TFJob (``workers`` workers, ``ps`` parameter servers, a
    chief when ``chief`` or ``ps > 0``); stream its chief's log; fail with its condition's
    message if it fails; output the model directory and its metrics. ``image``: the pods'
    image (default: this step's own). The training parameters are ``tfpipes train``'s, as in
    ``train_op`` (checked against TrainConfig by ``tests/test_params.py``). The body runs on
    its own in the container (KFP copies just this function), so everything it uses is
    imported here, defaults included."""
    from tfpipes_components.tfjob_op import IMAGE, TFJobError, run_step

    from tfpipes.errors import TfpipesError, exit_on_error
    from tfpipes.training.params import pick, to_argv

    with exit_on_error("tfjob_train"):
        train_argv = to_argv(pick(locals()))  # a bad value fails here, before any job exists
        try:
            outcome = run_step(
                examples,
                model,
                metrics,
                image=image or IMAGE,
                workers=workers,
                ps=ps,
                chief=chief,
                gpus_per_worker=gpus_per_worker,
                cpu=cpu,
                memory=memory,
                gcs_secret=gcs_secret,
                namespace=namespace,
                job_name=job_name,
                model_dir=model_dir,
                train_argv=train_argv,
                backoff_limit=backoff_limit,
                timeout=float(timeout_seconds),
                poll=poll_seconds,
            )
        except TFJobError as e:  # the job failed, not the input: exit 1 (permanent)
            raise TfpipesError(str(e)) from None
    model.metadata["model"] = model_name
    print(f"tfjob_train: {model.metadata['tfjob']} succeeded in {outcome.seconds:.0f} s")
