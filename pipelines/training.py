"""preprocess -> train -> export as one KFP v2 pipeline; compile it or run it with kfp.local.

Structural choices (GPUs, node selectors, tolerations, the storage credentials secret) are
compile-time :class:`PipelineOptions`; sizes that change per run (CPU and memory requests) are
pipeline parameters.
"""

import contextlib
import dataclasses
import json
import os
import warnings
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Metrics, Model
from tfpipes_components import export_op, fingerprint_op, preprocess_op, train_op
from tfpipes_components.fanout import input_bytes_op
from tfpipes_components.retrain import check_data_op, evaluate_op, publish_op
from tfpipes_components.steps import IMAGE
from tfpipes_pipelines.fanout import fanout_steps

from tfpipes.pipeline_params import (
    DATA_CHECK,
    DATA_STEPS,
    SINGLE_POD,
    TRAINING,
    pick,
    pipeline_signature,
)

PIPELINE_NAME = "tfpipes-training"
GCS_KEY_MOUNT = "/var/secrets/google"


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """Compile-time choices for the cluster the pipeline runs on.

    train_gpus / gpu_type: accelerators of the train step (``nvidia.com/gpu`` on plain
    Kubernetes; e.g. ``NVIDIA_TESLA_T4`` on Vertex AI). node_selector / tolerations: where the
    train step may run. gcs_secret: a Kubernetes secret holding a service-account ``key.json``,
    mounted into every step with ``GOOGLE_APPLICATION_CREDENTIALS`` pointing at it.
    """

    train_gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[dict, ...] = ()
    gcs_secret: str = ""


class TrainingOutputs(NamedTuple):
    examples: Dataset
    model: Model
    metrics: Metrics
    exported: Model


def with_credentials(task, options: PipelineOptions):
    """Mount the storage credentials secret (if any) into ``task``; returns ``task``."""
    if options.gcs_secret:
        kubernetes.use_secret_as_volume(
            task, secret_name=options.gcs_secret, mount_path=GCS_KEY_MOUNT
        )
        task.set_env_variable("GOOGLE_APPLICATION_CREDENTIALS", f"{GCS_KEY_MOUNT}/key.json")
    return task


class DataSteps(NamedTuple):
    """What the data steps give the rest of a pipeline: ``outputs["examples"]``, the data set
    of whichever branch ran."""

    outputs: dict


def data_steps(options, values) -> DataSteps:
    """preprocess, in one task or fanned out, shared by every pipeline. ``values``: the
    pipeline's parameters (those of ``DATA_STEPS`` and ``FANOUT`` are used).

    Input above ``fanout_bytes``: the fan-out (tfpipes_pipelines.fanout), not cached. Else
    fingerprint -> preprocess: the fingerprint is never cached (it must look at the data every
    time); preprocess is cached with the content key among its parameters, so it is reused
    only for the same bytes.
    """
    data = pick(values, DATA_STEPS)
    size = with_credentials(input_bytes_op(source=values["source"]), options)
    size.set_caching_options(False)
    wrap = lambda task: with_credentials(task, options)  # noqa: E731
    with dsl.If(size.output > values["fanout_bytes"], name="large-input"):
        fan = fanout_steps(
            values["source"],
            values["label"],
            values["fanout_parts"],
            values["eval_fraction"],
            values["num_shards"],
            wrap=wrap,
        )
    with dsl.Else(name="small-input"):
        fp = wrap(fingerprint_op(**data))
        fp.set_caching_options(False)
        pre = wrap(preprocess_op(**data, content_key=fp.output))
        pre.set_caching_options(True)
    # kfp.local picks a OneOf of parameters only: the branch's data set URI, imported back as
    # the one Dataset the later steps read.
    uri = dsl.OneOf(fan.outputs["Output"], pre.outputs["Output"])
    examples = dsl.importer(artifact_uri=uri, artifact_class=Dataset, reimport=False)
    return DataSteps({"examples": examples.output})


