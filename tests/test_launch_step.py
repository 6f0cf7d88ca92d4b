"""The train step with every launcher (trainjob, jobset, job; the TFJob: tests/test_tfjob_op.py)
against the Kubernetes API stand-in (tests/kube_stand_in.py), which validates every object it
is sent against its schema and plays each kind's controller: ``auto`` picks the kind when it
is the only one installed; success, failure with the condition's message, timeout (everything
deleted), a retried step (no second job), the chief's log found by the controllers' labels."""

# ruff: noqa: F811 (pytest passes the imported kube_factory fixture by its name)
from __future__ import annotations

import json
import re
import shlex

import pytest

from tests.kube_stand_in import FakeKube
from tests.test_launchers import pod_templates
from tests.test_tfjob_op import (  # noqa: F401 (kube_factory is a fixture)
    STEP_DEFAULTS,
    Lines,
    api_client,
    artifacts,
    kube_factory,
    step,
    step_exit_code,
)
from tfpipes.cluster import discovery, trainjob
from tfpipes.cluster.kube_api import JobError
from tfpipes.cluster.launchers import LAUNCHERS
from tfpipes.cluster.supervisor import create_objects
from tfpipes.cluster.tfjob import TFJobSpec
from tfpipes.errors import EXIT_RETRYABLE, RetryableError

NAMES = ("trainjob", "jobset", "job")
KINDS = {
    "trainjob": ["ClusterTrainingRuntime", "TrainJob"],
    "jobset": ["JobSet"],
    "job": ["Service", "Job"],  # and a chief's and a ps Job with parameter servers
}
PLACEMENT = dict(node_selector="pool=gpu", tolerations="nvidia.com/gpu:NoSchedule, spot")


def only(launcher: str) -> tuple[str, ...]:
    """``installed`` for a cluster with only ``launcher`` (plain Jobs are always there)."""
    return () if launcher == "job" else (launcher,)


def train_args(obj: dict) -> list[str]:
    """The trainer arguments an object's pods run (a TrainJob's through its patch)."""
    if obj["kind"] == "TrainJob":
        (patch,) = obj["spec"]["runtimePatches"]
        rjob = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        (env,) = [
            e
            for e in rjob["template"]["spec"]["template"]["spec"]["containers"][0]["env"]
            if e["name"] == trainjob.TRAIN_ARGS
        ]
        return shlex.split(env["value"])
    (pod, *_) = pod_templates(obj).values()
    return pod["containers"][0]["command"][2:]


def write_metrics(obj: dict) -> None:
    """The chief's part: metrics.json in the --model-dir its arguments name."""
    args = train_args(obj)
    with open(f"{args[args.index('--model-dir') + 1]}/metrics.json", "w") as f:
        json.dump({"examples": 100, "loss": 0.25, "accuracy": 0.9, "step": 200}, f)


def run(fake, tmp_path, out=None, **params):
    examples, model, metrics = artifacts(tmp_path)
    out = out if out is not None else Lines()
    outcome = step(examples, model, metrics, **dict(STEP_DEFAULTS, **params), poll=0.05, out=out)
    return outcome, model, metrics, out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ps", [0, 1], ids=["mwms", "ps"])
@pytest.mark.parametrize("launcher", NAMES)
def test_auto_picks_the_only_kind_installed_and_runs_it(kube_factory, tmp_path, launcher, ps):
    fake = kube_factory(
        script=["Created", "Running", "Running", "Succeeded"],
        logs=[["step 100/200 loss 0.5", "train: done"]],
        on_success=write_metrics,
        installed=only(launcher),
    )
    outcome, model, metrics, out = run(
        fake, tmp_path, launcher="auto", ps=ps, gcs_secret="gcs-sa", **PLACEMENT
    )
    assert f"launcher auto: {launcher} (" in out.text
    assert outcome.phase == "Succeeded" and outcome.launcher == launcher
    # Every object validated by the stand-in, created in the launcher's order.
    kinds = KINDS[launcher] + (["Job", "Job"] if launcher == "job" and ps else [])
    assert [o["kind"] for o in fake.created] == kinds
    for obj in fake.created:
        if obj["kind"] in ("JobSet", "Job"):
            for pod in pod_templates(obj).values():
                assert pod["nodeSelector"] == {"pool": "gpu"}
                assert pod["tolerations"] == [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Exists"},
                ]
                assert pod["volumes"][0]["secret"]["secretName"] == "gcs-sa"
        if obj["kind"] == "TrainJob":
            rjobs = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
            for rjob in rjobs["replicatedJobs"]:
                assert rjob["template"]["spec"]["template"]["spec"]["nodeSelector"] == {
                    "pool": "gpu"
                }
    # The chief's log (worker 0's under MWMS), each line once, from the pod found by labels.
    task = "chief:0" if ps else "worker:0"
    for line in ("step 100/200 loss 0.5", "train: done"):
        assert out.text.count(f"[{task}] {line}\n") == 1, out.text
    logs = [p for m, p in fake.requests if p.endswith("/log")]
    assert logs and all("-0-a0b/log" in p for p in logs), logs
    name = outcome.name
    assert model.metadata["job"] == f"ml/{name}" and model.metadata["launcher"] == launcher
    assert "tfjob" not in model.metadata and metrics.metadata["accuracy"] == 0.9
    if launcher == "job":
        # Parameter servers never outlive the job: the step deletes what is still running.
        base = name.removesuffix("-chief").removesuffix("-worker")
        assert name == f"{base}-{task.split(':')[0]}"
        running = [("Job", "ml", f"{base}-worker"), ("Job", "ml", f"{base}-ps")] if ps else []
        expected = [("Service", "ml", base), *running]
        assert sorted(fake.deleted_kinds) == sorted(expected)
    else:
        assert not fake.deleted  # the controller ends the rest; the runtime is shared


