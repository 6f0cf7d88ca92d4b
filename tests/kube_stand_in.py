"""A deliberately minimal stand-in for the Kubernetes API on 127.0.0.1, for the train step.

Only what the step uses: discovery (``/apis``, ``/apis/<group>/<version>``) of the launchers
``installed``; create / get / delete of TFJobs, TrainJobs, ClusterTrainingRuntimes, JobSets,
Jobs and Services (a kind not installed answers 404, as with no CRD); get and list (by label
selector) pods and stream a pod's log. No admission, no watch, no auth. What it can check, it
checks: every object it is sent is validated against its schema
(``tests.test_launchers.validate``: the CRDs, kubernetes-validate and the controllers' own
rules) before it is accepted.

The job is played as its controller would: the followed object (the TFJob, TrainJob, JobSet,
or the chief's Job, else the workers') goes through ``script``'s phases (``Created``,
``Running``, ``Restarting``, ``Succeeded``, ``Failed``), one per GET, written as that kind's
status; its chief pod carries the name and labels the controller gives it (a new pod per
attempt where the controller recreates pods) and a container named as the manifest names it.
Other Jobs stay active (parameter servers never exit).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from tests.json_http import reply_json
from tests.test_launchers import validate

LAUNCHER_RESOURCES = {
    "tfjob": ("kubeflow.org/v1", [("tfjobs", "TFJob", True)]),
    "trainjob": (
        "trainer.kubeflow.org/v1alpha1",
        [
            ("trainjobs", "TrainJob", True),
            ("trainjobs/status", "TrainJob", True),
            ("trainingruntimes", "TrainingRuntime", True),
            ("clustertrainingruntimes", "ClusterTrainingRuntime", False),
        ],
    ),
    "jobset": ("jobset.x-k8s.io/v1alpha2", [("jobsets", "JobSet", True)]),
}
ALWAYS = {
    "batch/v1": [("jobs", "Job", True), ("jobs/status", "Job", True)],
    "v1": [("services", "Service", True), ("pods", "Pod", True)],
}
OBJECTS = re.compile(
    r"^/(?:apis/(?P<gv>[^/]+/[^/]+)|api/(?P<core>v1))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[a-z]+)(?:/(?P<name>[^/]+))?$"
)
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+?)(/log)?)?$")
ROOT_KINDS = ("TFJob", "TrainJob", "JobSet")


def tfjob_conditions(phases: list[str], message: str = "") -> list[dict]:
    """Conditions as the Training Operator leaves them after ``phases``: one per type, the
    last one true, ``Created`` staying true, ``Running`` false once the job has ended."""
    out: dict[str, dict] = {}
    for i, phase in enumerate(phases):
        for c in out.values():
            if c["type"] not in ("Created",):
                c["status"] = "False"
        out[phase] = {
            "type": phase,
            "status": "True",
            "reason": f"TFJob{phase}",
            "message": message if i == len(phases) - 1 and message else f"TFJob is {phase}.",
            "lastTransitionTime": f"2025-01-01T00:00:{i:02d}Z",
        }
    return list(out.values())


def _condition(kind, reason, message):
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:01:00Z",
    }


def status_for(kind: str, phases: list[str], message: str, role: str) -> dict:
    """``kind``'s status after ``phases``, as its controller writes it."""
    if kind == "TFJob":
        return {"conditions": tfjob_conditions(phases, message)}
    now = phases[-1] if phases else "Pending"
    restarts = phases.count("Restarting")
    running = now in ("Running", "Restarting")
    if kind == "Job":
        status: dict = {"active": 1 if running else 0, "failed": restarts}
        if now == "Succeeded":
            status["conditions"] = [_condition("Complete", "", message)]
            status["succeeded"] = 1
        elif now == "Failed":
            status["conditions"] = [
                _condition("FailureTarget", "PodFailurePolicy", message),
                _condition("Failed", "PodFailurePolicy", message),
            ]
        return status
    children = [{"name": role, "active": 1 if running else 0, "ready": 0, "succeeded": 0}]
    children[0].update({"failed": 0, "suspended": 0})
    status = {}
    if kind == "JobSet":
        status = {"restarts": restarts, "replicatedJobsStatus": children}
    else:
        status = {"jobsStatus": children}
    done = {"JobSet": "Completed", "TrainJob": "Complete"}[kind]
    if now == "Succeeded":
        status["conditions"] = [_condition(done, "AllJobsCompleted", message or "completed")]
    elif now == "Failed":
        status["conditions"] = [_condition("Failed", "FailedJobs", message)]
    return status


