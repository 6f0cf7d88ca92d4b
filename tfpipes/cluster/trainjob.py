"""Kubeflow Trainer v2: a ``TrainJob`` referring to the ``ClusterTrainingRuntime`` tfpipes ships.

Trainer v2 has no TensorFlow runtime (kubeflow/trainer#2699), so tfpipes brings its own:
:func:`build_runtime` is a ClusterTrainingRuntime whose JobSet template has one replicated job
per role (``chief``, ``worker``, ``ps``) with the JobSet launcher's failure and success policies
(:mod:`tfpipes.cluster.jobset`), and :func:`build_trainjob` the TrainJob that runs on it.

What lives where:

- The runtime holds the *shape*: which roles exist, how many parameter servers, the image and
  resources of the chief and parameter servers, the port. Its name is a hash of its content
  (``tfpipes-tf-<8 hex>``), so the same shape is one shared, immutable object and creating it
  again is harmless.
- The TrainJob holds the *run*: the worker count (``trainer.numNodes``: Trainer sets the
  worker job's size, it being the job labelled ``trainjob-ancestor-step: trainer``), the
  workers' image and resources (``trainer``), and through ``runtimePatches`` for every role
  the trainer arguments, the cluster shape, the node selectors, tolerations and the
  credentials secret.

Trainer applies ``trainer`` to the container named ``node``, so every container here is
``node``. The runtime's command expands ``TFPIPES_TRAIN_ARGS`` (shell-quoted by
:func:`shlex.join`) into ``tfpipes train``'s arguments: a patch can set environment
variables but not a container's arguments. Each pod derives its ``TF_CONFIG`` as a JobSet pod
(:mod:`tfpipes.cluster.pod_env`): Trainer names the JobSet after the TrainJob.
"""

from __future__ import annotations

import hashlib
import json
import shlex

from tfpipes.cluster import jobset, pod_env, pods
from tfpipes.cluster.tfjob import TFJobSpec, object_metadata
from tfpipes.errors import UserError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_PLURAL = "clustertrainingruntimes"
CONTAINER_NAME = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
TRAIN_ARGS = "TFPIPES_TRAIN_ARGS"
PATCH_MANAGER = "tfpipes.dev/launch"
# `eval` re-splits the shell-quoted arguments exactly as shlex.join wrote them.
COMMAND = ["/bin/sh", "-c", f'eval "exec tfpipes train ${TRAIN_ARGS}"']


def _runtime_spec(spec: TFJobSpec) -> dict:
    # One worker in the runtime: Trainer sizes the worker job from the TrainJob's numNodes, so
    # one runtime serves every worker count.
    bare = TFJobSpec(
        image=spec.image,
        workers=1,
        ps=spec.ps,
        chief=spec.chief,
        gpus_per_worker=spec.gpus_per_worker,
        name=spec.name,
        cpu=spec.cpu,
        memory=spec.memory,
        backoff_limit=spec.backoff_limit,
        port=spec.port,
    )
    rjobs = jobset.replicated_jobs(bare, CONTAINER_NAME, command=COMMAND)
    for rjob in rjobs:
        container = rjob["template"]["spec"]["template"]["spec"]["containers"][0]
        # The shape is the TrainJob's (numNodes can differ per run): its patch sets it.
        container["env"] = [e for e in container["env"] if e["name"] != pod_env.SHAPE]
        if rjob["name"] == "worker":
            rjob["template"]["metadata"]["labels"][ANCESTOR_LABEL] = "trainer"
    return {
        "mlPolicy": {"numNodes": 1},
        "template": {
            "spec": {
                "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                "successPolicy": jobset.success_policy([r["name"] for r in rjobs]),
                "failurePolicy": jobset.failure_policy(spec.backoff_limit),
                "replicatedJobs": rjobs,
            }
        },
    }


def runtime_name(spec: TFJobSpec) -> str:
    """``tfpipes-tf-<8 hex>``: the hash of the runtime's content (which the worker count is
    not part of)."""
    body = _runtime_spec(spec)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return f"tfpipes-tf-{digest[:8]}"


def build_runtime(spec: TFJobSpec, name: str | None = None) -> dict:
    """The ClusterTrainingRuntime for ``spec``'s shape (cluster-scoped: no namespace)."""
    jobset.validate_jobset_spec(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": RUNTIME_KIND,
        "metadata": {
            "name": name or runtime_name(spec),
            "labels": {**pods.APP_LABELS, "trainer.kubeflow.org/framework": "tensorflow"},
        },
        "spec": _runtime_spec(spec),
    }


def _role_patch(spec: TFJobSpec, role: str, counts: dict) -> dict:
    env = [
        {"name": TRAIN_ARGS, "value": shlex.join(spec.train_args)},
        {"name": pod_env.SHAPE, "value": pod_env.format_shape(counts)},
    ]
    container: dict = {"name": CONTAINER_NAME, "env": env}
    pod: dict = {"containers": [container], **pods.placement(spec)}
    if spec.gcs_secret is not None:
        env.append(pods.credentials_env(spec))
        container["volumeMounts"] = [pods.credentials_mount()]
        pod["volumes"] = [pods.credentials_volume(spec)]
    return {"name": role, "template": {"spec": {"template": {"spec": pod}}}}


def build_trainjob(spec: TFJobSpec, runtime: str | None = None) -> dict:
    """The TrainJob running ``tfpipes train`` on ``runtime`` (default: :func:`runtime_name`,
    the one :func:`build_runtime` makes). UserError on an invalid spec."""
    jobset.validate_jobset_spec(spec)
    if runtime is not None and not runtime.strip():
        raise UserError("--runtime must name a ClusterTrainingRuntime")
    counts = {role: n for role, n, _ in pods.roles(spec)}
    trainer: dict = {"image": spec.image, "numNodes": spec.workers}
    worker_container = pods.container(spec, spec.gpus_per_worker, CONTAINER_NAME)
    if "resources" in worker_container:
        trainer["resourcesPerNode"] = worker_container["resources"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": object_metadata(spec),
        "spec": {
            "runtimeRef": {
                "apiGroup": GROUP,
                "kind": RUNTIME_KIND,
                "name": runtime or runtime_name(spec),
            },
            "trainer": trainer,
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {
                                "replicatedJobs": [
                                    _role_patch(spec, role, counts) for role in counts
                                ]
                            }
                        }
                    },
                }
            ],
        },
    }