def check_step(options, pre, values):
    """The data check of ``pre``'s data set against the model published under ``values``'
    ``publish_base``, with its ``DATA_CHECK`` thresholds (never cached: what is published
    changes between runs); training waits for it."""
    chk = with_credentials(
        check_data_op(
            examples=pre.outputs["examples"],
            publish_base=values["publish_base"],
            **pick(values, DATA_CHECK),
        ),
        options,
    )
    chk.set_caching_options(False)
    return chk


def gated_publish_step(options, pre, tr, chk, values, outputs):
    """export (into its artifact only) -> the gate -> publish with lineage, only when blessed
    (``dsl.If``); ``values``: the pipeline's parameters (``model_version``, ``publish_base``,
    the gate's ``require`` and ``force_publish``, and ``warm_start_from``, the published
    lineage's parent). Returns the pipeline's ``outputs`` tuple."""
    publish_base = values["publish_base"]
    ex = with_credentials(
        export_op(
            model=tr.outputs["model"],
            examples=pre.outputs["examples"],
            version=values["model_version"],
            publish_base="",  # published below, only when blessed
        ),
        options,
    )
    ex.set_caching_options(False)
    ev = with_credentials(
        evaluate_op(
            exported=ex.outputs["exported"],
            examples=pre.outputs["examples"],
            publish_base=publish_base,
            require=values["require"],
            force=values["force_publish"],
            data_check=chk.outputs["Output"],
        ),
        options,
    )
    ev.set_caching_options(False)
    with dsl.If(ev.outputs["Output"] == "blessed", name="blessed"):
        pub = with_credentials(
            publish_op(
                exported=ex.outputs["exported"],
                examples=pre.outputs["examples"],
                model=tr.outputs["model"],
                publish_base=publish_base,
                gate=ev.outputs["gate_metrics"],
                data_check=chk.outputs["Output"],
                warm_start_from=values["warm_start_from"],
                image=IMAGE,
            ),
            options,
        )
        pub.set_caching_options(False)
    return outputs(
        examples=pre.outputs["examples"],
        model=tr.outputs["model"],
        metrics=tr.outputs["metrics"],
        exported=ex.outputs["exported"],
    )


def build_pipeline(options: PipelineOptions = PipelineOptions()):
    """The pipeline function for ``options`` (a ``@dsl.pipeline``)."""

    def platform(task, is_train: bool = False):
        with_credentials(task, options)
        if is_train:
            if options.train_gpus:
                task.set_accelerator_type(options.gpu_type)
                task.set_accelerator_limit(options.train_gpus)
            for key, value in options.node_selector:
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for tol in options.tolerations:
                kubernetes.add_toleration(task, **tol)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="CSV -> TFRecords (schema, stats, split) -> custom-loop training -> SavedModel",
    )
    @pipeline_signature(SINGLE_POD, returns=TrainingOutputs)
    def training_pipeline(**p) -> TrainingOutputs:
        """The training parameters (``model_name`` to ``warm_start_from``) are ``tfpipes
        train``'s, the same in both pipelines (``tests/test_params.py`` checks them against
        TrainConfig). ``model_version``: the exported version number; empty: the export time
        in epoch seconds. Recurring runs pass ``[[ScheduledTime]]`` (YYYYMMDDhhmmss, UTC), so each
        scheduled retrain publishes a version named after its schedule time.
        ``cache_index``: a folder (gs://...) where preprocess outputs are indexed by content.
        ``warm_start_from``: a model dir, checkpoint or SavedModel to start from; recurring
        retrains pass ``latest:<publish_base>`` (the newest published version, if any).
        ``numeric_js`` to ``on_drift``: the data check's thresholds (``tfpipes check-data``);
        ``require``: the gate's rules, ``force_publish``: publish even if not blessed (recorded
        as forced), as ``tfpipes evaluate`` (docs/retrain.md). Publishing to ``publish_base``
        happens only when the gate blesses the model.
        """
        pre = data_steps(options, p)
        chk = check_step(options, pre, p)
        tr = platform(
            train_op(
                examples=pre.outputs["examples"],
                **pick(p, TRAINING),
                checkpoint_dir=p["checkpoint_dir"],
            ),
            is_train=True,
        )
        tr.set_cpu_request(p["train_cpu_request"])
        tr.set_memory_request(p["train_memory_request"])
        # Training is not cached: the same inputs may be retrained on purpose (a new seed, a
        # checkpoint directory that moved on); KFP's cache key would not see that.
        tr.set_caching_options(False)
        tr.after(chk)
        return gated_publish_step(options, pre, tr, chk, p, TrainingOutputs)

    return training_pipeline


