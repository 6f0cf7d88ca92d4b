"""Manifests of every launcher (trainjob, jobset, job) against the official schemas: the Trainer
v2 and JobSet CRDs in ../shared/k8s-schemas/ (strict, as ``kubectl apply`` is), core Job and
Service through kubernetes-validate at a pinned Kubernetes version, plus the rules the
controllers enforce that the schemas alone let through."""

from __future__ import annotations

import copy
import functools
import shlex

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.test_tfjob import SHARED, _strict, run_cli
from tests.test_tfjob import validate as validate_tfjob
from tfpipes.cluster import indexed_job, jobset, pod_env, trainjob
from tfpipes.cluster.launchers import AUTO_ORDER, LAUNCHERS, get_launcher
from tfpipes.cluster.tfjob import TFJobSpec
from tfpipes.errors import EXIT_USER_ERROR, RETRYABLE_MIN, UserError

KUBERNETES_VERSION = "1.33.0"  # the oldest release we support; podFailurePolicy is GA since 1.31
SCHEMAS = SHARED / "k8s-schemas"
CRDS = {
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
    "JobSet": "jobset.x-k8s.io_jobsets.yaml",
}


@functools.cache
def crd_schema(kind: str) -> dict:
    crd = yaml.load(
        (SCHEMAS / CRDS[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    )
    (version,) = crd["spec"]["versions"]
    return _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def controller_rules(obj: dict) -> None:
    """What the controllers (and the CEL rules jsonschema cannot evaluate) refuse although the
    OpenAPI schema accepts it. AssertionError naming the rule."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    if kind in ("TrainJob", "JobSet", "Job"):
        assert pod_env.hostname("jobset", "", "", 0) and len(name) <= 63, "name over 63"
        assert name[0].isalpha(), "name must be an RFC 1035 label"
    if kind == "TrainJob":
        ref = obj["spec"]["runtimeRef"]
        assert ref.get("apiGroup") == trainjob.GROUP and ref.get("kind") in (
            "ClusterTrainingRuntime",
            "TrainingRuntime",
        ), f"runtimeRef {ref}"
        patches = obj["spec"].get("runtimePatches", [])
        assert len({p["manager"] for p in patches}) == len(patches), "manager keys repeat"
        for p in patches:
            rjobs = p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            for r in rjobs:
                for c in r["template"]["spec"]["template"]["spec"]["containers"]:
                    # Trainer only patches its own containers: an unknown name does nothing.
                    assert c["name"] == trainjob.CONTAINER_NAME, f"container {c['name']}"
    if kind in ("ClusterTrainingRuntime", "JobSet"):
        spec = obj["spec"]["template"]["spec"] if kind != "JobSet" else obj["spec"]
        rjobs = spec["replicatedJobs"]
        names = [r["name"] for r in rjobs]
        assert len(set(names)) == len(names), "replicated job names repeat"
        for target in spec.get("successPolicy", {}).get("targetReplicatedJobs", []):
            assert target in names, f"successPolicy targets unknown {target}"
        for r in rjobs:
            job_rules(r["template"]["spec"], f"replicatedJob {r['name']}")
        if kind == "ClusterTrainingRuntime":
            trainers = [
                r for r in rjobs if r["template"]["metadata"]["labels"].get(trainjob.ANCESTOR_LABEL)
            ]
            assert len(trainers) == 1, "exactly one replicated job must be the trainer"
            containers = trainers[0]["template"]["spec"]["template"]["spec"]["containers"]
            assert trainjob.CONTAINER_NAME in [c["name"] for c in containers], "no node container"
    if kind == "Job":
        job_rules(obj["spec"], f"Job {name}")


def job_rules(job: dict, where: str) -> None:
    pod = job["template"]["spec"]
    if "podFailurePolicy" in job:
        # The Job controller: podFailurePolicy requires restartPolicy Never; exit code 0 can
        # never be "In"; values at most 255, sorted, unique.
        assert pod.get("restartPolicy") == "Never", f"{where}: podFailurePolicy needs Never"
        for rule in job["podFailurePolicy"]["rules"]:
            codes = rule.get("onExitCodes")
            if codes:
                values = codes["values"]
                assert values == sorted(set(values)) and len(values) <= 255, where
                assert not (codes["operator"] == "In" and 0 in values), f"{where}: In 0"
                names = [c["name"] for c in pod["containers"]]
                assert codes.get("containerName") in names, f"{where}: unknown containerName"
    if job.get("completionMode") == "Indexed":
        assert job["completions"] == job["parallelism"], f"{where}: every task at once"


def validate(obj: dict) -> None:
    kind = obj["kind"]
    if kind == "TFJob":
        validate_tfjob(obj)
    elif kind in CRDS:
        jsonschema.Draft7Validator(crd_schema(kind)).validate(obj)
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    controller_rules(obj)


SHAPES = {
    "mwms-1": TFJobSpec(image="img:1", train_args=("--epochs", "1")),
    "mwms-4-gpus": TFJobSpec(image="img:1", workers=4, gpus_per_worker=2, cpu="8", memory="32Gi"),
    "chief-2w-2ps": TFJobSpec(image="img:1", workers=2, ps=2, chief=True, namespace="ml"),
    "secret-placement": TFJobSpec(
        image="img:1",
        workers=2,
        ps=1,
        gcs_secret="gcs-sa",
        gpus_per_worker=1,
        node_selector=(("cloud.google.com/gke-accelerator", "nvidia-l4"),),
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        train_args=("--data", "gs://b/my data", "--model-dir", "gs://b/m"),
    ),
}


@pytest.mark.parametrize("launcher", AUTO_ORDER)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_object_validates(launcher, shape):
    objects = LAUNCHERS[launcher].objects(SHAPES[shape])
    for obj in objects:
        validate(obj)
    followed = [o for o in objects if o["kind"] == LAUNCHERS[launcher].kind]
    assert followed and all(o["apiVersion"] == LAUNCHERS[launcher].api_version for o in followed)


def pod_templates(obj: dict) -> dict[str, dict]:
    """{role: pod spec} of a JobSet, a runtime or a Job."""
    if obj["kind"] == "Job":
        return {obj["metadata"]["labels"]["tfpipes.dev/role"]: obj["spec"]["template"]["spec"]}
    spec = obj["spec"] if obj["kind"] == "JobSet" else obj["spec"]["template"]["spec"]
    return {r["name"]: r["template"]["spec"]["template"]["spec"] for r in spec["replicatedJobs"]}


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_jobset_shape_policies_and_knobs():
    spec = SHAPES["secret-placement"]
    (js,) = LAUNCHERS["jobset"].objects(spec)
    assert [r["name"] for r in js["spec"]["replicatedJobs"]] == ["chief", "worker", "ps"]
    assert js["spec"]["successPolicy"] == {"operator": "Any", "targetReplicatedJobs": ["chief"]}
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 3
    assert js["spec"]["network"]["subdomain"] == spec.name
    for r in js["spec"]["replicatedJobs"]:
        job = r["template"]["spec"]
        assert job["backoffLimit"] == 0 and job["completionMode"] == "Indexed"
        (rule, ignore) = job["podFailurePolicy"]["rules"]
        assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == list(
            range(1, RETRYABLE_MIN)
        )
        assert ignore["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    pods_ = pod_templates(js)
    for role, pod in pods_.items():
        (c,) = pod["containers"]
        assert c["command"] == ["tfpipes", "train", *spec.train_args]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert pod["volumes"][0]["secret"]["secretName"] == "gcs-sa"
        env = env_of(c)
        assert env[pod_env.SHAPE] == "chief=1,worker=2,ps=1" and env[pod_env.LAUNCHER] == "jobset"
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)
        assert gpus == (0 if role == "ps" else 1)
    # MWMS without a chief: done when every worker is.
    (mwms,) = LAUNCHERS["jobset"].objects(SHAPES["mwms-4-gpus"])
    assert mwms["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["worker"]}


def test_jobs_and_headless_service():
    spec = SHAPES["chief-2w-2ps"]
    service, *jobs = LAUNCHERS["job"].objects(spec)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert [j["metadata"]["name"] for j in jobs] == [
        "tfpipes-train-chief",
        "tfpipes-train-worker",
        "tfpipes-train-ps",
    ]
    for job in jobs:
        assert job["metadata"]["namespace"] == "ml"
        assert job["spec"]["backoffLimit"] == 3
        pod = job["spec"]["template"]
        assert pod["metadata"]["labels"][indexed_job.pods.JOB_LABEL] == spec.name
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["subdomain"] == service["metadata"]["name"]
        assert pod["spec"]["restartPolicy"] == "Never"
    assert jobs[1]["spec"]["completions"] == 2 and jobs[2]["spec"]["parallelism"] == 2


def test_trainjob_refers_to_the_runtime_it_ships():
    spec = SHAPES["secret-placement"]
    runtime, tj = LAUNCHERS["trainjob"].objects(spec)
    assert tj["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    assert tj["spec"]["trainer"]["numNodes"] == 2
    assert tj["spec"]["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 1}
    # The worker count is the TrainJob's: one runtime serves every count, by its content hash.
    other = TFJobSpec(**{**spec.__dict__, "workers": 7, "train_args": ()})
    assert trainjob.build_runtime(other) == runtime
    assert (
        trainjob.runtime_name(TFJobSpec(**{**spec.__dict__, "image": "img:2"}))
        != (runtime["metadata"]["name"])
    )
    (patch,) = tj["spec"]["runtimePatches"]
    by_role = {
        r["name"]: r for r in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    }
    assert set(by_role) == {"chief", "worker", "ps"}
    for r in by_role.values():
        pod = r["template"]["spec"]["template"]["spec"]
        env = env_of(pod["containers"][0])
        # The shell in the runtime's command gets back exactly the arguments.
        assert shlex.split(env[trainjob.TRAIN_ARGS]) == list(spec.train_args)
        assert env[pod_env.SHAPE] == "chief=1,worker=2,ps=1"
        assert pod["nodeSelector"] and pod["tolerations"] and pod["volumes"]
    # --runtime NAME: only the TrainJob, referring to it.
    (only,) = LAUNCHERS["trainjob"].objects(spec, "team-tf")
    assert only["kind"] == "TrainJob" and only["spec"]["runtimeRef"]["name"] == "team-tf"


def test_runtime_command_expands_the_arguments_through_a_shell(tmp_path):
    """The runtime's command is run by /bin/sh: check it really yields the argv (quotes,
    spaces, $ signs), with a stand-in `tfpipes` that prints its arguments."""
    import os
    import subprocess

    fake = tmp_path / "tfpipes"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    args = ["train-ignored"][:0] + ["--data", "gs://b/my data", "--note", "it's $HOME"]
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", trainjob.TRAIN_ARGS: shlex.join(args)}
    out = subprocess.run(trainjob.COMMAND, env=env, capture_output=True, text=True, timeout=10)
    assert out.stdout.splitlines() == ["train", *args], out.stderr
    assert os.path.basename(trainjob.COMMAND[0]) == "sh"


def test_validator_refuses_what_controllers_refuse():
    js = jobset.build_jobset(SHAPES["chief-2w-2ps"])
    validate(js)
    bad = copy.deepcopy(js)
    bad["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["restartPolicy"] = (
        "OnFailure"
    )
    with pytest.raises(AssertionError, match="Never"):
        validate(bad)
    bad = copy.deepcopy(js)
    bad["spec"]["successPolicy"]["targetReplicatedJobs"] = ["coordinator"]
    with pytest.raises(AssertionError, match="coordinator"):
        validate(bad)
    bad = copy.deepcopy(js)
    bad["spec"]["replicatedJobs"][1]["template"]["spec"]["podFailurePolicy"]["rules"][0][
        "onExitCodes"
    ]["values"].insert(0, 0)
    with pytest.raises(AssertionError, match="In 0"):
        validate(bad)
    bad = copy.deepcopy(js)
    bad["spec"]["replicatedJobs"][0]["template"]["spec"]["paralelism"] = 1
    with pytest.raises(jsonschema.ValidationError, match="paralelism"):
        validate(bad)
    runtime, tj = (
        trainjob.build_runtime(SHAPES["mwms-1"]),
        trainjob.build_trainjob(SHAPES["mwms-1"]),
    )
    bad = copy.deepcopy(runtime)
    del bad["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]["labels"][
        trainjob.ANCESTOR_LABEL
    ]
    with pytest.raises(AssertionError, match="trainer"):
        validate(bad)
    bad = copy.deepcopy(tj)
    bad["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][
        0
    ]["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "tensorflow"
    with pytest.raises(AssertionError, match="container tensorflow"):
        validate(bad)
    bad = copy.deepcopy(tj)
    bad["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    service, job = indexed_job.build_jobs(SHAPES["mwms-1"])
    bad = copy.deepcopy(job)
    bad["spec"]["completions"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    bad = copy.deepcopy(service)
    bad["spec"]["clusterIp"] = "None"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"name": "a" * 55, "workers": 10}, "--name"),
        ({"node_selector": (("bad key!", "v"),)}, "--node-selector"),
        (
            {"tolerations": ({"key": "k", "operator": "Equal", "value": "bad value"},)},
            "--toleration",
        ),
        ({"port": 80}, "--port"),
    ],
)
@pytest.mark.parametrize("launcher", ["trainjob", "jobset", "job"])
def test_bad_knobs_are_user_errors(launcher, kwargs, flag):
    with pytest.raises(UserError, match=flag):
        get_launcher(launcher).objects(TFJobSpec(**{"image": "i", **kwargs}))


def test_unknown_launcher_names_the_flag():
    with pytest.raises(UserError, match="--launcher 'slurm'"):
        get_launcher("slurm")


@pytest.mark.parametrize("launcher", AUTO_ORDER)
def test_cli_prints_every_object_as_yaml_documents(launcher):
    proc = run_cli(
        "launch", "--launcher", launcher, "--workers", "2", "--ps", "1", "--image", "img:1",
        "--gcs-secret", "gcs-sa", "--node-selector", "pool=gpu", "--toleration", "gpu:NoSchedule",
        "--", "--data", "gs://b/data", "--model-dir", "gs://b/model",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert "&id" not in proc.stdout  # no YAML anchors: every document stands alone
    expected = {"tfjob": ["TFJob"], "trainjob": ["ClusterTrainingRuntime", "TrainJob"],
                "jobset": ["JobSet"], "job": ["Service", "Job", "Job", "Job"]}  # fmt: skip
    assert [d["kind"] for d in docs] == expected[launcher]
    for d in docs:
        validate(d)


def test_cli_runtime_and_bad_flags():
    proc = run_cli("trainjob", "runtime", "--ps", "1", "--image", "img:1")
    assert proc.returncode == 0, proc.stderr
    (runtime,) = yaml.safe_load_all(proc.stdout)
    validate(runtime)
    proc = run_cli("launch", "--launcher", "trainjob", "--runtime", "team-tf", "--image", "img:1")
    (tj,) = yaml.safe_load_all(proc.stdout)
    assert tj["spec"]["runtimeRef"]["name"] == "team-tf"
    proc = run_cli("launch", "--launcher", "jobset", "--image", "i", "--toleration", "k:Sometimes")
    assert proc.returncode == EXIT_USER_ERROR and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "tfpipes launch: error: --toleration 'k:Sometimes': expected KEY[=VALUE][:EFFECT], "
        "EFFECT one of NoSchedule, PreferNoSchedule, NoExecute"
    ]
    proc = run_cli("launch", "--launcher", "job", "--runtime", "x", "--image", "i")
    assert proc.returncode == EXIT_USER_ERROR
    assert "--runtime is only for --launcher trainjob" in proc.stderr


def test_jobset_hostnames_longer_than_the_tfjobs_are_refused():
    spec = TFJobSpec(image="i", name="a" * 53, workers=10)  # a-…-worker-9 fits, -worker-0-9 not
    assert LAUNCHERS["tfjob"].objects(spec) and LAUNCHERS["job"].objects(spec)
    for launcher in ("jobset", "trainjob"):
        with pytest.raises(UserError, match="pod hostname"):
            LAUNCHERS[launcher].objects(spec)
