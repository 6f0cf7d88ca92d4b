"""Run a training job with any launcher: create its objects, follow it to the end, clean up.

:func:`run_launcher` is the whole sequence the KFP train step needs, for every launcher of
:data:`~tfpipes.cluster.launchers.LAUNCHERS` (``auto`` asks :mod:`~tfpipes.cluster.discovery`):

1. **Create** every object the launcher builds, in order (:func:`create_objects`). An object
   of that name that exists already (409) is followed instead: a retried step never starts a
   second job. It must carry the tfpipes labels: someone else's object is never adopted. The
   cluster-scoped ``ClusterTrainingRuntime`` is shared by every TrainJob of its shape (its
   name is its content's hash): it is created when missing and never deleted.
2. **Follow** (:func:`follow`): poll the objects of the launcher's kind
   (:mod:`~tfpipes.cluster.job_status` reads their conditions) and stream the chief's log
   (:mod:`~tfpipes.cluster.pod_logs`). Success is the *primary* object's (the TFJob, TrainJob
   or JobSet; for plain Jobs the chief's Job, else the workers'); any watched object failing
   fails the step with its condition's message.
3. **Clean up.** The Training Operator and JobSet (under TrainJob too) end the tasks still
   running when a job ends; plain Jobs have nobody to do it, so when the chief's Job is done
   (or any Job failed) the step deletes the Jobs still active and the Service: parameter
   servers never outlive the job. On timeout every object created is deleted (foreground:
   with its pods), whatever the launcher.

The caller needs ``create``, ``get`` and ``delete`` on the launcher's resources, ``get`` on the
runtime (and ``create`` the first time), ``get``/``list`` on ``pods`` and ``get`` on
``pods/log`` (see ``docs/distributed.md``).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import TextIO

from tfpipes.cluster import discovery, indexed_job, job_status, kube_api, pods, tfjob
from tfpipes.cluster.kube_api import JobError, JobOutcome, Ref
from tfpipes.cluster.launchers import LAUNCHERS, Launcher, get_launcher
from tfpipes.cluster.pod_logs import LogFollower, LogSource, chief_source
from tfpipes.errors import RetryableError, UserError

# Kinds whose controller ends the tasks still running when the job ends (TFJob's
# cleanPodPolicy: Running; JobSet deletes its active child Jobs once finished).
ENDS_ITS_TASKS = frozenset({"TFJob", "TrainJob", "JobSet"})


def _label(ref: Ref, followed_kind: str) -> str:
    return str(ref) if ref.kind == followed_kind else f"{ref.kind} {ref}"


def _ours(obj: dict) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in pods.APP_LABELS.items())


def create_objects(
    api_client, launcher: Launcher, objects: list[dict], namespace: str, out: TextIO
) -> list[Ref]:
    """Create ``objects`` in order in ``namespace``; the refs of all of them (those that
    existed included). JobError naming the object when the API refuses one (those created
    by this call are deleted again), or when an object of that name is not ours;
    RetryableError when the API server cannot be reached."""
    from kubernetes import client

    refs: list[Ref] = []
    created: list[Ref] = []
    try:
        for obj in objects:
            ref = kube_api.ref_of(obj, namespace)
            where = _label(ref, launcher.kind)
            if ref.namespace is None:
                _ensure_shared(api_client, ref, obj, launcher.name, out)
                refs.append(ref)
                continue
            obj["metadata"]["namespace"] = namespace
            try:
                kube_api.request(api_client, "POST", ref.path(with_name=False), body=obj)
                print(f"{launcher.name}: created {where}", file=out, flush=True)
                created.append(ref)
            except client.ApiException as e:
                if e.status != 409:
                    raise JobError(
                        f"cannot create {ref.kind} {ref}: {kube_api.error_text(e)}"
                    ) from None
                if not _ours(kube_api.request(api_client, "GET", ref.path())):
                    raise JobError(
                        f"{ref.kind} {ref} exists and was not created by tfpipes; "
                        "choose another job name"
                    ) from None
                print(f"{launcher.name}: {where} exists; following it", file=out, flush=True)
            refs.append(ref)
    except client.ApiException as e:  # the GET after a 409
        delete_objects(api_client, created, launcher, out)
        raise JobError(f"cannot read {ref.kind} {ref}: {kube_api.error_text(e)}") from None
    except kube_api.unreachable_errors() as e:
        delete_objects(api_client, created, launcher, out)
        raise RetryableError(f"cannot reach the Kubernetes API to create {ref}: {e}") from None
    except JobError:
        delete_objects(api_client, created, launcher, out)
        raise
    return refs


def _ensure_shared(api_client, ref: Ref, obj: dict, prefix: str, out: TextIO) -> None:
    """Create a cluster-scoped object unless it exists (read first: a step allowed to read the
    runtime an administrator installed need not be allowed to create one)."""
    from kubernetes import client

    try:
        kube_api.request(api_client, "GET", ref.path())
        print(f"{prefix}: {ref.kind} {ref} is installed; using it", file=out, flush=True)
        return
    except client.ApiException as e:
        if e.status != 404:
            raise
    try:
        kube_api.request(api_client, "POST", ref.path(with_name=False), body=obj)
        print(f"{prefix}: created {ref.kind} {ref}", file=out, flush=True)
    except client.ApiException as e:
        if e.status != 409:  # another step created it meanwhile: the same content
            raise JobError(f"cannot create {ref.kind} {ref}: {kube_api.error_text(e)}") from None


def delete_objects(api_client, refs: list[Ref], launcher: Launcher, out: TextIO) -> bool:
    """Delete the namespaced ``refs`` (newest first, each in the foreground: with its pods);
    cluster-scoped ones are shared and stay. Whether all went: a failure is printed, not
    raised (the caller is already reporting a failure of its own)."""
    from kubernetes import client

    ok = True
    for ref in reversed(refs):
        if ref.namespace is None:
            continue
        where = _label(ref, launcher.kind)
        try:
            kube_api.request(
                api_client,
                "DELETE",
                ref.path(),
                body={"propagationPolicy": "Foreground"},
            )
            print(f"{launcher.name}: deleted {where}", file=out, flush=True)
        except client.ApiException as e:
            if e.status == 404:
                continue
            ok = False
            print(f"{launcher.name}: could not delete {where}: {e.status}", file=out, flush=True)
        except kube_api.unreachable_errors() as e:
            ok = False
            print(f"{launcher.name}: could not delete {where}: {e}", file=out, flush=True)
    return ok


def _leftovers(launcher: Launcher, refs: list[Ref], phases: dict) -> list[Ref]:
    """What nobody else ends once the job is over: plain Jobs still active, and the Service."""
    if launcher.kind in ENDS_ITS_TASKS:
        return []
    return [
        r
        for r in refs
        if r.kind == "Service"
        or (r.kind == launcher.kind and phases[r][0] not in job_status.TERMINAL)
    ]


def follow(
    api_client,
    launcher: Launcher,
    refs: list[Ref],
    primary: Ref,
    timeout: float,
    poll: float = 5.0,
    out: TextIO = sys.stdout,
    log: LogSource | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> JobOutcome:
    """Poll the objects of the launcher's kind among ``refs`` until ``primary`` succeeds
    (returned) or one of them fails, or until ``timeout`` seconds pass (every object is deleted
    then); both raise JobError with the condition's message. ``log``: whose log to stream
    meanwhile. API errors while polling are retried until the deadline: the job goes on
    without us."""
    from kubernetes import client

    watched = [r for r in refs if r.kind == launcher.kind]
    start = clock()
    deadline = start + timeout
    follower = None
    if log:
        follower = LogFollower(
            api_client,
            log.pod,
            primary.namespace,
            log.task,
            out,
            poll=poll,
            container=log.container,
            selector=log.selector,
        )
        follower.start()
    shown, last_error, ref = None, "", primary
    try:
        while True:
            try:
                phases = {}
                for ref in watched:
                    phases[ref] = job_status.phase(
                        ref.kind, kube_api.request(api_client, "GET", ref.path())
                    )
                now, message = phases[primary]
                if now != shown:
                    shown = now
                    extra = f": {message}" if message else ""
                    print(f"{launcher.name}: {primary} {now}{extra}", file=out, flush=True)
                failed = [r for r in watched if phases[r][0] == job_status.FAILED]
                if failed or now == job_status.SUCCEEDED:
                    delete_objects(api_client, _leftovers(launcher, refs, phases), launcher, out)
                if failed:
                    why = phases[failed[0]][1] or "no reason"
                    raise JobError(f"{failed[0].kind} {failed[0]} failed: {why}")
                if now == job_status.SUCCEEDED:
                    return JobOutcome(
                        now,
                        message,
                        clock() - start,
                        primary.namespace or "",
                        primary.name,
                        launcher.name,
                        launcher.kind,
                    )
            except client.ApiException as e:
                if e.status == 404:
                    raise JobError(f"{ref.kind} {ref} was deleted") from None
                last_error = f"{e.status} {e.reason}"
            except kube_api.unreachable_errors() as e:  # the API server is away
                last_error = f"{type(e).__name__}: {e}"[:300]
            if clock() >= deadline:
                everything = [r for r in refs if r.namespace is not None]
                delete_objects(api_client, refs, launcher, out)
                stuck = f"; last API error: {last_error}" if last_error else ""
                what = "it" if len(everything) == 1 else f"its {len(everything)} objects"
                raise JobError(
                    f"{primary.kind} {primary} did not finish within {timeout:g} s "
                    f"(last phase {shown or 'unknown'}{stuck}); deleted {what}"
                )
            sleep(poll)
    finally:
        if follower:
            # Let the stream of a finished container drain, then stop polling.
            follower.stopping.set()
            follower.join(timeout=10)


def primary_ref(launcher: Launcher, spec, refs: list[Ref]) -> Ref:
    """The object whose success is the job's: the chief's Job for plain Jobs (the workers'
    without a chief), else the one object of the launcher's kind."""
    if launcher.kind == "Job":
        name = indexed_job.job_names(spec)[pods.roles(spec)[0][0]]
        return next(r for r in refs if r.kind == "Job" and r.name == name)
    return next(r for r in refs if r.kind == launcher.kind)


