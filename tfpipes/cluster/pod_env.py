"""TF_CONFIG without an operator: derive it from what a JobSet or Indexed-Job pod has.

The Training Operator writes ``TF_CONFIG`` into every TFJob pod. JobSet, Trainer v2 TrainJob
and plain Indexed Jobs do not, so the manifests of those launchers
(:mod:`~tfpipes.cluster.jobset`, :mod:`~tfpipes.cluster.trainjob`,
:mod:`~tfpipes.cluster.indexed_job`) give each pod the few facts it needs instead, and
:func:`derive_tf_config` turns them into a ``TF_CONFIG`` of the operator's shape
(``{"cluster": {...}, "task": {"type", "index"}, "environment": "cloud"}``).

What a pod has (environment variables):

- ``JOB_COMPLETION_INDEX``: set by Kubernetes in every pod of an Indexed Job (JobSet's jobs
  are Indexed Jobs): the task index within its role.
- ``TFPIPES_LAUNCHER``: ``jobset`` or ``job``: which hostname scheme the pods follow.
- ``TFPIPES_JOB_NAME``: the JobSet's name (from the pod's ``jobset.sigs.k8s.io/jobset-name``
  label through the downward API, so a TrainJob's runtime need not know it), or the base name
  of the plain Jobs.
- ``TFPIPES_ROLE``: ``chief``, ``worker`` or ``ps`` (for a JobSet, the replicated job's name,
  again from the pod's label).
- ``TFPIPES_CLUSTER_SHAPE``: how many tasks of each role, e.g. ``chief=1,worker=2,ps=1``.
- ``TFPIPES_SUBDOMAIN`` (optional, default the job name): the headless Service that gives the
  pods stable DNS names.
- ``TFPIPES_PORT`` (optional, default 2222): task k of the cluster (chief, workers, then
  parameter servers) listens on ``TFPIPES_PORT + k``. One port per task rather than one for
  all, so that tasks sharing an address (pods on the host network, or processes on one
  machine) never collide; pods on their own addresses do not care.

Pod hostnames: a JobSet's pod is ``<jobset>-<replicated job>-<job index>-<pod index>`` (one
job per role here, so job index 0); a plain Indexed Job's is ``<job>-<index>``, our jobs being
named ``<name>-<role>``. Each is reached as ``<hostname>.<subdomain>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from tfpipes.errors import UserError

LAUNCHER = "TFPIPES_LAUNCHER"
JOB_NAME = "TFPIPES_JOB_NAME"
ROLE = "TFPIPES_ROLE"
SHAPE = "TFPIPES_CLUSTER_SHAPE"
SUBDOMAIN = "TFPIPES_SUBDOMAIN"
PORT = "TFPIPES_PORT"
INDEX = "JOB_COMPLETION_INDEX"
ROLES = ("chief", "worker", "ps")
SCHEMES = ("jobset", "job")
DEFAULT_PORT = 2222


def format_shape(counts: Mapping[str, int]) -> str:
    """``{"chief": 1, "worker": 2}`` → ``chief=1,worker=2`` (roles in TF_CONFIG order)."""
    return ",".join(f"{r}={counts[r]}" for r in ROLES if counts.get(r))


def parse_shape(text: str) -> dict[str, int]:
    """The inverse of :func:`format_shape`; UserError naming the variable when malformed."""
    counts: dict[str, int] = {}
    for part in text.split(","):
        role, _, n = part.strip().partition("=")
        if role not in ROLES or not n.isdigit() or int(n) < 1 or role in counts:
            raise UserError(f"{SHAPE}={text!r}: expected e.g. chief=1,worker=2,ps=1")
        counts[role] = int(n)
    if "worker" not in counts:
        raise UserError(f"{SHAPE}={text!r}: names no worker")
    return counts


def hostname(scheme: str, job_name: str, role: str, index: int) -> str:
    """The stable hostname Kubernetes gives task ``role:index`` under ``scheme``."""
    if scheme == "jobset":
        return f"{job_name}-{role}-0-{index}"
    return f"{job_name}-{role}-{index}"


def cluster_addresses(
    scheme: str, job_name: str, subdomain: str, counts: Mapping[str, int], port: int
) -> dict[str, list[str]]:
    """``{"chief": [...], "worker": [...], "ps": [...]}``: every task's ``host.subdomain:port``."""
    cluster: dict[str, list[str]] = {}
    rank = 0
    for role in ROLES:
        for i in range(counts.get(role, 0)):
            host = hostname(scheme, job_name, role, i)
            cluster.setdefault(role, []).append(f"{host}.{subdomain}:{port + rank}")
            rank += 1
    return cluster


