"""TFJob manifests: shapes, flag validation, and validation against the Training Operator's CRD."""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tfpipes.cluster.tfjob import TFJobSpec, build_tfjob, render_yaml
from tfpipes.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, UserError, is_retryable

REPO = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the repository clone; TFPIPES_SHARED_DIR overrides.
SHARED = Path(os.environ.get("TFPIPES_SHARED_DIR") or REPO.parent / "shared")
CRD = SHARED / "k8s-schemas" / "kubeflow.org_tfjobs.yaml"
# Replica types the operator knows, less "Master": TF2 strategies reject a master task.
REPLICA_TYPES = ["Chief", "Worker", "PS", "Evaluator"]
RESTART_POLICIES = ["Always", "OnFailure", "Never", "ExitCode"]


@functools.cache
def crd_schema() -> dict:
    # The C loader when PyYAML has it: the CRD is ~8000 lines.
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def _strict(node):
    """The CRD schema as the API server applies it with fieldValidation=Strict (what
    `kubectl apply` does by default): an unknown field is an error, not silently pruned."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def strict_schema() -> dict:
    schema = _strict(copy.deepcopy(crd_schema()))
    # Our policy on top of the CRD (which accepts any key, "Master" included): the replica
    # types and restart policies TF2 and the operator support.
    replicas = schema["properties"]["spec"]["properties"]["tfReplicaSpecs"]
    replicas["propertyNames"] = {"enum": REPLICA_TYPES}
    replicas["additionalProperties"]["properties"]["restartPolicy"]["enum"] = RESTART_POLICIES
    return schema


def validate(manifest: dict, schema: dict | None = None) -> None:
    assert manifest["apiVersion"] == "kubeflow.org/v1"
    assert manifest["kind"] == "TFJob"
    jsonschema.Draft7Validator(schema or strict_schema()).validate(manifest)


def container(manifest: dict, replica: str) -> dict:
    (c,) = manifest["spec"]["tfReplicaSpecs"][replica]["template"]["spec"]["containers"]
    return c


SHAPES = {
    "one-worker": TFJobSpec(image="img:1", train_args=("--epochs", "1")),
    "4-gpu-workers": TFJobSpec(image="img:1", workers=4, gpus_per_worker=2, cpu="8", memory="32Gi"),
    "chief-2w-2ps": TFJobSpec(image="img:1", workers=2, ps=2, chief=True, namespace="ml"),
    "on-failure": TFJobSpec(image="img:1", workers=2, restart_policy="OnFailure", backoff_limit=0),
    "secret": TFJobSpec(image="img:1", workers=2, ps=1, gcs_secret="gcs-sa", gpus_per_worker=1),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_manifest_validates_against_crd(shape):
    manifest = build_tfjob(SHAPES[shape])
    validate(manifest, crd_schema())
    validate(manifest)
    # What kubectl gets is the rendered YAML: it must round-trip to the same object.
    assert yaml.safe_load(render_yaml(manifest)) == manifest


def test_one_worker_shape():
    m = build_tfjob(SHAPES["one-worker"])
    assert list(m["spec"]["tfReplicaSpecs"]) == ["Worker"]
    worker = m["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 1 and worker["restartPolicy"] == "ExitCode"
    c = container(m, "Worker")
    assert c["name"] == "tensorflow"
    assert c["command"] == ["tfpipes", "train", "--epochs", "1"]
    assert "resources" not in c
    assert m["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 3}
    assert m["metadata"]["name"] == "tfpipes-train" and "namespace" not in m["metadata"]


def test_gpus_on_workers_and_chief_not_ps():
    m = build_tfjob(TFJobSpec(image="i", workers=4, ps=2, gpus_per_worker=2, memory="8Gi"))
    assert list(m["spec"]["tfReplicaSpecs"]) == ["Chief", "Worker", "PS"]
    for replica in ("Chief", "Worker"):
        assert container(m, replica)["resources"]["limits"] == {
            "memory": "8Gi",
            "nvidia.com/gpu": 2,
        }
    assert "nvidia.com/gpu" not in container(m, "PS")["resources"]["limits"]
    assert m["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 4
    assert m["spec"]["tfReplicaSpecs"]["PS"]["replicas"] == 2


def test_chief_rules():
    assert "Chief" in build_tfjob(TFJobSpec(image="i", ps=1))["spec"]["tfReplicaSpecs"]
    assert "Chief" not in build_tfjob(TFJobSpec(image="i"))["spec"]["tfReplicaSpecs"]
    assert "Chief" in build_tfjob(TFJobSpec(image="i", chief=True))["spec"]["tfReplicaSpecs"]
    with pytest.raises(UserError, match="--no-chief"):
        build_tfjob(TFJobSpec(image="i", ps=1, chief=False))
    for shape in SHAPES.values():
        assert "Master" not in build_tfjob(shape)["spec"]["tfReplicaSpecs"]


def test_secret_mounted_and_credentials_set():
    m = build_tfjob(SHAPES["secret"])
    for replica in ("Chief", "Worker", "PS"):
        pod = m["spec"]["tfReplicaSpecs"][replica]["template"]["spec"]
        assert pod["volumes"] == [{"name": "gcs-credentials", "secret": {"secretName": "gcs-sa"}}]
        c = pod["containers"][0]
        assert c["volumeMounts"][0]["mountPath"] == "/var/secrets/google"
        assert {
            "name": "GOOGLE_APPLICATION_CREDENTIALS",
            "value": "/var/secrets/google/key.json",
        } in (c["env"])


def test_exit_code_convention():
    assert not is_retryable(1) and not is_retryable(EXIT_USER_ERROR) and not is_retryable(127)
    assert is_retryable(EXIT_RETRYABLE) and is_retryable(137) and is_retryable(128)
    assert UserError("x").exit_code == EXIT_USER_ERROR


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"workers": 0}, "--workers"),
        ({"ps": -1}, "--ps"),
        ({"gpus_per_worker": -1}, "--gpus-per-worker"),
        ({"backoff_limit": -1}, "--backoff-limit"),
        ({"name": "Bad_Name"}, "--name"),
        ({"name": "1job"}, "--name"),
        ({"name": "a" * 60}, "--name"),
        ({"namespace": "No"}, "--namespace"),
        ({"gcs_secret": "bad secret"}, "--gcs-secret"),
        ({"cpu": "lots"}, "--cpu"),
        ({"memory": "16 GB"}, "--memory"),
        ({"restart_policy": "Always"}, "--restart-policy"),
        ({"image": ""}, "--image"),
    ],
)
def test_bad_flags_are_user_errors(kwargs, flag):
    with pytest.raises(UserError, match=flag):
        build_tfjob(TFJobSpec(**{"image": "i", **kwargs}))


def test_validator_is_live():
    good = build_tfjob(SHAPES["chief-2w-2ps"])
    # A type error: the CRD schema itself rejects it.
    bad = copy.deepcopy(good)
    bad["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad, crd_schema())
    # A misspelt field: rejected under strict field validation.
    bad = copy.deepcopy(good)
    bad["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["comand"] = []
    with pytest.raises(jsonschema.ValidationError, match="comand"):
        validate(bad)
    # Master: rejected by our replica-type policy.
    bad = copy.deepcopy(good)
    bad["spec"]["tfReplicaSpecs"]["Master"] = bad["spec"]["tfReplicaSpecs"].pop("Chief")
    with pytest.raises(jsonschema.ValidationError, match="Master"):
        validate(bad)
    # A missing required field (container name).
    bad = copy.deepcopy(good)
    del bad["spec"]["tfReplicaSpecs"]["PS"]["template"]["spec"]["containers"][0]["name"]
    with pytest.raises(jsonschema.ValidationError, match="name"):
        validate(bad, crd_schema())
    bad = copy.deepcopy(good)
    bad["kind"] = "PyTorchJob"
    with pytest.raises(AssertionError):
        validate(bad)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "tfpipes.cli", *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_prints_valid_manifest():
    proc = run_cli(
        "tfjob",
        "--workers", "2", "--ps", "1", "--gpus-per-worker", "1", "--image", "gcr.io/p/tfpipes:0.1",
        "--name", "mnist", "--gcs-secret", "gcs-sa", "--restart-policy", "OnFailure",
        "--backoff-limit", "5",
        "--", "--data", "gs://b/data", "--model-dir", "gs://b/model",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    manifest = yaml.safe_load(proc.stdout)
    validate(manifest)
    assert manifest["metadata"]["name"] == "mnist"
    assert manifest["spec"]["runPolicy"]["backoffLimit"] == 5
    assert container(manifest, "Chief")["command"] == [
        "tfpipes", "train", "--data", "gs://b/data", "--model-dir", "gs://b/model",
    ]  # fmt: skip
    assert manifest["spec"]["tfReplicaSpecs"]["PS"]["restartPolicy"] == "OnFailure"


def test_cli_user_error_is_one_line():
    proc = run_cli("tfjob", "--workers", "0", "--image", "i")
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "tfpipes tfjob: error: --workers must be >= 1, got 0"
    ]
