"""What a job's status says, per kind: ``(phase, message)`` from the conditions its controller sets.

| kind | succeeded | failed | set by |
|---|---|---|---|
| ``TFJob`` | ``Succeeded`` | ``Failed`` | Training Operator v1 |
| ``TrainJob`` | ``Complete`` | ``Failed`` | Kubeflow Trainer v2 |
| ``JobSet`` | ``Completed`` | ``Failed`` | the JobSet controller |
| ``Job`` | ``Complete``, ``SuccessCriteriaMet`` | ``Failed``, ``FailureTarget`` | Job controller |

A Job gets ``FailureTarget`` as soon as it is doomed (its pods are still being terminated) and
``Failed`` after; either fails the step, at the first sign. Phases other than the two terminal
ones are for the log only: the TFJob's newest true condition (``Created``, ``Running``,
``Restarting``), else ``Suspended``, ``Running`` (some pod active, with the restarts so far)
or ``Pending``. Pure functions of the object: no API calls.
"""

from __future__ import annotations

SUCCEEDED = "Succeeded"
FAILED = "Failed"
TERMINAL = (SUCCEEDED, FAILED)
CONDITIONS = {
    "TFJob": (("Succeeded",), ("Failed",)),
    "TrainJob": (("Complete",), ("Failed",)),
    "JobSet": (("Completed",), ("Failed",)),
    "Job": (("Complete", "SuccessCriteriaMet"), ("Failed", "FailureTarget")),
}


def _true_conditions(status: dict) -> list[dict]:
    return [c for c in status.get("conditions") or [] if c.get("status") == "True"]


def _text(condition: dict) -> str:
    return condition.get("message") or condition.get("reason") or ""


def tfjob_phase(status: dict | None) -> tuple[str, str]:
    """(phase, message) of a TFJob ``status``: ``Succeeded`` or ``Failed`` when such a
    condition is true, else the newest true condition (``Created``, ``Running``,
    ``Restarting``, ``Suspended``), else ``Pending``.

    The Training Operator keeps one condition per type and flips its ``status``; order is by
    ``lastTransitionTime`` (RFC 3339, so it sorts as text), then position.
    """
    conditions = _true_conditions(status or {})
    terminal = _terminal("TFJob", conditions)
    if terminal:
        return terminal
    if not conditions:
        return "Pending", ""
    _, newest = max(
        enumerate(conditions), key=lambda ic: (ic[1].get("lastTransitionTime") or "", ic[0])
    )
    return newest.get("type", "Pending"), _text(newest)


def _terminal(kind: str, conditions: list[dict]) -> tuple[str, str] | None:
    succeeded, failed = CONDITIONS[kind]
    for phase, types in ((SUCCEEDED, succeeded), (FAILED, failed)):
        for c in conditions:
            if c.get("type") in types:
                return phase, _text(c)
    return None


def _active_and_restarts(kind: str, status: dict) -> tuple[int, int]:
    if kind == "Job":
        return status.get("active") or 0, status.get("failed") or 0
    children = status.get("replicatedJobsStatus" if kind == "JobSet" else "jobsStatus") or []
    active = sum(c.get("active") or 0 for c in children)
    return active, status.get("restarts") or 0


def phase(kind: str, obj: dict) -> tuple[str, str]:
    """(phase, message) of ``obj``, a ``kind`` object as the API returns it (see the table)."""
    status = obj.get("status") or {}
    if kind == "TFJob":
        return tfjob_phase(status)
    conditions = _true_conditions(status)
    terminal = _terminal(kind, conditions)
    if terminal:
        return terminal
    for c in conditions:
        if c.get("type") == "Suspended":
            return "Suspended", _text(c)
    active, restarts = _active_and_restarts(kind, status)
    if not active:
        return "Pending", ""
    word = "failed pods" if kind == "Job" else "restarts"
    return ("Running" + (f" ({word} {restarts})" if restarts else "")), ""
