"""``tfpipes compile | run-local | demo``: the whole pipeline, compiled or run locally."""

from __future__ import annotations

import argparse
import logging
import os

from tfpipes.commands import add_command

log = logging.getLogger("tfpipes")

PIPELINE_FLAGS = (
    # Flags for some of the pipeline's own parameters: (flag, pipeline parameter, help); their
    # types and defaults are the pipeline's (tfpipes.pipeline_params, no kfp). The training
    # parameters' flags come from TrainConfig (tfpipes.training.params).
    ("--eval-fraction", "eval_fraction", "share of rows for eval"),
    ("--num-shards", "num_shards", "shards per split"),
    ("--fanout-bytes", "fanout_bytes", "input bytes above which preprocess fans out"),
    ("--fanout-parts", "fanout_parts", "parallel preprocess tasks when it fans out"),
    ("--checkpoint-dir", "checkpoint_dir", "durable checkpoint dir (local or gs://)"),
    ("--version", "model_version", "exported model version (default: now)"),
    ("--publish-base", "publish_base", "also publish the SavedModel under this base"),
)


def _pipeline_params() -> dict:
    """{pipeline parameter: inspect.Parameter} of :data:`PIPELINE_FLAGS`, from the pipeline's
    own tables."""
    from tfpipes.pipeline_params import FANOUT, OUTPUT, SINGLE_POD, SPLIT

    tables = {q.name: q for q in SPLIT + FANOUT + OUTPUT + SINGLE_POD}
    return {dest: tables[dest] for _, dest, _ in PIPELINE_FLAGS}


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """Compile-time cluster options (GPUs, placement, credentials) for compile/submit/schedule."""
    g = p.add_argument_group("cluster options (compiled into the pipeline)")
    g.add_argument("--train-gpus", type=int, default=0, help="GPUs for the train step (0)")
    g.add_argument("--gpu-type", default="nvidia.com/gpu", help="accelerator type/resource")
    g.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="node label the train step requires; repeat for more",
    )
    g.add_argument(
        "--toleration",
        action="append",
        default=[],
        metavar="KEY[=VALUE]:EFFECT",
        help="taint the train step tolerates (kubectl syntax, or JSON); repeat for more",
    )
    g.add_argument(
        "--gcs-secret",
        default="",
        metavar="NAME",
        help="Kubernetes secret with a service-account key.json, mounted into every step",
    )


def options_from_args(args):
    """:class:`PipelineOptions` from :func:`add_cluster_options` flags (UserError if bad)."""
    from tfpipes_pipelines.training import PipelineOptions, parse_toleration

    from tfpipes.errors import UserError

    if args.train_gpus < 0:
        raise UserError("--train-gpus must be >= 0")
    selectors = []
    for item in args.node_selector:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--node-selector {item!r}: expected KEY=VALUE")
        selectors.append((key, value))
    try:
        tolerations = tuple(parse_toleration(t) for t in args.toleration)
    except ValueError as e:
        raise UserError(f"--toleration: {e}") from None
    return PipelineOptions(
        train_gpus=args.train_gpus,
        gpu_type=args.gpu_type,
        node_selector=tuple(selectors),
        tolerations=tolerations,
        gcs_secret=args.gcs_secret,
    )


def _add_pipeline_params(p: argparse.ArgumentParser) -> None:
    from tfpipes.training.params import add_pipeline_flags

    add_pipeline_flags(p)
    params = _pipeline_params()
    for flag, dest, help_ in PIPELINE_FLAGS:
        typ, default = params[dest].annotation, params[dest].default
        p.add_argument(flag, dest=dest, type=typ, default=default, help=f"{help_} ({default!r})")


