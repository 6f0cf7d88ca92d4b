"""Submit and schedule the training pipeline on a Kubeflow Pipelines cluster.

A thin layer over ``kfp.Client`` that does what a user otherwise scripts by hand, and turns
every way it can go wrong into one line that says what to change:

- :func:`read_package` reads a compiled pipeline (KFP v2 YAML) and its declared parameters;
  :meth:`PipelinePackage.arguments` checks ``--param k=v`` pairs against them and converts each
  value to its declared type, before anything is sent.
- :class:`KfpSession` uploads the package as a pipeline, or as a new version of the pipeline of
  that name; runs that version in an experiment (created if missing); follows a run to its end;
  and creates, lists, enables, disables, deletes and re-points recurring runs ("schedules").
  Schedules always refer to an uploaded pipeline *version*: KFP freezes a spec submitted inline
  into the recurring run, and it could never be moved to a new version.
- KFP has no call to change a recurring run, so :meth:`KfpSession.update_schedule` creates the
  replacement first and deletes the old one second: a failure in between leaves two schedules
  (and says so), never none.
- Recurring runs are parsed by the server with ``robfig/cron`` v1, whose first field is seconds;
  a 5-field cron would be silently read as seconds-first and run every hour. :func:`to_kfp_cron`
  accepts the usual 5 fields and adds the seconds.
- If the pipeline declares a string parameter ``model_version`` (``SCHEDULE_TIME_PARAMETER``), a
  schedule passes it KFP's ``[[ScheduledTime]]`` macro, which the scheduler replaces in each run
  with that run's scheduled time as ``YYYYMMDDhhmmss`` (UTC): a monotonic, integer model version.

Errors the user can fix (unreachable host, 401/403, unknown experiment or schedule, bad cron,
unknown parameter, a 4xx from the server) raise :class:`tfpipes.errors.UserError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import math
import os
import re
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kfp
import kfp_server_api
import urllib3
import yaml

from tfpipes.errors import UserError, WaitTimeout

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

UTC = dt.timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; setup.py allows 3.10)

TOKEN_ENV = "KF_PIPELINES_TOKEN"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # kfp.Client reads it too, in-cluster only
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"

#: A schedule passes SCHEDULE_TIME_MACRO to this parameter when the pipeline declares it (str).
SCHEDULE_TIME_PARAMETER = "model_version"
#: Replaced by KFP's scheduler in each recurring run with its scheduled time, YYYYMMDDhhmmss UTC.
SCHEDULE_TIME_MACRO = "[[ScheduledTime]]"

TERMINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})
AUTH_HINT = f"pass a token with --token, --token-file, or {TOKEN_ENV}"

# --------------------------------------------------------------------------------------------
# The package and its parameters

_PARAMETER_TYPES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One pipeline parameter from ``root.inputDefinitions.parameters``."""

    name: str
    type: str  # a key of _PARAMETER_TYPES
    required: bool

    def convert(self, text: str) -> Any:
        """``text`` as a value of this type; UserError naming the ``--param`` otherwise."""
        flag = f"--param {self.name}={text}"
        try:
            if self.type == "NUMBER_INTEGER":
                return int(text)
            if self.type == "NUMBER_DOUBLE":
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError(text)
                return value
            if self.type == "BOOLEAN":
                if text.lower() in _TRUE | _FALSE:
                    return text.lower() in _TRUE
                raise ValueError(text)
            if self.type in ("LIST", "STRUCT"):
                value = json.loads(text)
                if not isinstance(value, list if self.type == "LIST" else dict):
                    raise ValueError(text)
                return value
        except ValueError:
            raise UserError(
                f"{flag}: expected {_PARAMETER_TYPES[self.type]} ({self.type})"
            ) from None
        return text


