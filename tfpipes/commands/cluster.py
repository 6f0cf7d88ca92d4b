"""``tfpipes tfjob`` (a Kubeflow TFJob manifest) and ``tfpipes local-cluster`` (the same cluster
as processes on 127.0.0.1). Both run ``tfpipes train <args after -->`` in every task."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tfpipes.commands import add_command
from tfpipes.errors import UserError

_TFJOB_EPILOG = """\
Example:
  tfpipes tfjob --workers 2 --ps 2 --image gcr.io/p/tfpipes:0.1 --gcs-secret gcs-sa \\
      -- --data gs://b/data --model-dir gs://b/model | kubectl apply -f -

Exit codes of `tfpipes train` under --restart-policy ExitCode: 1-127 fail the job
(2 = user error), >= 128 restart the pod (138 = peer unreachable or preempted).
See docs/distributed.md."""

_LAUNCH_EPILOG = """\
Examples:
  tfpipes launch --launcher jobset --workers 4 --image gcr.io/p/tfpipes:0.1 \\
      -- --data gs://b/data --model-dir gs://b/model | kubectl apply -f -
  tfpipes launch --launcher trainjob --workers 2 --ps 1 --image gcr.io/p/tfpipes:0.1 \\
      --runtime tfpipes-tf-0123abcd -- --data gs://b/data --model-dir gs://b/model

Exit codes of `tfpipes train`: 1-127 fail the job at once (2 = user error), >= 128 and
signals restart it up to --backoff-limit times. See docs/distributed.md."""

_LOCAL_EPILOG = """\
Examples:
  tfpipes local-cluster --workers 2 -- --data out/data --model-dir out/model
  tfpipes local-cluster --workers 2 --ps 1 -- --data out/data --model-dir out/model
  tfpipes local-cluster --workers 2 --full-command -- python my_script.py

Network: TensorFlow's servers listen on every interface and accept anyone. The tasks run in
a private network namespace whose only interface is loopback, so nothing outside the cluster
can reach them (a local STORAGE_EMULATOR_HOST is relayed in). That needs root; without it
local-cluster refuses to start while another interface is up, unless --allow-network.
--allow-network runs the tasks in this machine's network (needed for gs:// on real GCS),
where other machines can reach their servers.

Exit code: 0 when the chief (or, without --ps, every worker) exits 0; otherwise the failed
task's code (128+N if killed by signal N), 124 on --timeout. See docs/distributed.md."""