def run_launcher(
    spec: tfjob.TFJobSpec,
    launcher: str = "auto",
    runtime: str | None = None,
    timeout: float = 86400.0,
    poll: float = 5.0,
    api_client=None,
    out: TextIO = sys.stdout,
) -> JobOutcome:
    """Run ``spec`` with ``launcher`` (``auto``, ``tfjob``, ``trainjob``, ``jobset``, ``job``):
    create its objects (or follow the existing ones of those names), stream the chief's log to
    ``out`` and wait for the job to succeed.

    ``runtime``: for ``trainjob``, an installed ClusterTrainingRuntime to use instead of the
    one tfpipes ships. ``spec.namespace`` None means :func:`kube_api.default_namespace`;
    ``api_client`` None means :func:`kube_api.load_api_client`. Returns the outcome (launcher,
    kind, namespace and name of the followed object). Raises UserError for an invalid spec or
    launcher (before anything is sent), JobError when the job cannot be created, fails, is
    deleted, or does not finish within ``timeout`` seconds (everything is deleted then), and
    RetryableError when the API server cannot be reached to create it.
    """
    if launcher != "auto":
        get_launcher(launcher)
        if runtime and launcher != "trainjob":
            raise UserError("--runtime is only for --launcher trainjob")
    tfjob.validate(spec)
    namespace = spec.namespace or kube_api.default_namespace()
    spec = dataclasses.replace(spec, namespace=namespace)
    if launcher != "auto":  # every launcher's own rules, before anything is sent
        LAUNCHERS[launcher].objects(spec, runtime if launcher == "trainjob" else None)
    api_client = api_client or kube_api.load_api_client()
    if launcher == "auto":
        launcher, why = discovery.choose_launcher(api_client)
        print(f"launcher auto: {launcher} ({why})", file=out, flush=True)
    chosen = LAUNCHERS[launcher]
    objects = chosen.objects(spec, runtime if launcher == "trainjob" else None)
    refs = create_objects(api_client, chosen, objects, namespace, out)
    return follow(
        api_client,
        chosen,
        refs,
        primary_ref(chosen, spec, refs),
        timeout,
        poll=poll,
        out=out,
        log=chief_source(chosen, spec),
    )
