"""Kubeflow TFJob (kubeflow.org/v1) manifests that run ``tfpipes train`` on a cluster.

:func:`build_tfjob` is a pure function from a :class:`TFJobSpec` to the manifest as a dict;
:func:`render_yaml` turns it into the text ``kubectl apply -f -`` reads. The Training Operator
then starts one pod per replica and gives each a ``TF_CONFIG`` of the shape
:mod:`tfpipes.cluster.local` reproduces on 127.0.0.1 (see ``docs/distributed.md``).

The exit-code convention below is the contract between the trainer and the operator's
``restartPolicy: ExitCode``: the operator recreates a pod whose container exited with a code
>= 128 (retryable) and fails the job on 1-127 (permanent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Exit codes (tfpipes.errors): 1 a bug, 2 a UserError (permanent), >= 128 retryable (138: a
# peer unreachable, preempted, storage briefly unavailable).
from tfpipes.cluster import pods
from tfpipes.cluster.pods import GPU_RESOURCE, SECRET_MOUNT_PATH  # noqa: F401 (public names)
from tfpipes.errors import EXIT_RETRYABLE, RETRYABLE_MIN, UserError

# The TFJob resource: the manifest's apiVersion and kind, and the API path the Kubernetes client
# reaches it by (tfpipes.cluster.jobs): /apis/<GROUP>/<VERSION>/namespaces/<ns>/<PLURAL>.
GROUP = "kubeflow.org"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TFJob"
PLURAL = "tfjobs"
# The Training Operator finds the TensorFlow container by this name (and adds TF_CONFIG to it).
CONTAINER_NAME = "tensorflow"
RESTART_POLICIES = ("ExitCode", "OnFailure")
# The port every task's gRPC server listens on (the Training Operator's default); launchers
# without an operator give task k of the cluster port + k (tfpipes.cluster.pod_env).
DEFAULT_PORT = 2222

# Services are named <job>-<replica type>-<index> and must be DNS-1035 labels (<= 63, start
# with a letter); the operator's webhook rejects job names that are not.
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# The Kubernetes resource.Quantity syntax, as the CRD's schema spells it.
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


@dataclass(frozen=True)
class TFJobSpec:
    """What ``tfpipes tfjob`` and ``tfpipes launch`` ask for; :func:`build_tfjob` checks it.
    Every launcher (``tfpipes.cluster.launchers``) builds its objects from this one spec.

    ``chief=None`` means: a Chief when ``ps > 0`` (ParameterServerStrategy needs a coordinator),
    none otherwise (MultiWorkerMirroredStrategy makes worker 0 the chief).
    """

    image: str
    workers: int = 1
    ps: int = 0
    chief: bool | None = None
    gpus_per_worker: int = 0
    name: str = "tfpipes-train"
    namespace: str | None = None
    cpu: str | None = None
    memory: str | None = None
    gcs_secret: str | None = None
    gcs_secret_key: str = "key.json"
    restart_policy: str = "ExitCode"
    backoff_limit: int = 3
    train_args: tuple[str, ...] = field(default_factory=tuple)
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict, ...] = ()
    port: int = DEFAULT_PORT


LaunchSpec = TFJobSpec  # the name launchers other than the TFJob use


def validate(spec: TFJobSpec) -> None:
    """Raise :class:`UserError` naming the flag if ``spec`` cannot become a valid TFJob."""
    if spec.workers < 1:
        raise UserError(f"--workers must be >= 1, got {spec.workers}")
    if spec.ps < 0:
        raise UserError(f"--ps must be >= 0, got {spec.ps}")
    if spec.gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker must be >= 0, got {spec.gpus_per_worker}")
    if spec.backoff_limit < 0:
        raise UserError(f"--backoff-limit must be >= 0, got {spec.backoff_limit}")
    if spec.ps > 0 and spec.chief is False:
        raise UserError(
            "--no-chief cannot be used with --ps > 0: ParameterServerStrategy needs a chief"
        )
    if spec.restart_policy not in RESTART_POLICIES:
        raise UserError(
            f"--restart-policy must be one of {', '.join(RESTART_POLICIES)}, "
            f"got {spec.restart_policy!r}"
        )
    if not spec.image or any(c.isspace() for c in spec.image):
        raise UserError(
            f"--image must be a non-empty image reference without spaces, got {spec.image!r}"
        )
    longest = f"{spec.name}-worker-{max(spec.workers, spec.ps) - 1}"
    if not _DNS1035_LABEL.match(spec.name) or len(longest) > 63:
        raise UserError(
            f"--name {spec.name!r} must be a DNS-1035 label (lower-case letters, digits and '-', "
            f"starting with a letter) short enough that {longest!r} fits in 63 characters"
        )
    if spec.namespace is not None and (
        not _DNS1123_LABEL.match(spec.namespace) or len(spec.namespace) > 63
    ):
        raise UserError(
            f"--namespace {spec.namespace!r} must be a DNS-1123 label "
            "(lower-case letters, digits and '-', at most 63 characters)"
        )
    if spec.gcs_secret is not None:
        if not _DNS1123_SUBDOMAIN.match(spec.gcs_secret) or len(spec.gcs_secret) > 253:
            raise UserError(
                f"--gcs-secret {spec.gcs_secret!r} must be a DNS-1123 subdomain "
                "(lower-case letters, digits, '-' and '.')"
            )
        if not _SECRET_KEY.match(spec.gcs_secret_key):
            raise UserError(f"--gcs-secret-key {spec.gcs_secret_key!r} is not a valid secret key")
    for flag, value in (("--cpu", spec.cpu), ("--memory", spec.memory)):
        if value is not None and not _QUANTITY.match(value):
            raise UserError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    pods.validate_placement(spec)
    if not 1024 <= spec.port <= 65535 - 64:
        raise UserError(f"--port must be in 1024..65471, got {spec.port}")


def _replica(spec: TFJobSpec, replicas: int, gpus: int) -> dict:
    pod_spec = pods.pod_spec(spec, [pods.container(spec, gpus, CONTAINER_NAME)])
    return {
        "replicas": replicas,
        "restartPolicy": spec.restart_policy,
        "template": {"spec": pod_spec},
    }


def build_tfjob(spec: TFJobSpec) -> dict:
    """Return the TFJob manifest for ``spec`` as plain dicts and lists (YAML/JSON ready).

    Replica types are ``Chief``, ``Worker`` and ``PS``, never ``Master``: TF2's
    MultiWorkerMirroredStrategy and ParameterServerStrategy do not accept a "master" task.
    Workers and the chief get ``spec.gpus_per_worker`` GPUs; parameter servers none.
    ``cleanPodPolicy: Running`` makes the operator delete the parameter servers (which never
    exit on their own) once the job ends. Raises :class:`UserError` on an invalid spec.
    """
    validate(spec)
    replica_type = {"chief": "Chief", "worker": "Worker", "ps": "PS"}
    replica_specs = {
        replica_type[role]: _replica(spec, n, gpus) for role, n, gpus in pods.roles(spec)
    }
    metadata = object_metadata(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": spec.backoff_limit},
            "tfReplicaSpecs": replica_specs,
        },
    }


def object_metadata(spec: TFJobSpec, name: str | None = None) -> dict:
    """``metadata`` of an object we create: its name (default ``spec.name``), the tfpipes
    labels, the namespace when one is given."""
    metadata: dict = {"name": name or spec.name, "labels": dict(pods.APP_LABELS)}
    if spec.namespace is not None:
        metadata["namespace"] = spec.namespace
    return metadata


def render_yaml(manifest: dict) -> str:
    """The manifest as a YAML document, keys in the order they were built."""
    import yaml  # only the tfjob command needs it

    header = (
        "# Generated by `tfpipes tfjob`. Exit codes of `tfpipes train`: 0 ok, 1-127 permanent "
        f"(2 = user error), >= {RETRYABLE_MIN} retryable ({EXIT_RETRYABLE} = peer unreachable "
        "or preempted).\n"
    )
    return header + yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False)
