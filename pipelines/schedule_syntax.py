"""Schedule syntax: cron expressions as KFP's scheduler reads them, intervals, times, triggers.

- Recurring runs are parsed by the server with ``robfig/cron`` v1, whose first field is seconds;
  a 5-field cron would be silently read as seconds-first and run every hour. :func:`to_kfp_cron`
  accepts the usual 5 fields and adds the seconds.
- :func:`parse_interval` / :func:`format_interval`: ``6h``, ``1h30m`` ↔ seconds (``--every``).
- :func:`parse_time`: ISO 8601 → the RFC 3339 UTC string KFP takes (``--start-time``).
- If the pipeline declares a string parameter ``model_version`` (``SCHEDULE_TIME_PARAMETER``), a
  schedule passes it KFP's ``[[ScheduledTime]]`` macro, which the scheduler replaces in each run
  with that run's scheduled time as ``YYYYMMDDhhmmss`` (UTC): a monotonic, integer model version.

Pure functions: no network, no kfp. Errors are one-line
:class:`tfpipes.errors.UserError` naming the flag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from tfpipes.errors import UserError

UTC = dt.timezone.utc  # noqa: UP017 (datetime.UTC is 3.11+; setup.py allows 3.10)

#: A schedule passes SCHEDULE_TIME_MACRO to this parameter when the pipeline declares it (str).
SCHEDULE_TIME_PARAMETER = "model_version"
#: Replaced by KFP's scheduler in each recurring run with its scheduled time, YYYYMMDDhhmmss UTC.
SCHEDULE_TIME_MACRO = "[[ScheduledTime]]"

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
