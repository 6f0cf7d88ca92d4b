"""The train step with a TFJob (components/tfjob_op.py over tfpipes/cluster/supervisor.py) and
the distributed pipeline. The other launchers: tests/test_launch_step.py.

There is no Kubernetes cluster here. :class:`~tests.kube_stand_in.FakeKube` is a deliberately
minimal stand-in for the Kubernetes API on 127.0.0.1: discovery, the objects of each launcher
(a TFJob whose status conditions advance one scripted phase per GET as the Training Operator
would set them), a pod whose ``tensorflow`` container runs while the job runs, and no other
API semantics (no admission, no watch, no auth). What it can check, it checks: every object
it is sent is validated against its schema (the Training Operator's CRD for a TFJob, strict,
as ``kubectl apply`` is) before it is accepted.

The step itself is the real code with the real ``kubernetes`` client, reaching the stand-in
through a kubeconfig file, as it would reach a cluster from a workstation.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import yaml
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components.tfjob_op import run_step, tfjob_train_op

from tests.kube_stand_in import FakeKube
from tests.kube_stand_in import tfjob_conditions as conditions
from tfpipes.cluster.jobs import TFJobError, job_phase, wait_for_tfjob


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


def step_exit_code(tmp_path, **params) -> int:
    """The component's own body, as KFP runs it (artifacts in, SystemExit out), with
    ``params`` (image ``tfpipes:test`` unless given); returns the exit code it raised."""
    examples, model, metrics = artifacts(tmp_path)
    with pytest.raises(SystemExit) as exc:
        tfjob_train_op.python_func(
            examples=examples, model=model, metrics=metrics, **{"image": "tfpipes:test", **params}
        )
    return exc.value.code


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
    backoff_limit=3,
    timeout=30.0,
)


def step(examples, model, metrics, **params):
    """run_step with the trainer arguments of an mlp trained 200 steps on ``examples``."""
    model_dir = params.get("model_dir") or model.uri
    train_argv = ["--data", examples.uri, "--model-dir", model_dir, "--model", "mlp"]
    train_argv += ["--hidden", "64,32", "--batch-size", "64", "--train-steps", "200"]
    return run_step(model, metrics, train_argv=train_argv + ["--seed", "42"], **params)


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


def test_tfjob_error_is_a_tfpipes_error_with_exit_1():
    """One error hierarchy: exit_on_error (every entry point's wrapper) turns a failed job
    into one line and exit 1, not a traceback."""
    from tfpipes.errors import EXIT_FAILURE, TfpipesError, UserError, exit_on_error

    assert issubclass(TFJobError, TfpipesError) and not issubclass(TFJobError, UserError)
    with pytest.raises(SystemExit) as exc:
        with exit_on_error("tfjob_train"):
            raise TFJobError("TFJob ml/x failed: boom")
    assert exc.value.code == EXIT_FAILURE == 1


def test_tfjob_constants_come_from_the_manifest_module():
    """The client side reaches the resource the manifest declares: one source for each name."""
    from tfpipes.cluster import jobs, tfjob

    manifest = tfjob.build_tfjob(tfjob.TFJobSpec(image="i"))
    assert manifest["apiVersion"] == f"{jobs.GROUP}/{jobs.VERSION}"
    (container,) = manifest["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == jobs.CONTAINER_NAME


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
    outcome = step(examples, model, metrics, **params, poll=0.05, out=out)
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
    assert step_exit_code(tmp_path, workers=2, poll_seconds=0.05) == 1
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
    step(examples, model, metrics, **dict(STEP_DEFAULTS, ps=1, chief=True), poll=0.05, out=out)
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
        step(examples, model, metrics, **dict(STEP_DEFAULTS, timeout=1.0), poll=0.05, out=Lines())
    assert time.monotonic() - start < 15
    name = fake.created[0]["metadata"]["name"]
    assert fake.deleted == [("ml", name)]


@pytest.mark.timeout(60)
def test_existing_job_of_a_retried_step_is_followed_not_recreated(kube_factory, tmp_path):
    fake = kube_factory(script=["Running", "Succeeded"], on_success=write_metrics)
    examples, model, metrics = artifacts(tmp_path)
    params = dict(STEP_DEFAULTS, job_name="nightly-train", namespace="team")
    out = Lines()
    step(examples, model, metrics, **params, poll=0.05, out=out)  # creates
    fake.gets.clear()
    step(examples, model, metrics, **params, poll=0.05, out=out)  # 409: follows
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
    # issue 15: the data check before training, the gate before publishing; issue 13: the
    # data set from preprocess in one task or fanned out (the branches), imported as one
    assert set(tasks) == {
        "input-bytes-op",
        "condition-branches-1",
        "importer",
        "check-data-op",
        "tfjob-train-op",
        "export-op",
        "evaluate-op",
        "condition-6",
    }
    train = tasks["tfjob-train-op"]
    assert train["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]["producerTask"] == (
        "importer"
    )
    export = tasks["export-op"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert export == {"outputArtifactKey": "model", "producerTask": "tfjob-train-op"}
    params = spec["root"]["inputDefinitions"]["parameters"]
    for name in (
        "launcher",
        "workers",
        "ps",
        "chief",
        "gpus_per_worker",
        "image",
        "timeout_seconds",
    ):
        assert name in params
    assert params["launcher"]["defaultValue"] == "auto"
    assert train["inputs"]["parameters"]["launcher"] == {"componentInputParameter": "launcher"}
    # The secret is mounted into the KFP steps (platform spec) and passed to the TFJob pods.
    assert "gcs_secret" in json.dumps(train["inputs"]["parameters"])
    assert any("secretAsVolume" in json.dumps(d) for d in docs[1:])


def test_distributed_pipeline_places_the_jobs_pods_by_its_options(tmp_path):
    """The compile-time node selectors and tolerations reach every pod of the job (through the
    step's parameters, in `tfpipes launch`'s syntax), not the small pod that waits on it."""
    from tfpipes_pipelines.distributed import compile_distributed_pipeline, toleration_item
    from tfpipes_pipelines.training import PipelineOptions, parse_toleration

    from tfpipes.errors import UserError

    options = PipelineOptions(
        node_selector=(("pool", "gpu"), ("zone", "a")),
        tolerations=(parse_toleration("gpu=yes:NoSchedule"), parse_toleration("spot")),
    )
    path = compile_distributed_pipeline(str(tmp_path / "p.yaml"), options)
    spec = yaml.safe_load(open(path))
    passed = spec["root"]["dag"]["tasks"]["tfjob-train-op"]["inputs"]["parameters"]
    assert passed["node_selector"]["runtimeValue"]["constant"] == "pool=gpu,zone=a"
    assert passed["tolerations"]["runtimeValue"]["constant"] == "gpu=yes:NoSchedule,spot"
    assert "nodeSelector" not in open(path).read()  # the waiting pod goes anywhere
    with pytest.raises(UserError, match="--toleration"):
        toleration_item({"operator": "Exists"})
    with pytest.raises(UserError, match="--toleration"):
        toleration_item({"key": "k", "operator": "Exists", "tolerationSeconds": 30})