@dataclasses.dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its file, name, parameters and content digest."""

    path: Path
    name: str
    parameters: dict[str, Parameter]
    digest: str

    def arguments(
        self, pairs: list[str], base: dict[str, Any] | None = None, check_required: bool = True
    ) -> dict[str, Any]:
        """``base`` updated with ``--param k=v`` pairs, each converted to its declared type.

        Raises UserError for a pair without ``=``, a name given twice, a name the pipeline does
        not declare (listing the valid ones), a value of the wrong type, and (with
        ``check_required``) required parameters left without a value.
        """
        values = dict(base or {})
        seen: set[str] = set()
        for pair in pairs:
            name, sep, text = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                raise UserError(f"--param {pair!r}: expected NAME=VALUE")
            if name in seen:
                raise UserError(f"--param {name} is given twice")
            seen.add(name)
            if name not in self.parameters:
                valid = ", ".join(sorted(self.parameters)) or "none"
                raise UserError(
                    f"--param {name}: pipeline {self.name!r} has no parameter {name!r}"
                    f" (valid: {valid})"
                )
            values[name] = self.parameters[name].convert(text)
        if check_required:
            missing = sorted(
                n for n, p in self.parameters.items() if p.required and n not in values
            )
            if missing:
                flags = " ".join(f"--param {n}=..." for n in missing)
                raise UserError(
                    f"pipeline {self.name!r} needs a value for {', '.join(missing)}: {flags}"
                )
        return values

    def with_schedule_time(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` plus SCHEDULE_TIME_PARAMETER=SCHEDULE_TIME_MACRO if the pipeline declares
        that parameter as a string and no value was given."""
        param = self.parameters.get(SCHEDULE_TIME_PARAMETER)
        if param is None or param.type != "STRING" or SCHEDULE_TIME_PARAMETER in values:
            return values
        return {**values, SCHEDULE_TIME_PARAMETER: SCHEDULE_TIME_MACRO}


def read_package(path: str | os.PathLike) -> PipelinePackage:
    """Read a compiled KFP v2 pipeline YAML; UserError if it is missing or not a pipeline."""
    path = Path(path)
    try:
        data = path.read_bytes()
        docs = [d for d in yaml.safe_load_all(data.decode("utf-8")) if d is not None]
    except OSError as e:
        raise UserError(f"{path}: cannot read the pipeline package: {e.strerror}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: not a pipeline YAML: {str(e).splitlines()[0]}") from None
    spec = docs[0] if docs and isinstance(docs[0], dict) else {}
    spec = spec.get("pipeline_spec", spec)
    name = (spec.get("pipelineInfo") or {}).get("name")
    if not name or "root" not in spec:
        raise UserError(f"{path}: not a compiled KFP v2 pipeline (no pipelineInfo.name or root)")
    declared = ((spec["root"].get("inputDefinitions") or {}).get("parameters")) or {}
    parameters = {
        n: Parameter(
            name=n,
            type=d.get("parameterType", "STRING"),
            required=not d.get("isOptional", False) and "defaultValue" not in d,
        )
        for n, d in declared.items()
    }
    return PipelinePackage(path, name, parameters, hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------------------------
# Schedules: cron, intervals, times

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
_CRON_FIELDS = [
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 6, _DAYS),
]
_CRON_DESCRIPTORS = {
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
}
_CRON_HELP = (
    "expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'),"
    " 6 with seconds first, or one of " + ", ".join(sorted(_CRON_DESCRIPTORS))
)


def to_kfp_cron(expr: str) -> str:
    """A cron expression as KFP's scheduler reads it: 6 fields, seconds first.

    Takes the usual 5 fields (a ``0`` seconds field is added), 6 fields, or a descriptor such as
    ``@daily``; checks every field the way ``robfig/cron`` v1 does. UserError otherwise.
    """
    text = " ".join(expr.split())
    if text in _CRON_DESCRIPTORS:
        return text
    if text.startswith("@every"):
        raise UserError(f"--cron {expr!r}: use --every for a fixed interval")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise UserError(f"--cron {expr!r}: {_CRON_HELP}; got {len(fields)} fields")
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        for part in value.split(","):
            problem = _cron_part_problem(part, low, high, names)
            if problem:
                raise UserError(f"--cron {expr!r}: {name} field {value!r}: {problem}")
    return " ".join(fields)


