"""Plain Kubernetes: an Indexed ``batch/v1`` Job per role plus a headless Service.

For a cluster with no operator at all. :func:`build_jobs` returns the Service (first: the
pods' DNS names exist before they start) and one Job per role (``<name>-chief``,
``<name>-worker``, ``<name>-ps``). Each pod derives its ``TF_CONFIG`` at start
(:mod:`tfpipes.cluster.pod_env`) from ``JOB_COMPLETION_INDEX`` and the variables set here; its
hostname ``<job>-<index>`` under the Service (the pods' ``subdomain``) is its stable address.

Failure semantics, as the TFJob's ``restartPolicy: ExitCode``: :func:`pod_failure_policy`
fails the Job at once on exit codes 1-127 (2 = a user error), and recreates the pod otherwise
(>= 128: retryable, or a signal) up to ``backoffLimit`` times; a pod evicted for a disruption
(preemption, node drain) is recreated without counting. Jobs have no "done when the chief is"
rule: parameter servers never exit, so the launcher (:mod:`tfpipes.cluster.jobs`) deletes
every Job and the Service once the chief's Job is complete.
"""

from __future__ import annotations

from tfpipes.cluster import pod_env, pods
from tfpipes.cluster.tfjob import CONTAINER_NAME, TFJobSpec, object_metadata, validate
from tfpipes.errors import RETRYABLE_MIN, UserError

API_VERSION = "batch/v1"
KIND = "Job"
# Permanent exit codes (1..127): the whole job fails at once, as with the TFJob's ExitCode.
PERMANENT_EXIT_CODES = list(range(1, RETRYABLE_MIN))


def pod_failure_policy(container: str = CONTAINER_NAME) -> dict:
    """``podFailurePolicy``: fail the Job on a permanent exit code of ``container``; a pod
    disrupted by the cluster is recreated without counting against ``backoffLimit``."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": container,
                    "operator": "In",
                    "values": list(PERMANENT_EXIT_CODES),
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }


def job_names(spec: TFJobSpec) -> dict[str, str]:
    """``{role: Job name}``."""
    return {role: f"{spec.name}-{role}" for role, _, _ in pods.roles(spec)}


def validate_job_spec(spec: TFJobSpec) -> None:
    """UserError naming the flag when the pods' hostnames would not be DNS labels."""
    validate(spec)
    longest = max(
        (pod_env.hostname("job", spec.name, role, n - 1) for role, n, _ in pods.roles(spec)),
        key=len,
    )
    if len(longest) > 63:
        raise UserError(f"--name {spec.name!r} is too long: pod hostname {longest!r} exceeds 63")


def build_service(spec: TFJobSpec) -> dict:
    """The headless Service that gives every pod the DNS name ``<hostname>.<name>``. DNS
    records are published before the pods are ready: the peers must find each other to
    become ready at all."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(spec),
        "spec": {
            "clusterIP": "None",
            "selector": {pods.JOB_LABEL: spec.name},
            "publishNotReadyAddresses": True,
        },
    }


def build_jobs(spec: TFJobSpec) -> list[dict]:
    """The Service, then one Indexed Job per role. UserError on an invalid spec."""
    validate_job_spec(spec)
    counts = {role: n for role, n, _ in pods.roles(spec)}
    objects = [build_service(spec)]
    for role, n, gpus in pods.roles(spec):
        name = f"{spec.name}-{role}"
        env = [
            *pod_env.manifest_env(counts, "job", spec.port),
            {"name": pod_env.JOB_NAME, "value": spec.name},
            {"name": pod_env.ROLE, "value": role},
        ]
        labels = {**pods.APP_LABELS, pods.JOB_LABEL: spec.name, "tfpipes.dev/role": role}
        pod = pods.pod_spec(
            spec,
            [pods.container(spec, gpus, CONTAINER_NAME, env=env)],
            restartPolicy="Never",
            subdomain=spec.name,
        )
        metadata = object_metadata(spec, name)
        metadata["labels"] = dict(labels)
        objects.append(
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": metadata,
                "spec": {
                    "completionMode": "Indexed",
                    "completions": n,
                    "parallelism": n,
                    "backoffLimit": spec.backoff_limit,
                    "podFailurePolicy": pod_failure_policy(),
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                },
            }
        )
    return objects
