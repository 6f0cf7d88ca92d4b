"""Stream one task's container log into the step's own, whoever created the pod.

A TFJob's pods have fixed names (``<job>-chief-0``); JobSet's and the Job controller's have a
random suffix and a new name on every restart, so they are found by the labels the controllers
set (:func:`chief_source`). Either way :class:`LogFollower` streams each container attempt once.
"""

from __future__ import annotations

import threading
from typing import NamedTuple, TextIO

from tfpipes.cluster import indexed_job, pods
from tfpipes.cluster.tfjob import CONTAINER_NAME

# Labels the controllers put on every pod (JobSet: on its Jobs and pods; the Job controller:
# the completion index, as a label since Kubernetes 1.28, and the Job's name).
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB = "jobset.sigs.k8s.io/replicatedjob-name"
JOB_INDEX = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME = "batch.kubernetes.io/job-name"


class LogSource(NamedTuple):
    """Whose log to stream: a pod by ``pod`` name, or the newest pod matching ``selector``;
    ``container`` in it; ``task`` the prefix of each line (``chief:0``)."""

    pod: str | None
    selector: str | None
    container: str
    task: str


def chief_source(launcher, spec) -> LogSource:
    """The chief's log (worker 0's without a chief) under ``launcher`` (a
    :class:`~tfpipes.cluster.launchers.Launcher`). Trainer names the JobSet of a TrainJob after
    it, so both find the pod by the JobSet's labels."""
    pod, task = launcher.log_pod(spec)
    role = pods.roles(spec)[0][0]
    if launcher.kind == "TFJob":
        return LogSource(pod, None, launcher.container, task)
    if launcher.kind == "Job":
        job = indexed_job.job_names(spec)[role]
        return LogSource(None, f"{JOB_NAME}={job},{COMPLETION_INDEX}=0", launcher.container, task)
    selector = f"{JOBSET_NAME}={spec.name},{REPLICATED_JOB}={role},{JOB_INDEX}=0"
    selector += f",{COMPLETION_INDEX}=0"
    return LogSource(None, selector, launcher.container, task)


class LogFollower(threading.Thread):
    """Streams one pod's container log to ``out`` with a ``[task]`` prefix.

    ``pod``: the pod's name; or ``selector``: a label selector, the newest matching pod being
    followed (a recreated pod has a new name). A pod that does not exist yet or whose
    container has not started is polled again; when a stream ends (the container exited) it
    waits for a new container (the pod recreated, or restarted in place) before streaming
    again, so no line is shown twice. Set ``stopping`` to end it.
    """

    def __init__(
        self,
        api_client,
        pod: str | None,
        namespace: str,
        prefix: str,
        out: TextIO,
        poll: float = 2.0,
        container: str = CONTAINER_NAME,
        selector: str | None = None,
    ):
        super().__init__(daemon=True, name=f"log-{pod or selector}")
        from kubernetes import client

        self.core = client.CoreV1Api(api_client)
        self.pod, self.namespace, self.prefix, self.out = pod, namespace, prefix, out
        self.poll, self.container, self.selector = poll, container, selector
        self.stopping = threading.Event()
        self.streams = 0
        self.lines = 0

    def _current(self):
        """(pod name, container identity) of the pod to follow now; identity None if its
        container has not started."""
        if self.selector is None:
            pod = self.core.read_namespaced_pod(self.pod, self.namespace)
            return self.pod, _container_identity(pod, self.container)
        found = self.core.list_namespaced_pod(self.namespace, label_selector=self.selector).items
        if not found:
            return None, None
        newest = max(found, key=lambda p: (str(p.metadata.creation_timestamp), p.metadata.name))
        return newest.metadata.name, _container_identity(newest, self.container)

    def run(self) -> None:
        from kubernetes import client

        streamed = None  # (pod uid, restart count) of the container last streamed to its end
        while not self.stopping.is_set():
            try:
                name, ident = self._current()
                if ident is None or ident == streamed:
                    self.stopping.wait(self.poll)
                    continue
                response = self.core.read_namespaced_pod_log(
                    name,
                    self.namespace,
                    container=self.container,
                    follow=True,
                    _preload_content=False,
                )
                self.streams += 1
                self._copy(response)
                streamed = ident
            except client.ApiException:
                self.stopping.wait(self.poll)  # no pod yet, or the container not started
            except Exception as e:  # a dropped connection: the job's status decides, not this
                where = self.pod or self.selector
                print(f"log stream of {where} broke ({e}); retrying", file=self.out)
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


def _container_identity(pod, container: str) -> tuple[str, int] | None:
    """(pod uid, restart count) once ``container`` has started, else None."""
    for cs in (pod.status and pod.status.container_statuses) or []:
        if cs.name == container and cs.state and (cs.state.running or cs.state.terminated):
            return (pod.metadata.uid, cs.restart_count or 0)
    return None