def _cron_part_problem(part: str, low: int, high: int, names: dict[str, int]) -> str | None:
    span, slash, step = part.partition("/")
    if slash and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} is not a positive integer"
    if span in ("*", "?"):
        return None
    bounds = span.split("-")
    if len(bounds) > 2:
        return f"{span!r} is not a value or a range a-b"
    numbers = []
    for bound in bounds:
        number = names.get(bound.lower(), int(bound) if bound.isdigit() else None)
        if number is None:
            return f"{bound!r} is not a number" + (" or a name" if names else "")
        if not low <= number <= high:
            return f"{number} is outside {low}-{high}"
        numbers.append(number)
    if numbers[0] > numbers[-1]:
        return f"range {span!r} runs backwards"
    return None


_INTERVAL = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_interval(text: str) -> int:
    """``6h``, ``30m``, ``1d``, ``1h30m``, ``45s`` -> seconds (at least 1); UserError otherwise."""
    found = _INTERVAL.match(text.strip().lower())
    if not text.strip() or not found:
        raise UserError(f"--every {text!r}: expected a duration such as 30m, 6h, 1d or 1h30m")
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total < 1:
        raise UserError(f"--every {text!r}: the interval must be at least 1s")
    return total


def format_interval(seconds: int) -> str:
    """The inverse of :func:`parse_interval`: 21600 -> '6h', 5400 -> '1h30m'."""
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def parse_time(text: str, flag: str) -> str:
    """An ISO 8601 time (no zone means UTC) as the RFC 3339 UTC string KFP takes."""
    try:
        stamp = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"{flag} {text!r}: expected an ISO 8601 time like 2025-01-31T03:00:00Z"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class Trigger:
    """When a schedule fires: a 6-field cron or an interval, with optional start and end."""

    cron: str | None = None
    interval_second: int | None = None
    start_time: str | None = None  # RFC 3339, UTC
    end_time: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.interval_second is None):
            raise UserError("give exactly one of --cron and --every")
        if self.start_time and self.end_time and self.end_time <= self.start_time:
            raise UserError(
                f"--end-time {self.end_time} is not after --start-time {self.start_time}"
            )

    def describe(self) -> str:
        return (
            f"cron {self.cron}"
            if self.cron
            else f"every {format_interval(self.interval_second or 0)}"
        )


def resolve_token(
    token: str | None = None, token_file: str | None = None, environ: dict | None = None
) -> str | None:
    """The bearer token to send, or None for kfp.Client's own defaults.

    Order: ``--token``, ``--token-file``, $KF_PIPELINES_TOKEN, the file named by
    $KF_PIPELINES_SA_TOKEN_PATH (kfp.Client honours that one only in-cluster without a host).
    """
    env = os.environ if environ is None else environ
    if token:
        return token.strip()
    if not token_file and env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    source = "--token-file" if token_file else SA_TOKEN_PATH_ENV
    path = token_file or env.get(SA_TOKEN_PATH_ENV)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        raise UserError(f"{path}: cannot read the token file ({source}): {e.strerror}") from None
    if not text:
        raise UserError(f"{path}: the token file ({source}) is empty")
    return text


# --------------------------------------------------------------------------------------------
# Talking to the cluster


@dataclasses.dataclass(frozen=True)
class UploadedVersion:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    new_pipeline: bool


