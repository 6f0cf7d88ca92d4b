"""One connection to a Kubeflow Pipelines API server: upload, run, follow, schedule.

A thin layer over ``kfp.Client`` that does what a user otherwise scripts by hand, and turns
every way it can go wrong into one line that says what to change:

- :class:`KfpSession` uploads a package (:mod:`tfpipes_pipelines.package`) as a pipeline, or
  as a new version of the pipeline of that name; runs that version in an experiment (created if
  missing); follows a run to its end; and creates, lists, enables, disables, deletes and
  re-points recurring runs ("schedules", triggers from :mod:`tfpipes_pipelines.schedule_syntax`).
  Schedules always refer to an uploaded pipeline, never an inline spec (KFP freezes that into
  the recurring run, and it could never be moved): to one *version* of it, or, with
  ``follow_latest``, to the pipeline alone, so that every run uses its latest version at the
  time (the API server's "pipeline id and no version id", KFP >= 2.5). ``kfp.Client`` refuses
  that reference, so recurring runs are created through the session's own REST client
  (kfp_server_api, the client kfp.Client wraps: the same token, redirect and timeout rules).
- KFP has no call to change a recurring run, so :meth:`KfpSession.update_schedule` creates the
  replacement first and deletes the old one second: a failure in between leaves two schedules
  (and says so), never none.
- Credentials and transport follow :mod:`tfpipes_pipelines.kfp_transport`: the token goes
  only to the host named, never on a redirect, never in the clear to another machine unless
  asked; every request is bounded by the session's ``timeout``, given to the HTTP layer of
  this session's client alone (the process-wide socket default is never touched).

Errors the user can fix (a wrong URL, a redirect, 401/403, unknown experiment or schedule, a
4xx from the server) raise :class:`tfpipes.errors.UserError`; a server that cannot be reached
(refused, timed out, reset) raises :class:`tfpipes.errors.RetryableError`: the environment
failed, running again may succeed; a run wait that runs out raises
:class:`tfpipes.errors.WaitTimeout`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import kfp
import kfp_server_api
import urllib3
from tfpipes_pipelines import kfp_transport
from tfpipes_pipelines.kfp_records import RunOutcome, Schedule, SubmittedRun, UploadedVersion
from tfpipes_pipelines.kfp_transport import AUTH_HINT, RedirectRefused
from tfpipes_pipelines.package import PipelinePackage
from tfpipes_pipelines.schedule_syntax import UTC, Trigger

from tfpipes.errors import RetryableError, UserError, WaitTimeout

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger(__name__)

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"

TERMINAL_STATES = frozenset({"SUCCEEDED", "SKIPPED", "FAILED", "CANCELED"})


def _filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "stringValue": value}]})


class _Client(kfp.Client):
    """kfp.Client whose connections refuse redirects from the start: its constructor already
    makes a request (a health check), before any handle on its HTTP client exists."""

    def _load_config(self, *args: Any, **kwargs: Any) -> Any:
        return kfp_transport.no_redirects(super()._load_config(*args, **kwargs))


class KfpSession:
    """One connection to a KFP API server; use as a context manager.

    Construction checks the endpoint with one quick GET of ``/apis/v2beta1/healthz`` so that an
    unreachable host, a wrong URL or a rejected token fails at once with a clear message (and
    ``kfp.Client``'s own health check, which retries 5 times 5 s apart, never has to).
    ``timeout`` bounds every network wait, in seconds. ``token`` (checked by
    :func:`kfp_transport.resolve_token`) is sent to ``host`` only, and over plain http only to
    loopback unless ``allow_insecure_http`` (UserError otherwise, before anything is sent).
    """

    def __init__(
        self,
        host: str,
        token: str | None = None,
        namespace: str | None = None,
        timeout: float = 30.0,
        allow_insecure_http: bool = False,
    ) -> None:
        if not re.match(r"^https?://[^/]", host or ""):
            raise UserError(f"--host {host!r}: expected an http:// or https:// URL of the KFP API")
        self.host = host.rstrip("/")
        kfp_transport.check_transport(self.host, token, allow_insecure_http)
        self.namespace = namespace or None
        self.token = token
        self.timeout = timeout
        self._probe()
        with self._api("connecting"):
            self.client = _Client(
                host=self.host, existing_token=token, namespace=self.namespace or "kubeflow"
            )
        # kfp.Client sends every request without a timeout; all its APIs share this one
        # kfp_server_api client (kfp offers no public handle on it).
        kfp_transport.bound_requests(self.client._run_api.api_client, timeout)

    def close(self) -> None:
        """Nothing to release (kept so the session is a context manager)."""

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
        try:
            with kfp_transport.probe_opener().open(request, timeout=self.timeout) as response:
                response.read()
        except RedirectRefused as e:
            raise UserError(f"--host {self.host}: GET {url} answered {e}") from None
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
            raise _unreachable(self.host, getattr(e, "reason", e)) from None

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
        except RedirectRefused as e:
            raise UserError(
                f"--host {self.host}: while {action}, the KFP API answered {e}"
            ) from None
        except kfp_server_api.ApiException as e:
            message = _server_message(e.body, e.reason)
            if e.status == 404 and not_found:
                raise UserError(f"{not_found} (HTTP 404: {message})") from None
            if not e.status:  # raised before any HTTP answer (TLS, ...)
                raise UserError(f"cannot reach the KFP API at {self.host}: {message}") from None
            raise self._status_error(e.status, message, action) from None
        except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise _unreachable(self.host, reason, f" while {action}") from None

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
        stops there. WaitTimeout (exit 124) if ``timeout`` seconds pass first.
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
        follow_latest: bool = False,
    ) -> tuple[Schedule, UploadedVersion]:
        """Upload a version of ``package`` and create a recurring run of it called ``name``;
        with ``follow_latest``, a recurring run of the pipeline that always runs its latest
        version (the one uploaded here until a newer one is).

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
            follow_latest=follow_latest,
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
        follow_latest: bool = False,
    ) -> Schedule:
        # The body kfp.Client.create_recurring_run sends, but built here: kfp.Client (2.17)
        # refuses a pipeline reference without a version, which follow_latest needs.
        api = kfp_server_api
        times = {"start_time": trigger.start_time, "end_time": trigger.end_time}
        body = api.V2beta1RecurringRun(
            display_name=name,
            description=description or None,
            experiment_id=experiment_id,
            mode=api.RecurringRunMode.ENABLE if enabled else api.RecurringRunMode.DISABLE,
            pipeline_version_reference=api.V2beta1PipelineVersionReference(
                pipeline_id=version.pipeline_id,
                pipeline_version_id=None if follow_latest else version.version_id,
            ),
            runtime_config=api.V2beta1RuntimeConfig(parameters=arguments),
            trigger=api.V2beta1Trigger(
                cron_schedule=api.V2beta1CronSchedule(cron=trigger.cron, **times)
            )
            if trigger.cron is not None
            else api.V2beta1Trigger(
                periodic_schedule=api.V2beta1PeriodicSchedule(
                    interval_second=trigger.interval_second, **times
                )
            ),
            max_concurrency=max_concurrency,
            no_catchup=no_catchup,
            service_account=service_account or None,
        )
        with self._api(f"creating schedule {name!r}"):
            rr = self.client._recurring_run_api.recurring_run_service_create_recurring_run(
                recurring_run=body
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

        Keeps its name, trigger, experiment, concurrency, catch-up, enabled state, arguments
        and whether it follows the latest version;
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
            follow_latest=old.follows_latest,
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


def _unreachable(host: str, reason: Any, during: str = "") -> UserError | RetryableError:
    """The error for a request that got no HTTP answer: a TLS failure (a wrong certificate, a
    plain-http server behind https://) is the user's to fix; anything else (refused, timed
    out, reset, no route) is the environment failing, and retryable."""
    text = " ".join(str(reason).split())
    if isinstance(reason, ssl.SSLError) or "SSL" in type(reason).__name__:
        return UserError(f"TLS with the KFP API at {host} failed{during}: {text}")
    return RetryableError(f"cannot reach the KFP API at {host}{during}: {text}")


def _server_message(body: Any, fallback: Any) -> str:
    """The ``message`` of a google.rpc.Status body, else the HTTP reason."""
    try:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
        message = json.loads(text).get("message") if text else None
    except (ValueError, AttributeError):
        message = text[:200] if text else None
    return " ".join(str(message or fallback or "no message").split())