def register(subparsers: argparse._SubParsersAction) -> None:
    tfjob = add_command(
        subparsers,
        "tfjob",
        run_tfjob,
        help="print a Kubeflow TFJob manifest that runs `tfpipes train`",
        description=(
            "Print a Kubeflow TFJob (kubeflow.org/v1) manifest as YAML: Chief/Worker/PS "
            "replicas each running `tfpipes train <arguments after -->` in a container named "
            "`tensorflow`."
        ),
        epilog=_TFJOB_EPILOG,
    )
    add_job_flags(tfjob)

    launch = add_command(
        subparsers,
        "launch",
        run_launch,
        help="print every object a launcher needs to run `tfpipes train` on a cluster",
        description=(
            "Print, as YAML documents for `kubectl apply -f -`, every object one launcher "
            "needs: tfjob (a Kubeflow TFJob), trainjob (a Trainer v2 TrainJob and the tfpipes "
            "ClusterTrainingRuntime), jobset (a JobSet), job (an Indexed Job per role and a "
            "headless Service). Pods without an operator derive TF_CONFIG themselves."
        ),
        epilog=_LAUNCH_EPILOG,
    )
    launch.add_argument("--launcher", required=True, choices=["tfjob", "trainjob", "jobset", "job"])
    launch.add_argument(
        "--runtime",
        metavar="NAME",
        help="trainjob: an installed ClusterTrainingRuntime to use instead of printing ours",
    )
    add_job_flags(launch)

    trainjob = subparsers.add_parser(
        "trainjob",
        help="Kubeflow Trainer v2 helpers (`tfpipes trainjob runtime`)",
        description="Kubeflow Trainer v2 helpers.",
    )
    trainjob_sub = trainjob.add_subparsers(dest="trainjob_command", required=True)
    runtime = trainjob_sub.add_parser(
        "runtime",
        help="print the tfpipes ClusterTrainingRuntime for a shape",
        description=(
            "Print the ClusterTrainingRuntime tfpipes TrainJobs of this shape refer to (its "
            "name is a hash of its content), for a cluster administrator to install."
        ),
    )
    add_job_flags(runtime)
    runtime.set_defaults(handler=run_trainjob_runtime)

    local = add_command(
        subparsers,
        "local-cluster",
        run_local_cluster,
        help="run `tfpipes train` as a multi-process cluster on 127.0.0.1",
        description=(
            "Start the chief, workers and parameter servers as local processes with the "
            "TF_CONFIG the Kubeflow Training Operator would give them, stream their output "
            "prefixed by task, and stop them all when the job is decided."
        ),
        epilog=_LOCAL_EPILOG,
    )
    local.add_argument("--workers", type=int, default=2, metavar="N", help="workers (default 2)")
    local.add_argument(
        "--ps", type=int, default=0, metavar="M", help="parameter servers (implies --chief)"
    )
    local.add_argument("--chief", action="store_true", help="add a chief task")
    local.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="bound on the whole run (seconds)"
    )
    local.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping tasks (default 5)",
    )
    local.add_argument(
        "--full-command",
        action="store_true",
        help="run the arguments after -- as the whole command instead of `tfpipes train ...`",
    )
    local.add_argument(
        "--allow-network",
        action="store_true",
        help="run the tasks in this machine's network (to reach gs://): their TensorFlow "
        "servers are then reachable from other machines, unauthenticated",
    )
    local.add_argument("args", nargs="*", metavar="-- ARGS", help="arguments for `tfpipes train`")


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every launcher (``tfpipes tfjob``, ``tfpipes launch``, ``tfpipes trainjob
    runtime``): one set, so that the same knob means the same everywhere."""
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="workers (default 1)")
    parser.add_argument(
        "--ps", type=int, default=0, metavar="M", help="parameter servers (default 0: MWMS)"
    )
    parser.add_argument(
        "--chief",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a Chief replica (default: only when --ps > 0, which requires one)",
    )
    parser.add_argument(
        "--gpus-per-worker",
        type=int,
        default=0,
        metavar="G",
        help="nvidia.com/gpu limit for each worker and the chief (default 0)",
    )
    parser.add_argument("--image", required=True, help="container image with tfpipes installed")
    parser.add_argument("--name", default="tfpipes-train", help="job name (default tfpipes-train)")
    parser.add_argument("--namespace", help="Kubernetes namespace (default: kubectl's current)")
    parser.add_argument("--cpu", help="CPU request per replica, e.g. 4 or 500m")
    parser.add_argument("--memory", help="memory request and limit per replica, e.g. 16Gi")
    parser.add_argument(
        "--gcs-secret",
        metavar="SECRET_NAME",
        help="Kubernetes secret with a service-account key, mounted at /var/secrets/google",
    )
    parser.add_argument(
        "--gcs-secret-key",
        default="key.json",
        metavar="KEY",
        help="file name of the key inside the secret (default key.json)",
    )
    parser.add_argument(
        "--restart-policy",
        choices=["ExitCode", "OnFailure"],
        default="ExitCode",
        help="ExitCode (default): restart on exit codes >= 128 only; OnFailure: on any failure",
    )
    parser.add_argument(
        "--backoff-limit", type=int, default=3, metavar="K", help="restarts before the job fails"
    )
    parser.add_argument(
        "train_args", nargs="*", metavar="-- TRAIN_ARGS", help="arguments for `tfpipes train`"
    )
    parser.add_argument(
        "--node-selector",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="schedule pods only on nodes with this label (repeatable)",
    )
    parser.add_argument(
        "--toleration",
        action="append",
        default=[],
        metavar="KEY[=VALUE][:EFFECT]",
        help="tolerate this node taint (repeatable)",
    )


def spec_from_args(args: argparse.Namespace):
    """The :class:`~tfpipes.cluster.tfjob.TFJobSpec` the flags of :func:`add_job_flags` ask for."""
    from tfpipes.cluster import pods
    from tfpipes.cluster.tfjob import TFJobSpec

    return TFJobSpec(
        image=args.image,
        workers=args.workers,
        ps=args.ps,
        chief=args.chief,
        gpus_per_worker=args.gpus_per_worker,
        name=args.name,
        namespace=args.namespace,
        cpu=args.cpu,
        memory=args.memory,
        gcs_secret=args.gcs_secret,
        gcs_secret_key=args.gcs_secret_key,
        restart_policy=args.restart_policy,
        backoff_limit=args.backoff_limit,
        train_args=tuple(getattr(args, "train_args", ())),
        node_selector=pods.parse_node_selector(args.node_selector),
        tolerations=tuple(pods.parse_toleration(t) for t in args.toleration),
    )


def run_tfjob(args: argparse.Namespace) -> int:
    from tfpipes.cluster.tfjob import build_tfjob, render_yaml

    sys.stdout.write(render_yaml(build_tfjob(spec_from_args(args))))
    return 0


def run_launch(args: argparse.Namespace) -> int:
    from tfpipes.cluster.launchers import get_launcher, render_documents

    launcher = get_launcher(args.launcher)
    if args.runtime is not None and launcher.name != "trainjob":
        raise UserError("--runtime is only for --launcher trainjob")
    objects = launcher.objects(spec_from_args(args), args.runtime)
    sys.stdout.write(render_documents(objects, launcher.name))
    return 0


def run_trainjob_runtime(args: argparse.Namespace) -> int:
    from tfpipes.cluster.launchers import render_documents
    from tfpipes.cluster.trainjob import build_runtime

    sys.stdout.write(render_documents([build_runtime(spec_from_args(args))], "trainjob"))
    return 0


def run_local_cluster(args: argparse.Namespace) -> int:
    from tfpipes.cluster import local

    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    if args.ps < 0:
        raise UserError(f"--ps must be >= 0, got {args.ps}")
    if args.timeout is not None and args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout:g}")
    if args.grace < 0:
        raise UserError(f"--grace must be >= 0, got {args.grace:g}")
    needs_network = _gcs_outside_loopback(args.args)
    if needs_network and not args.allow_network:
        raise UserError(
            f"{needs_network} needs the network, and the tasks run in a private "
            "namespace with only loopback: pass --allow-network (their TensorFlow servers are "
            "then reachable from other machines)"
        )
    env = {}
    if args.full_command:
        if not args.args:
            raise UserError("--full-command needs a command after --")
        argv = list(args.args)

        def argv_for_task(task_type: str, index: int) -> list[str]:
            return argv
    else:
        argv_for_task = local.default_train_argv(args.args)
        # Let `python -m tfpipes.cli` in the tasks import this very tfpipes, installed or not.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    try:
        result = local.run_cluster(
            argv_for_task,
            workers=args.workers,
            ps=args.ps,
            chief=args.chief or args.ps > 0,
            timeout=args.timeout,
            env=env,
            grace=args.grace,
            allow_network=args.allow_network,
        )
    except FileNotFoundError as e:
        raise UserError(f"cannot start the task command: {e}") from None
    except local.LauncherTerminated as e:
        print(f"tfpipes local-cluster: {e}; all tasks stopped", file=sys.stderr)
        return 128 + e.signum
    if result.exit_code != 0:
        print(f"tfpipes local-cluster: {result.message}", file=sys.stderr)
    return result.exit_code


def _gcs_outside_loopback(argv: list[str]) -> str:
    """The first gs:// argument, when storage is real GCS (not a loopback emulator); else ""."""
    from tfpipes.cluster.private_network import loopback_relay_targets

    if loopback_relay_targets(dict(os.environ)):
        return ""
    return next((a for a in argv if "gs://" in a), "")
