"""The TFJob train step (components/tfjob_op.py) and the distributed pipeline.

There is no Kubernetes cluster here. :class:`FakeKube` is a deliberately minimal stand-in for
the Kubernetes API on 127.0.0.1: only the five routes the step uses (create / get / delete a
``kubeflow.org/v1`` TFJob, get a pod, stream a pod's log), a TFJob whose status conditions
advance one scripted phase per GET as the Training Operator would set them, a pod whose
``tensorflow`` container runs while the job runs, and no other API semantics (no admission,
no watch, no auth). What it can check, it checks: every TFJob it is sent is validated against
the Training Operator's CRD (strict, as ``kubectl apply`` is) before it is accepted.

The step itself is the real code with the real ``kubernetes`` client, reaching the stand-in
through a kubeconfig file, as it would reach a cluster from a workstation.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components.tfjob_op import (
    TFJobError,
    job_phase,
    run_step,
    tfjob_train_op,
    wait_for_tfjob,
)

from tests.test_tfjob import validate as validate_tfjob

TFJOBS = re.compile(r"^/apis/kubeflow\.org/v1/namespaces/([^/]+)/tfjobs(?:/([^/]+))?$")
POD = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+?)(/log)?$")


def conditions(phases: list[str], message: str = "") -> list[dict]:
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


class FakeKube:
    """See the module docstring. ``script``: the phases a job goes through, one per GET
    (the last one repeats); ``logs``: one list of lines per container attempt (a
    ``Restarting`` phase starts a new pod); ``on_success(manifest)`` runs when a job first
    reports ``Succeeded`` (the test plays the chief writing its outputs)."""

    def __init__(self, script, logs=(), message="", on_success=None):
        self.script = list(script)
        self.logs = [list(lines) for lines in logs]
        self.message = message
        self.on_success = on_success
        self.jobs: dict[tuple[str, str], dict] = {}
        self.gets: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.created: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
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

    # --- state ---------------------------------------------------------------------------

    def phases(self, key) -> list[str]:
        n = self.gets.get(key, 0)
        return self.script[: max(1, min(n, len(self.script)))] if n else []

    def attempt(self, key) -> int:
        """Which container attempt the pod runs: one more per Restarting seen."""
        return sum(1 for p in self.phases(key) if p == "Restarting")

    def phase(self, key) -> str:
        phases = self.phases(key)
        return phases[-1] if phases else "Pending"

    # --- routes ----------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str):
        url = urlparse(h.path)
        with self.lock:
            self.requests.append((method, url.path))
        m = TFJOBS.match(url.path)
        if m:
            return self.tfjob(h, method, m.group(1), m.group(2))
        m = POD.match(url.path)
        if m and method == "GET":
            if m.group(3):
                return self.pod_log(h, m.group(1), m.group(2), parse_qs(url.query))
            return self.pod(h, m.group(1), m.group(2))
        self.reply(h, 404, status(404, "NotFound", f"no route {method} {url.path}"))

    def tfjob(self, h, method, ns, name):
        if method == "POST" and name is None:
            body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
            try:
                validate_tfjob(body)
            except Exception as e:  # what the API server would refuse
                first = str(e).splitlines()[0]
                return self.reply(h, 422, status(422, "Invalid", first))
            key = (ns, body["metadata"]["name"])
            with self.lock:
                if key in self.jobs:
                    return self.reply(h, 409, status(409, "AlreadyExists", f"{key} exists"))
                self.jobs[key] = body
                self.created.append(body)
            return self.reply(h, 201, body)
        key = (ns, name)
        with self.lock:
            job = self.jobs.get(key)
        if job is None:
            return self.reply(h, 404, status(404, "NotFound", f"tfjobs {name!r} not found"))
        if method == "DELETE":
            with self.lock:
                self.jobs.pop(key)
                self.deleted.append(key)
            return self.reply(h, 200, status(200, "Success", "deleted"))
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
            self.on_success(job)
        message = self.message if now in ("Failed", "Succeeded") else ""
        return self.reply(h, 200, dict(job, status={"conditions": conditions(phases, message)}))

    def pod(self, h, ns, pod):
        key = self.job_of(ns, pod)
        if key is None:
            return self.reply(h, 404, status(404, "NotFound", f"pods {pod!r} not found"))
        with self.lock:
            phase, attempt = self.phase(key), self.attempt(key)
        if phase in ("Running", "Succeeded", "Failed"):
            state = {"running": {}} if phase == "Running" else {"terminated": {"exitCode": 0}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        return self.reply(
            h,
            200,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "namespace": ns, "uid": f"uid-{attempt}"},
                "status": {
                    "containerStatuses": [
                        {
                            "name": "tensorflow",
                            "restartCount": 0,
                            "state": state,
                            "ready": phase == "Running",
                            "image": "img",
                            "imageID": "",
                        }
                    ]
                },
            },
        )

    def pod_log(self, h, ns, pod, query):
        key = self.job_of(ns, pod)
        if key is None or query.get("container") != ["tensorflow"]:
            return self.reply(h, 404, status(404, "NotFound", f"pods {pod!r} not found"))
        with self.lock:
            phase, attempt = self.phase(key), self.attempt(key)
        if phase not in ("Running", "Succeeded", "Failed"):
            return self.reply(
                h, 400, status(400, "BadRequest", f"container in {pod} is waiting to start")
            )
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
                    key not in self.jobs
                    or self.phase(key) != "Running"
                    or self.attempt(key) != attempt
                ):
                    break
            time.sleep(0.02)

    def job_of(self, ns, pod):
        with self.lock:
            for jns, name in self.jobs:
                if jns == ns and re.fullmatch(re.escape(name) + r"-(chief|worker|ps)-\d+", pod):
                    return (jns, name)
        return None

    @staticmethod
    def reply(h, code, body):
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure" if code >= 300 else "Success",
        "reason": reason,
        "message": message,
        "code": code,
    }


@pytest.fixture
def kube_factory(tmp_path, monkeypatch):
    """Start a FakeKube and point a kubeconfig (``KUBECONFIG``) at it."""
    servers = []

    def start(**kwargs) -> FakeKube:
        fake = FakeKube(**kwargs)
        servers.append(fake)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [
                {"name": "c", "context": {"cluster": "fake", "user": "u", "namespace": "ml"}}
            ],
            "current-context": "c",
        }
        path = tmp_path / f"kubeconfig-{len(servers)}"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        return fake

    yield start
    for fake in servers:
        fake.close()


def api_client(fake: FakeKube):
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = fake.url
    return client.ApiClient(cfg)


def write_metrics(manifest: dict) -> None:
    """The chief's part: metrics.json in the --model-dir its command names."""
    replica = next(iter(manifest["spec"]["tfReplicaSpecs"].values()))
    command = replica["template"]["spec"]["containers"][0]["command"]
    model_dir = command[command.index("--model-dir") + 1]
    with open(f"{model_dir}/metrics.json", "w") as f:
        json.dump({"examples": 100, "loss": 0.25, "accuracy": 0.9, "step": 200}, f)