training_pipeline = build_pipeline()


def compile_pipeline(path: str, options: PipelineOptions = PipelineOptions()) -> str:
    """Write the pipeline spec (YAML) to ``path``; returns the path."""
    compiler.Compiler().compile(build_pipeline(options), package_path=path)
    return path


def parse_toleration(text: str) -> dict:
    """``key=value:Effect`` or ``key:Effect`` (kubectl's taint syntax) or a JSON object."""
    if text.lstrip().startswith("{"):
        return json.loads(text)
    kv, _, effect = text.partition(":")
    key, _, value = kv.partition("=")
    tol = {"key": key, "operator": "Equal" if value else "Exists", "effect": effect or None}
    if value:
        tol["value"] = value
    return {k: v for k, v in tol.items() if v is not None}


# The tfpipes image's user (docker/Dockerfile: `useradd --uid 1000 ... tfpipes`).
IMAGE_UID = IMAGE_GID = 1000
# Parameters that name local paths a step reads, and those it writes.
INPUT_PATH_PARAMS = ("source", "warm_start_from")
OUTPUT_PATH_PARAMS = ("checkpoint_dir", "publish_base", "cache_index")
LATEST_PREFIX = "latest:"


def _local(path: str) -> bool:
    return bool(path) and not path.startswith("gs://")


def absolute_local_paths(params: dict) -> dict:
    """``params`` with every local path parameter made absolute (``latest:`` kept in front).

    A relative path means the caller's directory; a step in a container has another one.
    """
    out = dict(params)
    for key in INPUT_PATH_PARAMS + OUTPUT_PATH_PARAMS:
        value = out.get(key) or ""
        prefix = LATEST_PREFIX if value.startswith(LATEST_PREFIX) else ""
        path = value[len(prefix) :]
        if _local(path):
            out[key] = prefix + os.path.abspath(path.removeprefix("file://"))
    return out


def container_user() -> tuple[int, int]:
    """The uid and gid the step containers run as: the host user's, so that outputs stay
    theirs, except that root runs them as the image's own non-root user."""
    if os.getuid() == 0:
        return IMAGE_UID, IMAGE_GID
    return os.getuid(), os.getgid()


def _input_mount_source(path: str) -> str | None:
    """What to bind-mount for a local input path: the file or directory itself; for a glob,
    the directory its pattern starts in; for a checkpoint prefix, its directory."""
    if os.path.exists(path):
        return path
    if any(c in path for c in "*?["):
        head = path
        while any(c in head for c in "*?["):
            head = os.path.dirname(head)
        return head if os.path.isdir(head) else None
    folder = os.path.dirname(path)
    return folder if os.path.isdir(folder) else None


def output_dirs(params: dict) -> list[str]:
    """The local output directories the steps write (absolute), created here if missing.

    Raises UserError naming the parameter when one exists and is not a directory.
    """
    from tfpipes.errors import UserError

    dirs = []
    for key in OUTPUT_PATH_PARAMS:
        path = params.get(key) or ""
        if not _local(path):
            continue
        path = os.path.abspath(path)
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"{key} {path} is not a directory")
        os.makedirs(path, exist_ok=True)
        dirs.append(path)
    return dirs


