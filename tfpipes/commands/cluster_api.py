"""``tfpipes submit`` and ``tfpipes schedule ...``: run the training pipeline on a Kubeflow
Pipelines cluster, once or on a schedule. The work is in ``tfpipes_pipelines`` (``package``:
the compiled pipeline, ``schedule_syntax``: cron and intervals, ``kfp_session``: the REST
session); kfp is imported inside the handlers so that ``tfpipes --help`` stays fast."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tfpipes.commands import add_command
from tfpipes.errors import UserError

log = logging.getLogger(__name__)

_CONNECTION_HELP = """\
Connection: --host is the KFP API endpoint (or $KF_PIPELINES_ENDPOINT), e.g.
http://localhost:8888 after `kubectl port-forward -n kubeflow svc/ml-pipeline 8888`.
Token, first found: --token, --token-file, the service-account token with --in-cluster-auth,
$KF_PIPELINES_TOKEN; else kfp.Client's defaults. The service-account token
($KF_PIPELINES_SA_TOKEN_PATH) is read only with --in-cluster-auth or when --host is the
in-cluster address (ml-pipeline.NAMESPACE.svc.cluster.local).
The token goes to --host only: a redirect is refused, never followed; and a token over plain
http:// to any host but this machine (the in-cluster address included) is refused unless
--allow-insecure-http. See docs/kfp-cluster.md."""

_SUBMIT_EPILOG = f"""\
Examples:
  tfpipes submit --host http://localhost:8888 --param source=gs://b/data.csv --param label=y
  tfpipes submit --host URL --experiment nightly --param train_steps=2000 --wait --timeout 7200

The pipeline is uploaded as a new version of the pipeline of that name (a new pipeline the
first time) and run in the experiment (created if missing). Prints the run ID and URL.
Exit codes: 0 submitted (with --wait: the run SUCCEEDED); 1 the run ended FAILED, CANCELED or
SKIPPED; 2 a usage, authentication or server error; 124 --timeout passed while waiting;
138 the server could not be reached (refused, timed out, reset): the environment failed,
retry later.

{_CONNECTION_HELP}"""

_SCHEDULE_EPILOG = f"""\
Examples:
  tfpipes schedule create --host URL --name nightly --cron "0 3 * * *" --param source=gs://b/d.csv
  tfpipes schedule create --host URL --name retrain --every 6h --no-catchup
  tfpipes schedule create --host URL --name latest --cron "0 3 * * *" --follow-latest
  tfpipes schedule list --host URL
  tfpipes schedule update --host URL nightly        # re-point it to a new pipeline version
  tfpipes schedule disable --host URL nightly

Schedules run an uploaded pipeline version; with --follow-latest, whichever version of the
pipeline is the latest when a run starts (so `tfpipes submit` of new code moves the schedule).
A 5-field cron is read as standard cron (minute first; times in the scheduler's zone, UTC by
default); 6 fields put seconds first, as KFP does.