def register(sub) -> None:
    c = add_command(
        sub,
        "compile",
        _compile,
        help="write the KFP pipeline spec (YAML) for preprocess -> train -> export",
        description="Compile the tfpipes training pipeline to a KFP v2 pipeline spec (YAML) that\n"
        "any Kubeflow Pipelines 2.x cluster accepts (upload it, or use `tfpipes submit`).",
    )
    c.add_argument("-o", "--output", default="pipeline.yaml", help="output path (pipeline.yaml)")
    c.add_argument(
        "--distributed",
        action="store_true",
        help="the variant whose train step runs as a Kubeflow TFJob (workers, ps, GPUs are "
        "run parameters)",
    )
    add_cluster_options(c)

    r = add_command(
        sub,
        "run-local",
        _run_local,
        help="run the whole pipeline on this machine with kfp.local",
        description="Run preprocess -> train -> export with kfp.local and print where each\n"
        "artifact landed. --runner subprocess uses this Python environment; --runner docker\n"
        "runs each component in the tfpipes image with no network, never as root (as root on\n"
        "the host: as the image's user, uid 1000), and only the paths it names mounted: the\n"
        "inputs read-only, the output directories (created if missing) read-write.\n\n"
        "example:\n  tfpipes run-local --source data.csv --label label --train-steps 500",
    )
    r.add_argument("--source", required=True, help="CSV file, glob, directory or gs:// prefix")
    r.add_argument("--label", required=True, help="name of the label column")
    r.add_argument("--pipeline-root", default="tfpipes-local", help="where artifacts go")
    r.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess")
    _add_pipeline_params(r)

    d = add_command(
        sub,
        "demo",
        _demo,
        help="synthetic data -> the whole pipeline locally -> a prediction from the model",
        description="Make a synthetic data set (float, int and string columns, a 3-class label),\n"
        "run the whole pipeline locally and print predictions of the exported SavedModel.",
    )
    d.add_argument("--workdir", default="tfpipes-demo", help="where everything goes")
    d.add_argument("--rows", type=int, default=5000, help="rows of synthetic data (5000)")
    d.add_argument("--train-steps", type=int, default=600, help="training steps (600)")
    d.add_argument("--runner", choices=["subprocess", "docker"], default="subprocess")


def _abs(path: str) -> str:
    from tfpipes import storage

    return path if storage.is_remote(path) else os.path.abspath(storage.normalize(path))


def _params(args) -> dict:
    """The pipeline's arguments from run-local's flags; a bad training parameter is refused
    here with the line ``tfpipes train`` would print, before any step runs."""
    from tfpipes.training.params import from_params, pick

    training = pick(vars(args))
    from_params(training)
    return training | {dest: getattr(args, dest) for _, dest, _ in PIPELINE_FLAGS}


def _compile(args) -> int:
    from tfpipes_pipelines.training import compile_pipeline

    if args.distributed:
        from tfpipes_pipelines.distributed import compile_distributed_pipeline

        compile_distributed_pipeline(args.output, options_from_args(args))
    else:
        compile_pipeline(args.output, options_from_args(args))
    log.info("compile: pipeline spec -> %s", os.path.abspath(args.output))
    return 0


def _run(params: dict, root: str, runner: str, verbose: int = 0) -> dict[str, str]:
    from tfpipes_pipelines.training import run_local

    from tfpipes.errors import UserError

    os.makedirs(root, exist_ok=True)
    if runner == "docker":
        _check_image()
    log_path = os.path.join(os.path.abspath(root), "run-local.log")
    with _QuietOutput(log_path, echo_all=verbose > 0) as out:
        try:
            outputs = run_local(params, root, runner=runner)
            error = None
        except RuntimeError as e:
            error = str(e).splitlines()[0]
    if error:
        # kfp.local raises RuntimeError naming the failed task; the task's own one-line
        # reason is in its log.
        reasons = [ln for ln in out.lines if ": error: " in ln]
        raise UserError(f"{(reasons or [error])[-1].strip()} (full log: {log_path})")
    # kfp.local's Docker runner reports success when an auto-removed container is already
    # gone; a step is done only when its output is there and committed.
    # (The model artifact holds the checkpoints, or only a MODEL_DIR pointer to
    # --checkpoint-dir; the SavedModel, committed last, proves that training finished.)
    from tfpipes.checkpoints import latest_published_version

    committed = {"examples": "manifest.json", "model": "", "metrics": "", "exported": ""}
    for name, marker in committed.items():
        path = outputs.get(name, "")
        if not path or not os.path.exists(os.path.join(path, marker) if marker else path):
            raise UserError(f"run-local: step output {name!r} is missing at {path or '?'}")
    if latest_published_version(outputs["exported"]) is None:
        raise UserError(f"run-local: no SavedModel under {outputs['exported']}")
    return outputs