def _role(obj: dict) -> str:
    """The role whose pod is the chief's (chief, else worker 0)."""
    kind = obj["kind"]
    if kind == "TFJob":
        return "chief" if "Chief" in obj["spec"]["tfReplicaSpecs"] else "worker"
    if kind == "Job":
        return obj["metadata"]["labels"]["tfpipes.dev/role"]
    if kind == "JobSet":
        names = [r["name"] for r in obj["spec"]["replicatedJobs"]]
    else:
        (patch,) = obj["spec"]["runtimePatches"]
        rjobs = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        names = [r["name"] for r in rjobs]
    return "chief" if "chief" in names else "worker"


class FakeKube:
    """See the module docstring. ``script``: the phases a job goes through, one per GET
    (the last one repeats); ``logs``: one list of lines per container attempt (a
    ``Restarting`` phase starts a new one); ``message``: the terminal condition's message;
    ``on_success(obj)`` runs when a job first reports ``Succeeded`` (the test plays the chief
    writing its outputs); ``installed``: the launchers whose resources are served."""

    def __init__(
        self,
        script,
        logs=(),
        message="",
        on_success=None,
        installed=("tfjob", "trainjob", "jobset"),
    ):
        self.script = list(script)
        self.logs = [list(lines) for lines in logs]
        self.message = message
        self.on_success = on_success
        self.resources = dict(ALWAYS)
        for name in installed:
            gv, resources = LAUNCHER_RESOURCES[name]
            self.resources[gv] = resources
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, ns, name)
        self.gets: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
        self.deleted_kinds: list[tuple[str, str, str]] = []
        self.served: set[int] = set()  # container attempts whose log was written out
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                fake.handle(self, "POST")

            def do_GET(self):
                fake.handle(self, "GET")

            def do_DELETE(self):
                fake.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    @property
    def jobs(self) -> dict[tuple[str, str], dict]:
        """The objects that exist, by (namespace, name)."""
        with self.lock:
            return {(ns, name): o for (_, ns, name), o in self.objects.items()}

    # --- the scripted job ----------------------------------------------------------------

    def phases(self, key) -> list[str]:
        n = self.gets.get(key, 0)
        return self.script[: max(1, min(n, len(self.script)))] if n else []

    def attempt(self, key) -> int:
        """Which container attempt the chief runs: one more per Restarting seen."""
        return sum(1 for p in self.phases(key) if p == "Restarting")

    def phase(self, key) -> str:
        phases = self.phases(key)
        return phases[-1] if phases else "Pending"

    def followed(self, obj: dict) -> bool:
        """Whether ``obj`` is the job whose status the script drives."""
        if obj["kind"] in ROOT_KINDS:
            return True
        if obj["kind"] != "Job":
            return False
        ns, role = obj["metadata"]["namespace"], obj["metadata"]["labels"]["tfpipes.dev/role"]
        base = obj["metadata"]["labels"]["tfpipes.dev/job"]
        roles = {o["metadata"]["labels"]["tfpipes.dev/role"] for o in self.same_jobs(ns, base)}
        return role == ("chief" if "chief" in roles else "worker")

    def same_jobs(self, ns, base):
        with self.lock:
            items = list(self.objects.items())
        return [
            o
            for (plural, ons, _), o in items
            if plural == "jobs" and ons == ns and o["metadata"]["labels"]["tfpipes.dev/job"] == base
        ]

    # --- routes --------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str):
        url = urlparse(h.path)
        with self.lock:
            self.requests.append((method, url.path))
        if method == "GET" and url.path == "/apis":
            return self.reply(h, 200, self.group_list())
        m = POD.match(url.path)
        if m and method == "GET":
            ns, pod, log = m.groups()
            if pod is None:
                return self.pod_list(h, ns, parse_qs(url.query))
            if log:
                return self.pod_log(h, ns, pod, parse_qs(url.query))
            found = self.pod_named(ns, pod)
            if found is None:
                return self.reply(h, 404, status(404, "NotFound", f"pods {pod!r} not found"))
            return self.reply(h, 200, found)
        m = OBJECTS.match(url.path)
        if m:
            gv = m.group("gv") or m.group("core")
            return self.object(h, method, gv, m.group("ns"), m.group("plural"), m.group("name"))
        gv = url.path.removeprefix("/apis/")
        if method == "GET" and gv in self.resources:
            return self.reply(h, 200, self.resource_list(gv))
        self.reply(h, 404, status(404, "NotFound", f"no route {method} {url.path}"))

    def group_list(self) -> dict:
        groups = []
        for gv in self.resources:
            if "/" in gv:
                group, version = gv.split("/")
                v = {"groupVersion": gv, "version": version}
                groups.append({"name": group, "versions": [v], "preferredVersion": v})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def resource_list(self, gv) -> dict:
        resources = [
            {"name": p, "singularName": "", "namespaced": ns, "kind": k, "verbs": ["get"]}
            for p, k, ns in self.resources[gv]
        ]
        return {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}

    def object(self, h, method, gv, ns, plural, name):
        served = {p: (k, namespaced) for p, k, namespaced in self.resources.get(gv, [])}
        if plural not in served or served[plural][1] != (ns is not None):
            return self.reply(h, 404, status(404, "NotFound", f"no {gv}/{plural} served"))
        if method == "POST" and name is None:
            body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
            if body.get("kind") != served[plural][0] or body["metadata"].get("namespace") != ns:
                return self.reply(h, 400, status(400, "BadRequest", "kind or namespace mismatch"))
            try:
                validate(body)
            except Exception as e:  # what the API server (or its controller) would refuse
                first = str(e).splitlines()[0]
                return self.reply(h, 422, status(422, "Invalid", first))
            key = (plural, ns or "", body["metadata"]["name"])
            with self.lock:
                if key in self.objects:
                    return self.reply(h, 409, status(409, "AlreadyExists", f"{key} exists"))
                self.objects[key] = body
                self.created.append(body)
            return self.reply(h, 201, body)
        key = (plural, ns or "", name)
        with self.lock:
            obj = self.objects.get(key)
        if obj is None:
            return self.reply(h, 404, status(404, "NotFound", f"{plural} {name!r} not found"))
        if method == "DELETE":
            body = json.loads(h.rfile.read(int(h.headers.get("Content-Length") or 0)) or b"{}")
            with self.lock:
                self.objects.pop(key)
                self.deleted.append((ns or "", name))
                self.deleted_kinds.append((obj["kind"], ns or "", name))
            assert body.get("propagationPolicy") == "Foreground", body
            return self.reply(h, 200, status(200, "Success", "deleted"))
        if obj["kind"] not in (*ROOT_KINDS, "Job"):
            return self.reply(h, 200, obj)
        if not self.followed(obj):  # another role's Job: its pods run on
            return self.reply(h, 200, dict(obj, status=status_for("Job", ["Running"], "", "")))
        return self.reply(h, 200, self.advance(obj, (ns or "", name)))

    def advance(self, obj, key):
        with self.lock:
            before = self.phase(key)
            n = self.gets.get(key, 0)
            upcoming = self.script[min(n, len(self.script) - 1)]
            attempt = self.attempt(key)
            # The chief runs until it has written its log: a job leaves Running only after
            # the current container's log was served (keeps the test free of races).
            held = (
                before == "Running"
                and upcoming != "Running"
                and attempt < len(self.logs)
                and attempt not in self.served
            )
            if not held:
                self.gets[key] = n + 1
            now = self.phase(key)
            phases = self.phases(key)
        if now == "Succeeded" and before != "Succeeded" and self.on_success:
            self.on_success(obj)
        message = self.message if now in ("Failed", "Succeeded") else ""
        return dict(obj, status=status_for(obj["kind"], phases, message, _role(obj)))

    # --- the chief's pod -----------------------------------------------------------------

    def chief_pods(self, ns) -> list[tuple[dict, tuple[str, str]]]:
        """Every chief pod of ``ns`` that exists now (a recreated pod's predecessor
        included, terminated), with the key of its job."""
        out = []
        with self.lock:
            roots = [(o, (n_, name)) for (_, n_, name), o in self.objects.items() if n_ == ns]
        for obj, key in roots:
            if not self.followed(obj):
                continue
            with self.lock:
                phase, attempt = self.phase(key), self.attempt(key)
            recreates = obj["kind"] != "TFJob"  # the operator restarts in place, by name
            for a in range(attempt + 1) if recreates else [attempt]:
                out.append((self.pod_of(obj, key, a, phase if a == attempt else "Failed"), key))
        return out

    def pod_of(self, obj, key, attempt, phase) -> dict:
        kind, name, role = obj["kind"], key[1], _role(obj)
        labels: dict = {}
        if kind == "TFJob":
            pod = f"{name}-{role}-0"
        elif kind == "Job":
            pod = f"{name}-0-a{attempt}b"
            labels = {"batch.kubernetes.io/job-name": name, "job-name": name}
        else:
            pod = f"{name}-{role}-0-0-a{attempt}b"
            labels = {
                "jobset.sigs.k8s.io/jobset-name": name,
                "jobset.sigs.k8s.io/replicatedjob-name": role,
                "jobset.sigs.k8s.io/job-index": "0",
            }
        if kind != "TFJob":
            labels["batch.kubernetes.io/job-completion-index"] = "0"
        if phase in ("Running", "Succeeded", "Failed"):
            state = {"running": {}} if phase == "Running" else {"terminated": {"exitCode": 0}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "namespace": key[0],
                "uid": f"uid-{attempt}",
                "labels": labels,
                "creationTimestamp": f"2025-01-01T00:0{attempt}:00Z",
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": self.container_of(obj, role),
                        "restartCount": 0,
                        "state": state,
                        "ready": phase == "Running",
                        "image": "img",
                        "imageID": "",
                    }
                ]
            },
        }

    def container_of(self, obj, role) -> str:
        """The container's name as the controller creates it from the manifests."""
        kind = obj["kind"]
        if kind == "TFJob":
            replica = obj["spec"]["tfReplicaSpecs"][{"chief": "Chief", "worker": "Worker"}[role]]
            return replica["template"]["spec"]["containers"][0]["name"]
        if kind == "Job":
            return obj["spec"]["template"]["spec"]["containers"][0]["name"]
        if kind == "TrainJob":
            ref = obj["spec"]["runtimeRef"]["name"]
            runtime = self.objects.get(("clustertrainingruntimes", "", ref))
            if runtime is None:
                return "node"  # an installed runtime: Trainer requires the name
            rjobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
        else:
            rjobs = obj["spec"]["replicatedJobs"]
        (rjob,) = [r for r in rjobs if r["name"] == role]
        return rjob["template"]["spec"]["template"]["spec"]["containers"][0]["name"]

    def pod_named(self, ns, name):
        for pod, _ in self.chief_pods(ns):
            if pod["metadata"]["name"] == name:
                return pod
        return None

    def pod_list(self, h, ns, query):
        selector = (query.get("labelSelector") or [""])[0]
        wanted = dict(item.split("=", 1) for item in selector.split(",") if item)
        items = [
            pod
            for pod, _ in self.chief_pods(ns)
            if wanted and wanted.items() <= pod["metadata"]["labels"].items()
        ]
        return self.reply(h, 200, {"apiVersion": "v1", "kind": "PodList", "items": items})

    def pod_log(self, h, ns, name, query):
        found = [(p, k) for p, k in self.chief_pods(ns) if p["metadata"]["name"] == name]
        if not found:
            return self.reply(h, 404, status(404, "NotFound", f"pods {name!r} not found"))
        pod, key = found[0]
        container = pod["status"]["containerStatuses"][0]
        if query.get("container") != [container["name"]]:
            return self.reply(h, 400, status(400, "BadRequest", f"no container {query} in {name}"))
        if "waiting" in container["state"]:
            return self.reply(h, 400, status(400, "BadRequest", f"{name} is waiting to start"))
        attempt = int(pod["metadata"]["uid"].removeprefix("uid-"))
        # HTTP/1.0 without a length: the body ends when the connection closes, as a followed
        # log ends when its container stops.
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.end_headers()
        for line in self.logs[attempt] if attempt < len(self.logs) else []:
            h.wfile.write(line.encode() + b"\n")
            h.wfile.flush()
        with self.lock:
            self.served.add(attempt)
        deadline = time.monotonic() + 10
        while query.get("follow") == ["true"] and time.monotonic() < deadline:
            with self.lock:
                if (
                    key not in {(n_, name) for (_, n_, name) in self.objects}
                    or self.phase(key) != "Running"
                    or self.attempt(key) != attempt
                ):
                    break
            time.sleep(0.02)

    @staticmethod
    def reply(h, code, body):
        reply_json(h, code, body)


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure" if code >= 300 else "Success",
        "reason": reason,
        "message": message,
        "code": code,
    }