If the pipeline has a string parameter model_version, each scheduled run gets its scheduled
time there (KFP's [[ScheduledTime]]: YYYYMMDDhhmmss, UTC).

{_CONNECTION_HELP}"""


def register(subparsers: argparse._SubParsersAction) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--host",
        default=os.environ.get("KF_PIPELINES_ENDPOINT"),
        help="KFP API URL (default $KF_PIPELINES_ENDPOINT)",
    )
    group.add_argument("--namespace", help="namespace of a multi-user KFP (default: none)")
    # One source of credentials at a time: two would leave the user guessing which was sent.
    source = group.add_mutually_exclusive_group()
    source.add_argument("--token", help="bearer token (prefer --token-file: argv is visible)")
    source.add_argument("--token-file", metavar="PATH", help="file holding the bearer token")
    source.add_argument(
        "--in-cluster-auth",
        action="store_true",
        help="send this pod's KFP service-account token ($KF_PIPELINES_SA_TOKEN_PATH, default"
        " /var/run/secrets/kubeflow/pipelines/token)",
    )
    group.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="allow sending the token over plain http:// to a host that is not this machine"
        " (readable by anyone on the network between; default: refused)",
    )
    group.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds any one request may take (default 30)",
    )

    pipeline = argparse.ArgumentParser(add_help=False)
    group = pipeline.add_argument_group("pipeline")
    group.add_argument(
        "--package",
        metavar="PIPELINE.yaml",
        help="a compiled pipeline to use (default: compile tfpipes' training pipeline)",
    )
    group.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a pipeline parameter; repeat for more (values are converted to declared types)",
    )
    from tfpipes.commands.pipeline import add_cluster_options

    add_cluster_options(pipeline)

    placement = argparse.ArgumentParser(add_help=False)
    placement.add_argument(
        "--pipeline-name", help="name of the pipeline in KFP (default: the package's own name)"
    )
    choice = placement.add_mutually_exclusive_group()
    choice.add_argument(
        "--experiment", metavar="NAME", help="experiment name, created if missing (default Default)"
    )
    choice.add_argument("--experiment-id", metavar="ID", help="an existing experiment's ID")

    submit = add_command(
        subparsers,
        "submit",
        _submit,
        parents=[connection, pipeline, placement],
        help="upload the pipeline to a KFP cluster and start a run",
        description="Compile the training pipeline, upload it to Kubeflow Pipelines and run it.",
        epilog=_SUBMIT_EPILOG,
    )
    submit.add_argument("--run-name", help="display name of the run (default: pipeline + time)")
    submit.add_argument("--wait", action="store_true", help="follow the run until it ends")
    submit.add_argument(
        "--timeout",
        type=_positive_float,
        default=24 * 3600.0,
        metavar="S",
        help="with --wait: give up after S seconds (exit 124; the run goes on) (default 86400)",
    )
    submit.add_argument(
        "--poll-interval",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="with --wait: seconds between state checks (default 5)",
    )

    schedule = add_command(
        subparsers,
        "schedule",
        help="create, list, enable, disable, update or delete recurring runs on a KFP cluster",
        description="Manage recurring runs (schedules) of the training pipeline on Kubeflow "
        "Pipelines.",
        epilog=_SCHEDULE_EPILOG,
    )
    actions = schedule.add_subparsers(dest="schedule_action", metavar="ACTION", required=True)

    create = add_command(
        actions,
        "create",
        _schedule_create,
        parents=[connection, pipeline, placement],
        help="upload a pipeline version and create a recurring run of it",
        epilog=_SCHEDULE_EPILOG,
    )
    create.add_argument(
        "--name", required=True, help="schedule name (how the other actions find it)"
    )
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='cron expression, 5 fields ("0 3 * * *") or 6 (seconds first)')
    when.add_argument("--every", metavar="DURATION", help="fixed interval: 30m, 6h, 1d, 1h30m")
    create.add_argument(
        "--max-concurrency", type=int, default=1, metavar="N", help="runs at once, 1-10 (default 1)"
    )
    create.add_argument(
        "--no-catchup",
        action="store_true",
        help="after a pause, run only the latest missed interval, not every one",
    )
    create.add_argument("--start-time", metavar="ISO", help="first possible run (no zone: UTC)")
    create.add_argument("--end-time", metavar="ISO", help="no runs after this (no zone: UTC)")
    create.add_argument("--description", help="description shown in the KFP UI")
    create.add_argument(
        "--follow-latest",
        action="store_true",
        help="each run uses the pipeline's latest version at the time (versions uploaded later"
        " by `tfpipes submit` or anyone else included), not the one uploaded now (KFP >= 2.5)",
    )

    listing = actions.add_parser("list", parents=[connection], help="list schedules")
    listing.set_defaults(handler=_schedule_list)

    for action, helptext in (
        ("enable", "start scheduling runs again"),
        ("disable", "stop scheduling runs (the schedule is kept)"),
        ("delete", "delete the schedule (its past runs are kept)"),
    ):
        sub = actions.add_parser(action, parents=[connection], help=helptext)
        sub.add_argument("schedule", metavar="NAME_OR_ID")
        sub.set_defaults(handler=_schedule_toggle_or_delete)

    update = actions.add_parser(
        "update",
        parents=[connection, pipeline],
        help="upload a new pipeline version and re-point the schedule to it",
        description=(
            "Upload a new version of the schedule's pipeline and re-point the schedule to it, "
            "keeping its name, trigger and settings. KFP cannot change a recurring run, so the "
            "new one is created first and the old one deleted after (its ID changes)."
        ),
    )
    update.add_argument("schedule", metavar="NAME_OR_ID")
    update.set_defaults(handler=_schedule_update)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


@contextlib.contextmanager
def _session(args: argparse.Namespace) -> Iterator:
    from tfpipes_pipelines import kfp_session

    if not args.host:
        raise UserError(
            "--host is required (or set KF_PIPELINES_ENDPOINT), e.g. http://localhost:8888"
        )
    from tfpipes_pipelines import kfp_transport

    token = kfp_transport.resolve_token(
        args.host, args.token, args.token_file, in_cluster_auth=args.in_cluster_auth
    )
    with kfp_session.KfpSession(
        args.host,
        token=token,
        namespace=args.namespace,
        timeout=args.request_timeout,
        allow_insecure_http=args.allow_insecure_http,
    ) as session:
        yield session


@contextlib.contextmanager
def _package(args: argparse.Namespace) -> Iterator:
    """The pipeline package: --package, or the training pipeline compiled to a temporary file."""
    from tfpipes_pipelines.package import read_package

    if args.package:
        yield read_package(args.package)
        return
    try:
        from tfpipes_pipelines import training
    except ModuleNotFoundError as e:
        if e.name not in ("tfpipes_pipelines.training", "tfpipes_pipelines"):
            raise
        raise UserError(
            "the training pipeline (tfpipes_pipelines.training) is not installed;"
            " pass a compiled pipeline with --package PIPELINE.yaml"
        ) from None
    with tempfile.TemporaryDirectory(prefix="tfpipes-submit-") as tmp:
        path = Path(tmp) / "pipeline.yaml"
        from tfpipes.commands.pipeline import options_from_args

        training.compile_pipeline(str(path), options_from_args(args))
        yield read_package(path)


def _submit(args: argparse.Namespace) -> int:
    with _package(args) as package:
        arguments = package.arguments(args.param)  # checked before anything is sent
        with _session(args) as session:
            run = session.submit(
                package,
                arguments,
                experiment=args.experiment,
                experiment_id=args.experiment_id,
                pipeline_name=args.pipeline_name,
                run_name=args.run_name,
            )
            v = run.version
            log.info(
                "pipeline %s (%s): %s version %s",
                v.pipeline_name,
                v.pipeline_id,
                "new pipeline," if v.new_pipeline else "new",
                v.version_name,
            )
            print(f"run {run.run_id}")
            print(run.url)
            sys.stdout.flush()
            if not args.wait:
                return 0
            outcome = session.wait(
                run.run_id,
                timeout=args.timeout,
                poll=args.poll_interval,
                on_state=lambda state: log.info("run %s: %s", run.run_id, state),
            )
    detail = f": {outcome.message}" if outcome.message else ""
    print(f"run {outcome.run_id} {outcome.state}{detail}")
    return 0 if outcome.state == "SUCCEEDED" else 1


def _schedule_create(args: argparse.Namespace) -> int:
    from tfpipes_pipelines import schedule_syntax as syntax

    trigger = syntax.Trigger(
        cron=syntax.to_kfp_cron(args.cron) if args.cron is not None else None,
        interval_second=syntax.parse_interval(args.every) if args.every is not None else None,
        start_time=syntax.parse_time(args.start_time, "--start-time") if args.start_time else None,
        end_time=syntax.parse_time(args.end_time, "--end-time") if args.end_time else None,
    )
    with _package(args) as package:
        arguments = package.arguments(args.param)
        with _session(args) as session:
            schedule, version = session.create_schedule(
                package,
                args.name,
                trigger,
                arguments,
                max_concurrency=args.max_concurrency,
                no_catchup=args.no_catchup,
                experiment=args.experiment,
                experiment_id=args.experiment_id,
                pipeline_name=args.pipeline_name,
                description=args.description,
                follow_latest=args.follow_latest,
            )
    which = (
        f"following its latest version (now {version.version_name})"
        if schedule.follows_latest
        else f"version {version.version_name}"
    )
    print(
        f"schedule {schedule.name} {schedule.schedule_id}: {schedule.trigger.describe()},"
        f" pipeline {version.pipeline_name}, {which}"
    )
    return 0


def _schedule_list(args: argparse.Namespace) -> int:
    with _session(args) as session:
        schedules = session.list_schedules()
    rows = [("ID", "STATUS", "TRIGGER", "NAME", "PIPELINE VERSION")]
    rows += [
        (
            s.schedule_id,
            "enabled" if s.enabled else "disabled",
            s.trigger.describe(),
            s.name,
            _version_column(s),
        )
        for s in sorted(schedules, key=lambda s: s.name)
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    return 0


def _version_column(s) -> str:
    if s.follows_latest:
        return f"latest of pipeline {s.pipeline_id}"
    return s.version_id or "(frozen spec)"


def _schedule_toggle_or_delete(args: argparse.Namespace) -> int:
    with _session(args) as session:
        if args.schedule_action == "delete":
            schedule = session.delete_schedule(args.schedule)
            print(f"deleted schedule {schedule.name} {schedule.schedule_id}")
        else:
            enabled = args.schedule_action == "enable"
            schedule = session.set_schedule_enabled(args.schedule, enabled)
            print(f"{args.schedule_action}d schedule {schedule.name} {schedule.schedule_id}")
    return 0


def _schedule_update(args: argparse.Namespace) -> int:
    with _package(args) as package, _session(args) as session:
        old, new, version, dropped = session.update_schedule(args.schedule, package, args.param)
    if dropped:
        log.warning(
            "the new pipeline has no parameter(s) %s; the schedule no longer passes them",
            ", ".join(dropped),
        )
    print(
        f"updated schedule {new.name}: {old.schedule_id} -> {new.schedule_id},"
        f" pipeline version {version.version_name}"
    )
    return 0
