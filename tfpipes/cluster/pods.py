"""The pod template every launcher shares: one container running ``tfpipes train``, the same knobs.

Each launcher (:mod:`~tfpipes.cluster.tfjob`, :mod:`~tfpipes.cluster.jobset`,
:mod:`~tfpipes.cluster.indexed_job`, :mod:`~tfpipes.cluster.trainjob`) wraps what
:func:`pod_spec` returns in its own resource; the image, GPUs per worker, CPU/memory, node
selectors, tolerations and the storage-credentials secret mean the same everywhere.
:func:`roles` is the one place that decides which roles a job has and how many of each.
"""

from __future__ import annotations

import re

from tfpipes.errors import UserError

SECRET_MOUNT_PATH = "/var/secrets/google"
GPU_RESOURCE = "nvidia.com/gpu"
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# Labels every object and pod we create carries; the headless Service of a plain-Job launch
# selects its pods by JOB_LABEL.
APP_LABELS = {"app.kubernetes.io/name": "tfpipes", "app.kubernetes.io/component": "train"}
JOB_LABEL = "tfpipes.dev/job"

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def roles(spec) -> list[tuple[str, int, int]]:
    """``[(role, replicas, gpus per replica)]`` in TF_CONFIG order: ``chief`` (when asked, or
    always with parameter servers), ``worker``, ``ps`` (no GPUs)."""
    chief = spec.ps > 0 if spec.chief is None else spec.chief
    out = []
    if chief:
        out.append(("chief", 1, spec.gpus_per_worker))
    out.append(("worker", spec.workers, spec.gpus_per_worker))
    if spec.ps > 0:
        out.append(("ps", spec.ps, 0))
    return out


def parse_node_selector(items) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` strings (``--node-selector``) → pairs; UserError naming the bad one."""
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--node-selector {item!r}: expected KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def parse_toleration(item: str) -> dict:
    """``KEY[=VALUE][:EFFECT]`` (``--toleration``) → a toleration (``Equal`` with a value,
    ``Exists`` without); UserError naming it when malformed."""
    rest, _, effect = item.partition(":")
    key, sep, value = rest.partition("=")
    if not key or (effect and effect not in TOLERATION_EFFECTS):
        raise UserError(
            f"--toleration {item!r}: expected KEY[=VALUE][:EFFECT], EFFECT one of "
            + ", ".join(TOLERATION_EFFECTS)
        )
    tol: dict = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        tol["value"] = value
    if effect:
        tol["effect"] = effect
    return tol


def validate_placement(spec) -> None:
    """UserError naming the flag for a node selector or toleration Kubernetes would refuse."""
    for key, value in spec.node_selector:
        if not _LABEL_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
            raise UserError(f"--node-selector {key!r} is not a valid label key")
        if not _LABEL_VALUE.match(value) or len(value) > 63:
            raise UserError(f"--node-selector {key}={value!r}: not a valid label value")
    for tol in spec.tolerations:
        if not _LABEL_KEY.match(tol.get("key", "")):
            raise UserError(f"--toleration {tol.get('key')!r} is not a valid taint key")
        if not _LABEL_VALUE.match(tol.get("value", "")):
            raise UserError(f"--toleration {tol['key']}={tol.get('value')!r}: not a valid value")


def container(
    spec,
    gpus: int,
    name: str,
    command: list[str] | None = None,
    env: list[dict] | None = None,
) -> dict:
    """The training container: ``tfpipes train <spec.train_args>`` (or ``command``), unbuffered
    output, the resources, and the credentials secret's mount."""
    c: dict = {
        "name": name,
        "image": spec.image,
        "command": command or ["tfpipes", "train", *spec.train_args],
        # Unbuffered so that `kubectl logs` shows progress lines as they happen.
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, *(env or [])],
    }
    requests: dict = {}
    limits: dict = {}
    if spec.cpu is not None:
        requests["cpu"] = spec.cpu
    if spec.memory is not None:
        # A memory limit equal to the request: an OOM kill then shows as exit 137 (retryable)
        # on this pod instead of evicting a neighbour.
        requests["memory"] = limits["memory"] = spec.memory
    if gpus > 0:
        limits[GPU_RESOURCE] = gpus
    if requests or limits:
        c["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    if spec.gcs_secret is not None:
        c["env"].append(credentials_env(spec))
        c["volumeMounts"] = [credentials_mount()]
    return c


def credentials_env(spec) -> dict:
    return {
        "name": "GOOGLE_APPLICATION_CREDENTIALS",
        "value": f"{SECRET_MOUNT_PATH}/{spec.gcs_secret_key}",
    }


def credentials_mount() -> dict:
    return {"name": "gcs-credentials", "mountPath": SECRET_MOUNT_PATH, "readOnly": True}


def credentials_volume(spec) -> dict:
    return {"name": "gcs-credentials", "secret": {"secretName": spec.gcs_secret}}


def placement(spec) -> dict:
    """The pod-spec fields that place a pod: ``nodeSelector``, ``tolerations``."""
    out: dict = {}
    if spec.node_selector:
        out["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        out["tolerations"] = [dict(t) for t in spec.tolerations]
    return out


def pod_spec(spec, containers: list[dict], **fields) -> dict:
    """A pod spec around ``containers`` with the placement and the secret's volume; ``fields``
    (``restartPolicy``, ``subdomain``, …) are added as given."""
    out: dict = {**fields, "containers": containers, **placement(spec)}
    if spec.gcs_secret is not None:
        out["volumes"] = [credentials_volume(spec)]
    return out