def derive_tf_config(env: Mapping[str, str]) -> str | None:
    """The ``TF_CONFIG`` (JSON text) this pod's environment describes, or None when it has none
    of our variables (a single-process run). UserError naming the first missing or malformed
    variable when it has some but not all: a manifest that cannot work fails at once (exit 2),
    not after a peer wait."""
    if not any(k in env for k in (LAUNCHER, ROLE, SHAPE)):
        return None
    missing = [k for k in (LAUNCHER, JOB_NAME, ROLE, SHAPE, INDEX) if not env.get(k)]
    if missing:
        raise UserError(
            f"cannot derive TF_CONFIG: {missing[0]} is not set (a {env.get(LAUNCHER) or 'JobSet'}"
            " pod of tfpipes has " + ", ".join((LAUNCHER, JOB_NAME, ROLE, SHAPE, INDEX)) + ")"
        )
    scheme = env[LAUNCHER]
    if scheme not in SCHEMES:
        raise UserError(f"cannot derive TF_CONFIG: {LAUNCHER}={scheme!r}, expected jobset or job")
    counts = parse_shape(env[SHAPE])
    role = env[ROLE]
    if role not in counts:
        raise UserError(f"cannot derive TF_CONFIG: {ROLE}={role!r} is not in {SHAPE}={env[SHAPE]}")
    index_text = env[INDEX]
    if not index_text.isdigit() or int(index_text) >= counts[role]:
        raise UserError(
            f"cannot derive TF_CONFIG: {INDEX}={index_text!r} is out of range for "
            f"{counts[role]} {role} task(s)"
        )
    port_text = env.get(PORT) or str(DEFAULT_PORT)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535 - sum(counts.values()):
        raise UserError(f"cannot derive TF_CONFIG: {PORT}={port_text!r} is not a port")
    job_name = env[JOB_NAME]
    subdomain = env.get(SUBDOMAIN) or job_name
    cluster = cluster_addresses(scheme, job_name, subdomain, counts, int(port_text))
    return json.dumps(
        {
            "cluster": cluster,
            "task": {"type": role, "index": int(index_text)},
            "environment": "cloud",
        }
    )


def manifest_env(spec_counts: Mapping[str, int], scheme: str, port: int) -> list[dict]:
    """The environment variables a launcher's pod template sets for :func:`derive_tf_config`,
    less the role and job name, which depend on where the template sits (see
    :func:`jobset_identity_env`)."""
    return [
        {"name": LAUNCHER, "value": scheme},
        {"name": SHAPE, "value": format_shape(spec_counts)},
        {"name": PORT, "value": str(port)},
    ]


def jobset_identity_env() -> list[dict]:
    """The job name and role of a JobSet pod, read from the labels JobSet puts on it: the
    same template then works whatever the JobSet (or the TrainJob creating it) is called."""
    return [
        {
            "name": JOB_NAME,
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.labels['jobset.sigs.k8s.io/jobset-name']"}
            },
        },
        {
            "name": ROLE,
            "valueFrom": {
                "fieldRef": {
                    "fieldPath": "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']"
                }
            },
        },
    ]