@pytest.mark.parametrize(
    "installed, chosen",
    [
        (("tfjob", "trainjob", "jobset"), "tfjob"),
        (("trainjob", "jobset"), "trainjob"),
        (("jobset",), "jobset"),
        ((), "job"),
    ],
)
def test_auto_prefers_tfjob_then_trainjob_then_jobset_then_job(kube_factory, installed, chosen):
    fake = kube_factory(script=["Running"], installed=installed)
    name, why = discovery.choose_launcher(api_client(fake))
    assert name == chosen
    if chosen == "job":
        assert why == (
            "no TFJob (kubeflow.org/v1), TrainJob (trainer.kubeflow.org/v1alpha1), "
            "JobSet (jobset.x-k8s.io/v1alpha2) served; batch/v1 Jobs always are"
        )
    else:
        assert why.startswith("the cluster serves ")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", NAMES)
def test_failed_job_fails_the_component_with_the_condition_message(
    kube_factory, tmp_path, capsys, launcher
):
    message = "Container tensorflow for pod ml/x exited with code 2 matching FailJob rule 0"
    fake = kube_factory(
        script=["Created", "Running", "Failed"],
        logs=[["tfpipes train: error: --hidden 'x'"]],
        message=message,
        installed=only(launcher),
    )
    assert step_exit_code(tmp_path, workers=2, ps=1, poll_seconds=0.05) == 1
    captured = capsys.readouterr()
    kind = {"trainjob": "TrainJob", "jobset": "JobSet", "job": "Job"}[launcher]
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"tfjob_train: error: {kind} ml/tfpipes-train-")
    assert line.endswith(f" failed: {message}")
    assert "[chief:0] tfpipes train: error: --hidden 'x'" in captured.out
    if launcher == "job":
        # The failed chief Job stays (its record); what still runs goes, Service included.
        base = fake.created[0]["metadata"]["name"]
        expected = [("Service", "ml", base), ("Job", "ml", f"{base}-worker")]
        assert sorted(fake.deleted_kinds) == sorted(expected + [("Job", "ml", f"{base}-ps")])
    else:
        assert not fake.deleted


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", NAMES)
def test_timeout_deletes_everything_the_step_created(kube_factory, tmp_path, launcher):
    fake = kube_factory(script=["Created", "Running"], installed=only(launcher))
    with pytest.raises(JobError, match=r"did not finish within 1 s \(last phase Running\)"):
        run(fake, tmp_path, launcher=launcher, ps=1, timeout=1.0)
    namespaced = [
        (o["kind"], "ml", o["metadata"]["name"])
        for o in fake.created
        if o["kind"] != "ClusterTrainingRuntime"
    ]
    assert sorted(fake.deleted_kinds) == sorted(namespaced) and namespaced
    # Only the shared runtime stays.
    assert [o["kind"] for o in fake.jobs.values()] == KINDS[launcher][:1] * (launcher == "trainjob")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("launcher", NAMES)
def test_a_retried_step_follows_the_existing_job(kube_factory, tmp_path, launcher):
    fake = kube_factory(
        script=["Running", "Succeeded"], on_success=write_metrics, installed=only(launcher)
    )
    # The first attempt of the step created everything, then its pod died.
    spec = TFJobSpec(
        image="tfpipes:test",
        workers=2,
        ps=1,
        name="nightly",
        namespace="team",
        train_args=("--data", "d", "--model-dir", str(tmp_path / "model")),
    )
    chosen = LAUNCHERS[launcher]
    create_objects(api_client(fake), chosen, chosen.objects(spec), "team", Lines())
    created = len(fake.created)
    out = Lines()
    run(fake, tmp_path, out=out, launcher=launcher, job_name="nightly", namespace="team", ps=1)
    assert len(fake.created) == created  # no second job
    followed = "team/nightly-chief" if launcher == "job" else "team/nightly"
    assert f"{launcher}: {followed} exists; following it" in out.text
    if launcher == "trainjob":
        assert re.search(r"ClusterTrainingRuntime tfpipes-tf-\w+ is installed; using it", out.text)