@dataclasses.dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    url: str
    experiment_id: str
    version: UploadedVersion


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    run_id: str
    state: str
    message: str  # the run's error, if any


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A recurring run as this tool shows it."""

    schedule_id: str
    name: str
    enabled: bool
    trigger: Trigger
    pipeline_id: str
    version_id: str
    experiment_id: str
    parameters: dict[str, Any]
    max_concurrency: int
    no_catchup: bool
    description: str
    service_account: str

    @classmethod
    def from_api(cls, rr: Any) -> Schedule:
        trig = rr.trigger
        cron = getattr(trig, "cron_schedule", None) if trig else None
        periodic = getattr(trig, "periodic_schedule", None) if trig else None
        timed = cron or periodic
        ref = rr.pipeline_version_reference
        return cls(
            schedule_id=rr.recurring_run_id,
            name=rr.display_name or "",
            enabled=rr.status == "ENABLED" if rr.status else rr.mode == "ENABLE",
            trigger=Trigger(
                cron=cron.cron if cron else None,
                interval_second=int(periodic.interval_second) if periodic and not cron else None,
                start_time=_rfc3339(timed.start_time) if timed else None,
                end_time=_rfc3339(timed.end_time) if timed else None,
            )
            if timed
            else Trigger(interval_second=0),
            pipeline_id=(ref.pipeline_id if ref else "") or "",
            version_id=(ref.pipeline_version_id if ref else "") or "",
            experiment_id=rr.experiment_id or "",
            parameters=dict((rr.runtime_config.parameters if rr.runtime_config else None) or {}),
            max_concurrency=int(rr.max_concurrency or 1),
            no_catchup=bool(rr.no_catchup),
            description=rr.description or "",
            service_account=rr.service_account or "",
        )


def _rfc3339(value: Any) -> str | None:
    if not value:
        return None
    if isinstance(value, dt.datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def _filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


class KfpSession:
    """One connection to a KFP API server; use as a context manager.

    Construction checks the endpoint with one quick GET of ``/apis/v2beta1/healthz`` so that an
    unreachable host, a wrong URL or a rejected token fails at once with a clear message (and
    ``kfp.Client``'s own health check, which retries 5 times 5 s apart, never has to).
    ``timeout`` bounds every network wait, in seconds.
    """

    def __init__(
        self,
        host: str,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not re.match(r"^https?://[^/]", host or ""):
            raise UserError(f"--host {host!r}: expected an http:// or https:// URL of the KFP API")
        self.host = host.rstrip("/")
        self.namespace = namespace or None
        self.token = token
        self.timeout = timeout
        self._old_timeout = socket.getdefaulttimeout()
        # urllib3 (under kfp_server_api) has no timeout unless the socket default sets one.
        socket.setdefaulttimeout(timeout)
        try:
            self._probe()
            with self._api("connecting"):
                self.client = kfp.Client(
                    host=self.host, existing_token=token, namespace=self.namespace or "kubeflow"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        socket.setdefaulttimeout(self._old_timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ui_url(self) -> str:
        return os.environ.get(UI_ENDPOINT_ENV, self.host).rstrip("/")

    # ---- errors
    def _probe(self) -> None:
        url = f"{self.host}/apis/v2beta1/healthz"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        # Like kfp.Client: no proxy unless asked for one.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise UserError(
                    f"no KFP API at {self.host} (GET {url} answered 404); --host should be the"
                    " KFP API endpoint, e.g. http://localhost:8888 after"
                    " `kubectl port-forward -n kubeflow svc/ml-pipeline 8888`"
                ) from None
            message = _server_message(e.read(), e.reason)
            raise self._status_error(e.code, message, "connecting") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"cannot reach the KFP API at {self.host}: {reason}") from None

    def _status_error(self, status: int, message: str, action: str) -> UserError:
        if status == 401:
            return UserError(
                f"authentication failed at {self.host} (HTTP 401: {message}); {AUTH_HINT}"
            )
        if status == 403:
            scope = f" in namespace {self.namespace!r}" if self.namespace else ""
            return UserError(
                f"permission denied at {self.host} while {action}{scope} (HTTP 403: {message});"
                f" check the token's identity, or {AUTH_HINT}"
            )
        return UserError(f"{action}: the KFP API answered HTTP {status}: {message}")

    @contextlib.contextmanager
    def _api(self, action: str, not_found: str | None = None) -> Iterator[None]:
        """Run kfp.Client calls for ``action``: their chatter on stdout is dropped (this tool
        prints its own results), their errors become one-line UserErrors."""
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", FutureWarning)
                yield
        except kfp_server_api.ApiException as e:
            message = _server_message(e.body, e.reason)
            if e.status == 404 and not_found:
                raise UserError(f"{not_found} (HTTP 404: {message})") from None
            if not e.status:  # raised before any HTTP answer (TLS, ...)
                raise UserError(f"cannot reach the KFP API at {self.host}: {message}") from None
            raise self._status_error(e.status, message, action) from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise UserError(
                f"cannot reach the KFP API at {self.host} while {action}: {reason}"
            ) from None

    # ---- pipelines
    def find_pipeline(self, name: str) -> str | None:
        """The ID of the pipeline called ``name``, or None."""
        with self._api(f"looking up pipeline {name!r}"):
            found = self.client.list_pipelines(
                filter=_filter("name", name), page_size=2, namespace=self.namespace
            )
        pipelines = found.pipelines or []
        if len(pipelines) > 1:
            ids = ", ".join(p.pipeline_id for p in pipelines)
            raise UserError(f"several pipelines are named {name!r} ({ids}); pass --pipeline-name")
        return pipelines[0].pipeline_id if pipelines else None

    def upload(self, package: PipelinePackage, pipeline_name: str | None = None) -> UploadedVersion:
        """Upload ``package`` as a new pipeline, or as a new version of the pipeline called
        ``pipeline_name`` (default: the package's own name) if one exists."""
        name = pipeline_name or package.name
        pipeline_id = self.find_pipeline(name)
        if pipeline_id is None:
            with self._api(f"uploading pipeline {name!r}"):
                pipeline = self.client.upload_pipeline(
                    str(package.path), pipeline_name=name, namespace=self.namespace
                )
                versions = self.client.list_pipeline_versions(
                    pipeline.pipeline_id, page_size=1, sort_by="created_at desc"
                )
            version = versions.pipeline_versions[0]
            return UploadedVersion(
                pipeline.pipeline_id, name, version.pipeline_version_id, version.name, True
            )
        return self.upload_version(package, pipeline_id, name)

    def upload_version(
        self, package: PipelinePackage, pipeline_id: str, pipeline_name: str
    ) -> UploadedVersion:
        # Unique and sortable; the digest tells which versions hold the same package.
        stamp = dt.datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        version_name = f"{pipeline_name}-{stamp}-{package.digest[:8]}"
        with self._api(
            f"uploading a version of pipeline {pipeline_name!r}",
            not_found=f"pipeline {pipeline_id} no longer exists at {self.host}",
        ):
            version = self.client.upload_pipeline_version(
                str(package.path), version_name, pipeline_id=pipeline_id
            )
        return UploadedVersion(
            pipeline_id, pipeline_name, version.pipeline_version_id, version_name, False
        )

    # ---- experiments and runs
    def experiment_id(self, name: str | None = None, experiment_id: str | None = None) -> str:
        """The ID of the experiment given by ID (must exist) or by name (created if missing)."""
        if experiment_id:
            with self._api(
                f"looking up experiment {experiment_id}",
                not_found=(
                    f"no experiment with ID {experiment_id!r} at {self.host} (--experiment-id)"
                ),
            ):
                return self.client.get_experiment(experiment_id=experiment_id).experiment_id
        name = name or "Default"
        try:
            with self._api(f"finding or creating experiment {name!r}"):
                return self.client.create_experiment(name, namespace=self.namespace).experiment_id
        except ValueError as e:  # kfp.Client: several experiments with that name
            raise UserError(f"--experiment {name!r}: {e}") from None

    def submit(
        self,
        package: PipelinePackage,
        arguments: dict[str, Any],
        experiment: str | None = None,
        experiment_id: str | None = None,
        pipeline_name: str | None = None,
        run_name: str | None = None,
    ) -> SubmittedRun:
        """Upload ``package`` (see :meth:`upload`) and start one run of that version."""
        exp_id = self.experiment_id(experiment, experiment_id)
        version = self.upload(package, pipeline_name)
        name = run_name or f"{version.pipeline_name} {dt.datetime.now(UTC):%Y-%m-%d %H:%M:%S}"
        with self._api("creating the run"):
            run = self.client.run_pipeline(
                experiment_id=exp_id,
                job_name=name,
                params=arguments,
                pipeline_id=version.pipeline_id,
                version_id=version.version_id,
            )
        return SubmittedRun(run.run_id, self.run_url(run.run_id), exp_id, version)

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/runs/details/{run_id}"

    def wait(
        self,
        run_id: str,
        timeout: float,
        poll: float = 5.0,
        on_state: Callable[[str], None] | None = None,
    ) -> RunOutcome:
        """Poll the run until it ends (SUCCEEDED, SKIPPED, FAILED, CANCELED).

        Unlike ``kfp.Client.wait_for_run_completion``, which never ends on CANCELED, this also
        stops there. UserError with exit code 124 if ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            with self._api(f"following run {run_id}", not_found=f"run {run_id} is gone"):
                run = self.client.get_run(run_id)
            state = run.state or "RUNTIME_STATE_UNSPECIFIED"
            if state != last and on_state:
                on_state(state)
            last = state
            if state in TERMINAL_STATES:
                return RunOutcome(run_id, state, (run.error.message if run.error else "") or "")
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"run {run_id} is still {state} after {timeout:g}s (--timeout);"
                    f" follow it at {self.run_url(run_id)}"
                )
            time.sleep(min(poll, left))

    # ---- schedules
    def list_schedules(self, name: str | None = None) -> list[Schedule]:
        """All recurring runs (in the namespace), or those called ``name``."""
        out, token = [], ""
        while True:
            with self._api("listing schedules"):
                page = self.client.list_recurring_runs(
                    page_token=token,
                    page_size=100,
                    namespace=self.namespace,
                    filter=_filter("display_name", name) if name else None,
                )
            out += [Schedule.from_api(rr) for rr in page.recurring_runs or []]
            token = page.next_page_token or ""
            if not token:
                return out

    def find_schedule(self, name_or_id: str) -> Schedule:
        """The one schedule with this name, else the one with this ID; UserError otherwise."""
        named = self.list_schedules(name_or_id)
        if len(named) > 1:
            ids = ", ".join(s.schedule_id for s in named)
            raise UserError(f"{len(named)} schedules are named {name_or_id!r} ({ids}); give an ID")
        if named:
            return named[0]
        try:
            with self._api(f"looking up schedule {name_or_id!r}"):
                return Schedule.from_api(self.client.get_recurring_run(name_or_id))
        except UserError:
            raise UserError(
                f"no schedule named or with ID {name_or_id!r} at {self.host};"
                " `tfpipes schedule list` shows them"
            ) from None

    def create_schedule(
        self,
        package: PipelinePackage,
        name: str,
        trigger: Trigger,
        arguments: dict[str, Any],
        max_concurrency: int = 1,
        no_catchup: bool = False,
        experiment: str | None = None,
        experiment_id: str | None = None,
        pipeline_name: str | None = None,
        description: str | None = None,
    ) -> tuple[Schedule, UploadedVersion]:
        """Upload a version of ``package`` and create a recurring run of it called ``name``.

        The arguments get SCHEDULE_TIME_MACRO for SCHEDULE_TIME_PARAMETER (see the module doc).
        UserError if a schedule of that name exists (names are how this tool finds schedules).
        """
        if not 1 <= max_concurrency <= 10:
            raise UserError(f"--max-concurrency {max_concurrency}: KFP allows 1 to 10")
        existing = self.list_schedules(name)
        if existing:
            raise UserError(
                f"a schedule named {name!r} exists ({existing[0].schedule_id});"
                f" change it with `tfpipes schedule update {name}`"
            )
        exp_id = self.experiment_id(experiment, experiment_id)
        version = self.upload(package, pipeline_name)
        schedule = self._create_recurring_run(
            name=name,
            experiment_id=exp_id,
            trigger=trigger,
            arguments=package.with_schedule_time(arguments),
            version=version,
            max_concurrency=max_concurrency,
            no_catchup=no_catchup,
            enabled=True,
            description=description,
            service_account=None,
        )
        return schedule, version

    def _create_recurring_run(
        self,
        name: str,
        experiment_id: str,
        trigger: Trigger,
        arguments: dict[str, Any],
        version: UploadedVersion,
        max_concurrency: int,
        no_catchup: bool,
        enabled: bool,
        description: str | None,
        service_account: str | None,
    ) -> Schedule:
        with self._api(f"creating schedule {name!r}"):
            rr = self.client.create_recurring_run(
                experiment_id=experiment_id,
                job_name=name,
                description=description or None,
                start_time=trigger.start_time,
                end_time=trigger.end_time,
                interval_second=trigger.interval_second,
                cron_expression=trigger.cron,
                max_concurrency=max_concurrency,
                no_catchup=no_catchup,
                params=arguments,
                pipeline_id=version.pipeline_id,
                version_id=version.version_id,
                enabled=enabled,
                service_account=service_account or None,
            )
        return Schedule.from_api(rr)

    def set_schedule_enabled(self, name_or_id: str, enabled: bool) -> Schedule:
        schedule = self.find_schedule(name_or_id)
        verb = "enabling" if enabled else "disabling"
        with self._api(f"{verb} schedule {schedule.name!r}"):
            if enabled:
                self.client.enable_recurring_run(schedule.schedule_id)
            else:
                self.client.disable_recurring_run(schedule.schedule_id)
        return dataclasses.replace(schedule, enabled=enabled)

    def delete_schedule(self, name_or_id: str) -> Schedule:
        schedule = self.find_schedule(name_or_id)
        with self._api(f"deleting schedule {schedule.name!r}"):
            self.client.delete_recurring_run(schedule.schedule_id)
        return schedule

    def update_schedule(
        self, name_or_id: str, package: PipelinePackage, pairs: list[str]
    ) -> tuple[Schedule, Schedule, UploadedVersion, list[str]]:
        """Point a schedule at a new version of its pipeline, built from ``package``.

        Keeps its name, trigger, experiment, concurrency, catch-up, enabled state and arguments;
        ``pairs`` (``k=v``) override arguments; arguments the new pipeline no longer declares
        are dropped (and returned). Returns (old, new, version, dropped).
        """
        old = self.find_schedule(name_or_id)
        if not old.pipeline_id:
            raise UserError(
                f"schedule {old.name!r} ({old.schedule_id}) holds a frozen pipeline spec, not a"
                " pipeline version; delete it and create it again with `tfpipes schedule create`"
            )
        kept = {k: v for k, v in old.parameters.items() if k in package.parameters}
        dropped = sorted(set(old.parameters) - set(kept))
        arguments = package.with_schedule_time(package.arguments(pairs, base=kept))
        with self._api(f"looking up pipeline {old.pipeline_id}"):
            pipeline_name = self.client.get_pipeline(old.pipeline_id).name
        version = self.upload_version(package, old.pipeline_id, pipeline_name)
        # Create first, delete second: a failure in between leaves two schedules, never none.
        new = self._create_recurring_run(
            name=old.name,
            experiment_id=old.experiment_id,
            trigger=old.trigger,
            arguments=arguments,
            version=version,
            max_concurrency=old.max_concurrency,
            no_catchup=old.no_catchup,
            enabled=old.enabled,
            description=old.description,
            service_account=old.service_account,
        )
        try:
            with self._api(f"deleting the old schedule {old.schedule_id}"):
                self.client.delete_recurring_run(old.schedule_id)
        except UserError as e:
            raise UserError(
                f"created schedule {new.schedule_id} on version {version.version_name} but"
                f" could not delete the old one: {e}; delete it with"
                f" `tfpipes schedule delete {old.schedule_id}`"
            ) from None
        return old, new, version, dropped


def _server_message(body: Any, fallback: Any) -> str:
    """The ``message`` of a google.rpc.Status body, else the HTTP reason."""
    try:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        message = json.loads(text).get("message") if text else None
    except (ValueError, AttributeError):
        message = text[:200] if text else None
    return " ".join(str(message or fallback or "no message").split())
