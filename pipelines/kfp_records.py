"""What the KFP session returns: uploaded versions, submitted runs, their outcomes, schedules.

Plain records built from the KFP API's objects (:mod:`tfpipes_pipelines.kfp_session` makes the
calls).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from tfpipes_pipelines.schedule_syntax import UTC, Trigger


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

    @property
    def follows_latest(self) -> bool:
        """Whether each run uses the pipeline's latest version (a pipeline and no version)."""
        return bool(self.pipeline_id) and not self.version_id

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