@pytest.mark.timeout(60)
def test_a_restarted_jobset_streams_each_new_pod_once(kube_factory, tmp_path):
    """JobSet recreates every pod on a restart (new names): the log follower finds the newest
    chief pod by its labels and streams each attempt once."""
    fake = kube_factory(
        script=["Created", "Running", "Running", "Restarting", "Running", "Running", "Succeeded"],
        logs=[["attempt 1 started", "attempt 1 killed"], ["attempt 2 resumed at step 100"]],
        on_success=write_metrics,
        installed=("jobset",),
    )
    _, _, _, out = run(fake, tmp_path, launcher="jobset", ps=1)
    for line in ("attempt 1 started", "attempt 1 killed", "attempt 2 resumed at step 100"):
        assert out.text.count(f"[chief:0] {line}\n") == 1, out.text
    assert "Running (restarts 1)" in out.text
    logs = [p.rsplit("/", 2)[-2] for m, p in fake.requests if p.endswith("/log")]
    assert logs[0].endswith("-a0b") and logs[-1].endswith("-a1b"), logs


@pytest.mark.timeout(60)
def test_trainjob_on_an_installed_runtime_creates_only_the_trainjob(kube_factory, tmp_path):
    fake = kube_factory(
        script=["Running", "Succeeded"],
        logs=[["on team-tf"]],
        on_success=write_metrics,
        installed=("trainjob",),
    )
    _, _, _, out = run(fake, tmp_path, launcher="trainjob", runtime="team-tf")
    (tj,) = fake.created
    assert tj["kind"] == "TrainJob" and tj["spec"]["runtimeRef"]["name"] == "team-tf"
    assert "[worker:0] on team-tf" in out.text  # the container Trainer names `node`


@pytest.mark.timeout(30)
def test_a_launcher_the_cluster_lacks_is_one_line(kube_factory, tmp_path):
    fake = kube_factory(script=["Running"], installed=())
    with pytest.raises(JobError, match=r"^cannot create JobSet ml/\S+: 404 Not Found: no "):
        run(fake, tmp_path, launcher="jobset")
    assert not fake.created


@pytest.mark.timeout(30)
def test_an_object_tfpipes_did_not_create_is_never_adopted(kube_factory, tmp_path):
    fake = kube_factory(script=["Running"], installed=())
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {}}
    fake.objects[("services", "ml", "web")] = foreign
    with pytest.raises(JobError, match="Service ml/web exists and was not created by tfpipes"):
        run(fake, tmp_path, launcher="job", job_name="web")
    assert not fake.created and not fake.deleted and ("services", "ml", "web") in fake.objects


@pytest.mark.timeout(30)
def test_an_unreachable_api_server_is_retryable(kube_factory, tmp_path, capsys):
    fake: FakeKube = kube_factory(script=["Running"])
    fake.close()
    with pytest.raises(RetryableError, match="cannot reach the Kubernetes API"):
        run(fake, tmp_path, launcher="job")
    assert step_exit_code(tmp_path, image="i") == EXIT_RETRYABLE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("tfjob_train: error: launcher auto: cannot reach the Kubernetes API")


def test_bad_placement_and_launcher_are_user_errors_before_any_request(
    kube_factory, tmp_path, capsys
):
    fake = kube_factory(script=["Running"])
    for params, flag in (
        (dict(launcher="slurm"), "--launcher 'slurm'"),
        (dict(node_selector="pool"), "--node-selector 'pool'"),
        (dict(tolerations="k:Sometimes"), "--toleration 'k:Sometimes'"),
        (dict(launcher="jobset", runtime="x"), "--runtime is only for --launcher trainjob"),
    ):
        assert step_exit_code(tmp_path, image="i", **params) == 2, params
        assert flag in capsys.readouterr().err
    assert not fake.requests


def test_every_attempt_of_one_task_names_the_same_job(tmp_path):
    """The distributed pipeline hands the step its KFP task id, the same for every retry of
    the task; the step names the job after it, so a retried attempt follows the job the first
    attempt created (test_a_retried_step_follows_the_existing_job) instead of a second one."""
    import yaml
    from tfpipes_components.tfjob_op import job_name_for_task
    from tfpipes_pipelines.distributed import compile_distributed_pipeline

    first = job_name_for_task("4d1c9c3e-0b7a-4c43-9d5e-2b1f0a6a1e11")
    assert first == job_name_for_task("4d1c9c3e-0b7a-4c43-9d5e-2b1f0a6a1e11")
    assert first != job_name_for_task("9a0e6c1f-5b7d-4e2a-8c3b-1d2e3f4a5b6c")
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", first) and len(first) <= 40
    assert job_name_for_task("") == job_name_for_task("{{$.pipeline_task_uuid}}") == ""
    spec = next(yaml.safe_load_all(open(compile_distributed_pipeline(str(tmp_path / "p.yaml")))))
    given = spec["root"]["dag"]["tasks"]["tfjob-train-op"]["inputs"]["parameters"]["task_uid"]
    assert given == {"runtimeValue": {"constant": "{{$.pipeline_task_uuid}}"}}