class _QuietOutput:
    """Send everything written to fd 1 and 2 (kfp.local and the task subprocesses print a lot)
    to a log file, and echo only the step summaries and task status lines to the terminal."""

    KEEP = ("preprocess:", "train:", "export:", "finished with status", "error:")

    def __init__(self, log_path: str, echo_all: bool = False):
        self.log_path, self.echo_all = log_path, echo_all
        self.lines: list[str] = []

    def __enter__(self):
        import sys
        import threading

        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(self.saved[1]), "w", buffering=1)
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self.reader = threading.Thread(target=self._pump, args=(r,), daemon=True)
        self.reader.start()
        return self

    def _pump(self, fd: int) -> None:
        import re

        ansi = re.compile(r"\x1b\[[0-9;]*m")
        with os.fdopen(fd, "r", errors="replace") as src, open(self.log_path, "a") as logf:
            for line in src:
                logf.write(line)
                clean = ansi.sub("", line)
                self.lines.append(clean)
                if self.echo_all or any(k in clean for k in self.KEEP):
                    self.term.write(clean if self.echo_all else "  " + clean.strip() + "\n")

    def __exit__(self, *exc):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.reader.join(timeout=10)
        self.term.close()
        return False


def _check_image() -> None:
    from tfpipes_components.steps import IMAGE

    from tfpipes.errors import UserError

    try:
        import docker

        client = docker.from_env()
        client.images.get(IMAGE)
    except ImportError:
        raise UserError("--runner docker needs the docker package: pip install docker") from None
    except Exception as e:  # docker.errors.ImageNotFound, DockerException (no engine)
        kind = type(e).__name__
        if kind == "ImageNotFound":
            raise UserError(f"image {IMAGE} not found; build it with docker/build.sh") from None
        raise UserError(f"no Docker engine answers ({kind}); start one first") from None


def _run_local(args) -> int:
    params = _params(args) | {"source": _abs(args.source), "label": args.label}
    outputs = _run(params, args.pipeline_root, args.runner, args.verbose)
    log.info("run-local: done. Artifacts:")
    for name, path in outputs.items():
        log.info("  %-9s %s", name, path)
    return 0


def _demo(args) -> int:
    from tfpipes.sample_data import write_csv

    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    csv_path = os.path.join(work, "data.csv")
    write_csv(csv_path, args.rows, "classification", seed=0)
    log.info("demo: %d synthetic rows -> %s", args.rows, csv_path)
    from tfpipes.training.params import pipeline_defaults

    params = pipeline_defaults() | {k: q.default for k, q in _pipeline_params().items()}
    params |= {
        "source": csv_path,
        "label": "label",
        "train_steps": args.train_steps,
        "num_shards": 4,
        "model_version": "1",
    }
    outputs = _run(params, os.path.join(work, "pipeline-root"), args.runner, args.verbose)
    import json

    metrics_path = outputs["metrics"]
    with open(metrics_path) as f:
        metrics = json.load(f)
    saved_model = os.path.join(outputs["exported"], "1")
    log.info("demo: artifacts:")
    for name, path in outputs.items():
        log.info("  %-9s %s", name, path)
    _show_predictions(saved_model, outputs["examples"])
    log.info("demo: eval metrics %s", _fmt_metrics(metrics))
    log.info("demo: exported model (TF Serving layout) -> %s", saved_model)
    return 0


def _fmt_metrics(metrics) -> str:
    scalars = metrics.get("scalar", metrics)  # kfp.local writes {"scalar": [...]} or a dict
    if isinstance(scalars, list):
        scalars = {m["name"]: m["value"] for m in scalars}
    return ", ".join(f"{k}={v:.4g}" for k, v in scalars.items() if isinstance(v, (int, float)))


def _show_predictions(saved_model: str, data_dir: str, n: int = 3) -> None:
    import tensorflow as tf

    from tfpipes.records import dataset_row_records

    records = dataset_row_records(data_dir, "eval", n)
    model = tf.saved_model.load(saved_model)
    out = model.signatures["serving_default"](examples=tf.constant(records))
    for i, rec in enumerate(records):
        ex = tf.train.Example.FromString(rec).features.feature
        true = ex["label"].int64_list.value[0]
        probs = ", ".join(f"{p:.3f}" for p in out["probabilities"][i].numpy())
        log.info(
            "demo: prediction for eval row %d: class %d (true %d), probabilities [%s]",
            i,
            int(out["class_ids"][i]),
            true,
            probs,
        )