def docker_run_options(params: dict) -> dict:
    """Arguments for kfp.local's DockerRunner (passed on to docker's ``containers.run``).

    Least privilege: no network at all; never root (:func:`container_user`); exactly the
    local paths the steps need are bind-mounted at the same place (the runner itself mounts
    only the pipeline root, read-write): each input (``source``, ``warm_start_from``)
    read-only, each output directory (``checkpoint_dir``, ``publish_base``, ``cache_index``;
    created first, never its parent) read-write. An input inside an output is covered by the
    output's mount. ``params`` must hold absolute paths (:func:`absolute_local_paths`).
    """
    import docker.types

    from tfpipes.tf_log import QUIET_TF_LOG_LEVEL, TF_LOG_ENV

    writable = output_dirs(params)
    readable = []
    for key in INPUT_PATH_PARAMS:
        path = (params.get(key) or "").removeprefix(LATEST_PREFIX)
        source = _input_mount_source(path) if _local(path) else None
        if source and source not in readable:
            readable.append(source)
    mounts = [
        docker.types.Mount(target=d, source=d, type="bind", read_only=False) for d in writable
    ]
    mounts += [
        docker.types.Mount(target=p, source=p, type="bind", read_only=True)
        for p in readable
        if not any(p == d or p.startswith(d + os.sep) for d in writable)
    ]
    uid, gid = container_user()
    return {
        "network_mode": "none",
        "user": f"{uid}:{gid}",
        "mounts": mounts,
        "environment": {
            "HOME": "/tmp",
            TF_LOG_ENV: os.environ.get(TF_LOG_ENV, QUIET_TF_LOG_LEVEL),
        },
    }


@contextlib.contextmanager
def writable_for_containers(dirs: list[str]):
    """While the steps run, let the container user write ``dirs`` (and everything in them).

    A non-root host user runs the containers as itself: nothing to do. Root runs them as the
    image's user, so the trees are handed to it for the run and given back after, whatever
    happened: what existed to its owner before, what the steps made to root, as with the
    subprocess runner.
    """
    uid, gid = container_user()
    if os.getuid() != 0 or (uid, gid) == (0, 0):
        yield
        return
    owners = {path: (st.st_uid, st.st_gid) for path, st in _walk(dirs)}
    for path in owners:
        os.lchown(path, uid, gid)
    try:
        yield
    finally:
        for path, _ in _walk(dirs):
            os.lchown(path, *owners.get(path, (os.getuid(), os.getgid())))


def _walk(dirs: list[str]):
    """(path, lstat) of each of ``dirs`` and everything under them, symlinks not followed."""
    for top in dirs:
        yield top, os.lstat(top)
        for root, subdirs, files in os.walk(top):
            for name in subdirs + files:
                path = os.path.join(root, name)
                yield path, os.lstat(path)


def run_local(params: dict, pipeline_root: str, runner: str = "subprocess") -> dict[str, str]:
    """Run the whole pipeline with kfp.local; returns {output name: local artifact path}.

    runner: ``subprocess`` (this Python environment; nothing installed at run time) or
    ``docker`` (each component in the tfpipes image, see :func:`docker_run_options`). Local
    paths in ``params`` are made absolute. Every step gets this process's
    ``TF_CPP_MIN_LOG_LEVEL``, or 2 (quiet) when it has none.
    """
    from kfp import local

    from tfpipes.tf_log import QUIET_TF_LOG_LEVEL, TF_LOG_ENV

    params = absolute_local_paths(params)
    pipeline_root = os.path.abspath(pipeline_root)
    os.makedirs(pipeline_root, exist_ok=True)
    writable: list[str] = []
    if runner == "subprocess":
        cfg = local.SubprocessRunner(use_venv=False)
    elif runner == "docker":
        options = docker_run_options(params)
        writable = [pipeline_root] + [m["Source"] for m in options["mounts"] if not m["ReadOnly"]]
        cfg = local.DockerRunner(**options)
    else:
        raise ValueError(f"unknown runner {runner!r}")
    local.init(runner=cfg, pipeline_root=pipeline_root, raise_on_error=True)
    # The subprocess runner's steps inherit this environment.
    os.environ.setdefault(TF_LOG_ENV, QUIET_TF_LOG_LEVEL)
    with writable_for_containers(writable), warnings.catch_warnings():
        # The subprocess runner warns about any base image without "python" in its name.
        warnings.simplefilter("ignore", RuntimeWarning)
        task = training_pipeline(**params)
    return {name: art.path for name, art in task.outputs.items()}
