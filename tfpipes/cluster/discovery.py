"""``--launcher auto``: which launcher this cluster can run, from the API server's discovery.

:func:`choose_launcher` reads ``/apis`` (the served API groups and versions) and, for the groups
of our launchers, ``/apis/<group>/<version>`` (the resources served), then picks the first of
:data:`~tfpipes.cluster.launchers.AUTO_ORDER` (TFJob, TrainJob, JobSet, Job) whose kind is
served. ``batch/v1`` Jobs exist on every cluster, so ``job`` is the fallback. Discovery is
readable by every authenticated user (the ``system:discovery`` role): no extra permission.
"""

from __future__ import annotations

from tfpipes.cluster import kube_api
from tfpipes.cluster.launchers import AUTO_ORDER, LAUNCHERS
from tfpipes.errors import RetryableError


def served_versions(api_client) -> set[str]:
    """Every ``group/version`` the server serves (``/apis``; the core group is not listed)."""
    groups = kube_api.request(api_client, "GET", "/apis").get("groups") or []
    return {v.get("groupVersion") for g in groups for v in g.get("versions") or []}


def served_kinds(api_client, group_version: str) -> set[str]:
    """The kinds ``/apis/<group_version>`` serves (subresources left out)."""
    found = kube_api.request(api_client, "GET", f"/apis/{group_version}")
    return {r.get("kind") for r in found.get("resources") or [] if "/" not in r.get("name", "")}


def choose_launcher(api_client) -> tuple[str, str]:
    """(launcher name, why): the first of AUTO_ORDER whose kind the cluster serves.
    JobError when discovery is refused, RetryableError (exit 138) when the API server cannot
    be reached."""
    from kubernetes import client

    try:
        versions = served_versions(api_client)
        missing = []
        for name in AUTO_ORDER:
            launcher = LAUNCHERS[name]
            if launcher.group in ("", "batch"):
                absent = ", ".join(missing)
                return name, f"no {absent} served; {launcher.api_version} Jobs always are"
            what = f"{launcher.kind} ({launcher.api_version})"
            if launcher.api_version in versions and launcher.kind in served_kinds(
                api_client, launcher.api_version
            ):
                return name, f"the cluster serves {what}"
            missing.append(what)
    except client.ApiException as e:
        raise kube_api.JobError(
            f"launcher auto: cannot read the API discovery: {kube_api.error_text(e)} "
            "(name the launcher instead: tfjob, trainjob, jobset or job)"
        ) from None
    except kube_api.unreachable_errors() as e:
        raise RetryableError(f"launcher auto: cannot reach the Kubernetes API: {e}") from None
    raise AssertionError("AUTO_ORDER ends with the job launcher")  # pragma: no cover