def artifacts(tmp_path):
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "model").mkdir(exist_ok=True)
    return (
        Dataset(uri=str(tmp_path / "data")),
        Model(uri=str(tmp_path / "model")),
        Metrics(uri=str(tmp_path / "metrics")),
    )


STEP_DEFAULTS = dict(
    image="tfpipes:test",
    workers=2,
    ps=0,
    chief=False,
    gpus_per_worker=0,
    cpu="",
    memory="",
    gcs_secret="",
    namespace="",
    job_name="",
    model_dir="",
    train_argv=["--train-steps", "200"],
    backoff_limit=3,
    timeout=30.0,
)


class Lines:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


# --- the status logic, no server ------------------------------------------------------------


def test_job_phase():
    assert job_phase(None) == ("Pending", "")
    assert job_phase({"conditions": []}) == ("Pending", "")
    assert job_phase({"conditions": conditions(["Created"])})[0] == "Created"
    assert job_phase({"conditions": conditions(["Created", "Running"])})[0] == "Running"
    restarting = conditions(["Created", "Running", "Restarting"])
    assert job_phase({"conditions": restarting})[0] == "Restarting"
    assert job_phase({"conditions": conditions(["Created", "Running", "Succeeded"])})[0] == (
        "Succeeded"
    )
    failed = conditions(["Created", "Running", "Failed"], "1 Worker replica(s) failed.")
    assert job_phase({"conditions": failed}) == ("Failed", "1 Worker replica(s) failed.")
    # A terminal condition wins whatever the order; a false one does not count.
    odd = [
        {
            "type": "Failed",
            "status": "True",
            "message": "m",
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
        {"type": "Running", "status": "True", "lastTransitionTime": "2025-01-01T00:00:09Z"},
    ]
    assert job_phase({"conditions": odd}) == ("Failed", "m")
    assert job_phase({"conditions": [{"type": "Succeeded", "status": "False"}]}) == ("Pending", "")


# --- the step against the stand-in ---------------------------------------------------------

SHAPES = {
    "mwms-2-workers": dict(workers=2),
    "mwms-chief-gpus": dict(workers=3, chief=True, gpus_per_worker=2, cpu="4", memory="16Gi"),
    "ps": dict(workers=2, ps=2, gcs_secret="gcs-sa"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", SHAPES)
def test_step_creates_a_valid_tfjob_streams_the_chief_log_and_outputs_artifacts(
    kube_factory, tmp_path, shape
):
    fake = kube_factory(
        script=["Created", "Running", "Running", "Running", "Succeeded"],
        logs=[["step 100/200 loss 0.5", "step 200/200 loss 0.25", "train: done"]],
        on_success=write_metrics,
    )
    examples, model, metrics = artifacts(tmp_path)
    out = Lines()
    params = dict(STEP_DEFAULTS, **SHAPES[shape])
    outcome = run_step(examples, model, metrics, **params, poll=0.05, out=out)
    assert outcome.phase == "Succeeded"

    (manifest,) = fake.created  # validated against the CRD by the stand-in
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    assert ns == "ml"  # the kubeconfig context's namespace
    assert re.fullmatch(r"tfpipes-train-[0-9a-f]{8}", name)
    replicas = manifest["spec"]["tfReplicaSpecs"]
    has_chief = SHAPES[shape].get("chief") or SHAPES[shape].get("ps", 0) > 0
    assert ("Chief" in replicas) == bool(has_chief)
    for replica in replicas.values():
        (c,) = replica["template"]["spec"]["containers"]
        assert c["image"] == "tfpipes:test"
        assert c["command"][:6] == [
            "tfpipes",
            "train",
            "--data",
            examples.uri,
            "--model-dir",
            model.uri,
        ]
    # The chief's log (worker 0's without a chief), each line once, prefixed by its task.
    task = "chief:0" if has_chief else "worker:0"
    for line in ("step 100/200 loss 0.5", "train: done"):
        assert out.text.count(f"[{task}] {line}\n") == 1, out.text
    assert f"tfjob: {ns}/{name} Succeeded" in out.text
    assert ("GET", f"/api/v1/namespaces/ml/pods/{name}-{task.replace(':', '-')}/log") in (
        fake.requests
    )
    # Artifacts: the model dir and the chief's metrics.
    assert model.metadata["model_dir"] == model.uri
    assert model.metadata["tfjob"] == f"ml/{name}" and model.metadata["step"] == 200
    assert metrics.metadata["accuracy"] == 0.9
    assert json.loads(open(metrics.path).read())["loss"] == 0.25
    assert not fake.deleted


@pytest.mark.timeout(60)
def test_failed_job_fails_the_component_with_the_condition_message(kube_factory, tmp_path, capsys):
    message = "TFJob ml/x has failed because 1 Worker replica(s) failed."
    fake = kube_factory(
        script=["Created", "Running", "Failed"], logs=[["Traceback: boom"]], message=message
    )
    examples, model, metrics = artifacts(tmp_path)
    # The component's own body, as KFP runs it (artifacts in, SystemExit out).
    with pytest.raises(SystemExit) as exc:
        tfjob_train_op.python_func(
            examples=examples,
            model=model,
            metrics=metrics,
            image="tfpipes:test",
            workers=2,
            poll_seconds=0.05,
        )
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert re.search(
        r"tfjob_train: error: TFJob ml/tfpipes-train-\w+ failed: " + re.escape(message), err
    )
    assert len(fake.created) == 1 and not fake.deleted


@pytest.mark.timeout(60)
def test_restarted_chief_log_is_streamed_once_per_container(kube_factory, tmp_path):
    fake = kube_factory(
        script=["Created", "Running", "Running", "Restarting", "Running", "Running", "Succeeded"],
        logs=[["attempt 1 started", "attempt 1 killed"], ["attempt 2 resumed at step 100"]],
        on_success=write_metrics,
    )
    examples, model, metrics = artifacts(tmp_path)
    out = Lines()
    run_step(examples, model, metrics, **dict(STEP_DEFAULTS, ps=1, chief=True), poll=0.05, out=out)
    for line in ("attempt 1 started", "attempt 1 killed", "attempt 2 resumed at step 100"):
        assert out.text.count(f"[chief:0] {line}\n") == 1, out.text
    assert "Restarting" in out.text
    assert len(fake.created) == 1


@pytest.mark.timeout(60)
def test_timeout_deletes_the_job(kube_factory, tmp_path):
    fake = kube_factory(script=["Created", "Running"], logs=[["still going"]])
    examples, model, metrics = artifacts(tmp_path)
    start = time.monotonic()
    with pytest.raises(TFJobError, match=r"did not finish within 1 s \(last phase Running\)"):
        run_step(
            examples, model, metrics, **dict(STEP_DEFAULTS, timeout=1.0), poll=0.05, out=Lines()
        )
    assert time.monotonic() - start < 15
    name = fake.created[0]["metadata"]["name"]
    assert fake.deleted == [("ml", name)]


@pytest.mark.timeout(60)
def test_existing_job_of_a_retried_step_is_followed_not_recreated(kube_factory, tmp_path):
    fake = kube_factory(script=["Running", "Succeeded"], on_success=write_metrics)
    examples, model, metrics = artifacts(tmp_path)
    params = dict(STEP_DEFAULTS, job_name="nightly-train", namespace="team")
    out = Lines()
    run_step(examples, model, metrics, **params, poll=0.05, out=out)  # creates
    fake.gets.clear()
    run_step(examples, model, metrics, **params, poll=0.05, out=out)  # 409: follows
    assert len(fake.created) == 1
    assert "tfjob: team/nightly-train exists; following it" in out.text


@pytest.mark.timeout(30)
def test_api_errors_while_waiting_are_retried_until_the_deadline(kube_factory):
    fake = kube_factory(script=["Running"])
    fake.close()  # nothing answers any more
    with pytest.raises(TFJobError, match="did not finish within 0.5 s"):
        wait_for_tfjob(api_client(fake), "gone", "ml", timeout=0.5, poll=0.05, out=Lines())


# --- the pipeline --------------------------------------------------------------------------


def test_distributed_pipeline_compiles_with_the_tfjob_step(tmp_path):
    from tfpipes_pipelines.distributed import compile_distributed_pipeline
    from tfpipes_pipelines.training import PipelineOptions

    path = compile_distributed_pipeline(str(tmp_path / "p.yaml"), PipelineOptions(gcs_secret="s"))
    docs = list(yaml.safe_load_all(open(path)))
    spec = docs[0]
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"fingerprint-op", "preprocess-op", "tfjob-train-op", "export-op"}
    train = tasks["tfjob-train-op"]
    assert train["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]["producerTask"] == (
        "preprocess-op"
    )
    export = tasks["export-op"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert export == {"outputArtifactKey": "model", "producerTask": "tfjob-train-op"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in ("workers", "ps", "chief", "gpus_per_worker", "image", "timeout_seconds"):
        assert name in params
    # The secret is mounted into the KFP steps (platform spec) and passed to the TFJob pods.
    assert "gcs_secret" in json.dumps(train["inputs"]["parameters"])
    assert any("secretAsVolume" in json.dumps(d) for d in docs[1:])
