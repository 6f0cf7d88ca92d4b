"""A JobSet (jobset.x-k8s.io/v1alpha2) that runs ``tfpipes train``: for clusters with the
JobSet controller but no Kubeflow Trainer.

One replicated job per role (``chief``, ``worker``, ``ps``), each one Indexed Job with a pod
per task. JobSet's headless Service (``network.subdomain`` = the JobSet's name) gives every pod
the DNS name ``<jobset>-<role>-0-<index>.<jobset>``; each pod derives its ``TF_CONFIG`` from
that (:mod:`tfpipes.cluster.pod_env`).

Failure semantics: a pod exiting 1-127 (2 = a user error) fails its Job by the Job's
``podFailurePolicy`` (reason ``PodFailurePolicy``), which :func:`failure_policy` turns into
failing the whole JobSet at once; any other failure (exit >= 128, a signal) fails the Job by
``backoffLimit: 0`` and restarts the whole JobSet, every task together (as MWMS needs), up to
``maxRestarts``. Success: the chief's job completing (``successPolicy``; without a chief, every
worker's) ends the JobSet, which deletes the parameter servers that never exit on their own.
"""

from __future__ import annotations

from tfpipes.cluster import pod_env, pods
from tfpipes.cluster.indexed_job import pod_failure_policy
from tfpipes.cluster.tfjob import CONTAINER_NAME, TFJobSpec, object_metadata, validate
from tfpipes.errors import UserError

GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "JobSet"
PLURAL = "jobsets"


def success_policy(role_names: list[str]) -> dict:
    """Done when the chief is (the coordinator of PS training, the chief of MWMS), or, with no
    chief replica, when every worker is."""
    if "chief" in role_names:
        return {"operator": "Any", "targetReplicatedJobs": ["chief"]}
    return {"operator": "All", "targetReplicatedJobs": ["worker"]}


def failure_policy(backoff_limit: int) -> dict:
    """A permanent exit fails the JobSet; anything else restarts it, ``backoff_limit`` times."""
    return {
        "maxRestarts": backoff_limit,
        "rules": [
            {
                "name": "permanent-exit-code",
                "action": "FailJobSet",
                "onJobFailureReasons": ["PodFailurePolicy"],
            }
        ],
    }


def validate_jobset_spec(spec: TFJobSpec) -> None:
    validate(spec)
    for role, n, _ in pods.roles(spec):
        host = pod_env.hostname("jobset", spec.name, role, n - 1)
        if len(host) > 63:
            raise UserError(f"--name {spec.name!r} is too long: pod hostname {host!r} exceeds 63")


def replicated_jobs(spec: TFJobSpec, container_name: str, command=None, env=()) -> list[dict]:
    """One replicated job per role; pods carry the variables :mod:`pod_env` derives TF_CONFIG
    from (the job name and role through the labels JobSet sets)."""
    counts = {role: n for role, n, _ in pods.roles(spec)}
    out = []
    for role, n, gpus in pods.roles(spec):
        pod_vars = [
            *pod_env.manifest_env(counts, "jobset", spec.port),
            *pod_env.jobset_identity_env(),
            *env,
        ]
        pod = pods.pod_spec(
            spec,
            [pods.container(spec, gpus, container_name, command=command, env=pod_vars)],
            restartPolicy="Never",
        )
        labels = {**pods.APP_LABELS, "tfpipes.dev/role": role}
        out.append(
            {
                "name": role,
                "replicas": 1,
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "completionMode": "Indexed",
                        "completions": n,
                        "parallelism": n,
                        # Any failure fails the Job: the JobSet's policy decides what follows.
                        "backoffLimit": 0,
                        "podFailurePolicy": pod_failure_policy(container_name),
                        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                    },
                },
            }
        )
    return out


def build_jobset(spec: TFJobSpec) -> dict:
    """The JobSet manifest for ``spec``. UserError on an invalid spec."""
    validate_jobset_spec(spec)
    rjobs = replicated_jobs(spec, CONTAINER_NAME)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": object_metadata(spec),
        "spec": {
            "network": {
                "enableDNSHostnames": True,
                "subdomain": spec.name,
                "publishNotReadyAddresses": True,
            },
            "successPolicy": success_policy([r["name"] for r in rjobs]),
            "failurePolicy": failure_policy(spec.backoff_limit),
            "replicatedJobs": rjobs,
        },
    }
