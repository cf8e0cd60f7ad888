"""
Schedules (engine.md 9.6): C{cron} and C{every} parsing, the stored schedule
document, and when a schedule is due. Pure functions of their arguments; the
Twisted service that runs due schedules is L{oxidb.server.scheduler}.

A schedule document is the C{create_schedule} request with C{name},
C{enabled} and the run state C{last_run} (C{YYYY-MM-DDTHH:MM:SSZ}),
C{last_run_epoch}, C{last_status} (C{"ok"}/C{"error"}), C{last_error} and
C{run_count}, kept in the C{_schedules} collection.

Due rules:

  - C{every: "<n>s|m|h"}: when at least the interval has passed since
    C{last_run_epoch} (in either direction, so a clock that jumped back does
    not stall a schedule); a new schedule is due at once.
  - C{cron: "M H DoM Mon DoW"}: when the current UTC minute matches (the
    day of month I{and} the day of week must both match, engine.md 9.6) and
    the last run was not in the same minute.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import attrs

from oxidb.errors import ScheduleError

#: The collection holding schedule documents.
SCHEDULES = "_schedules"

_DIGITS = re.compile(r"[0-9]+")
_UNITS = {"s": 1, "m": 60, "h": 3600}


@attrs.frozen
class CronExpr:
    """A parsed 5-field cron expression: the allowed values of each field."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches(self, seconds: float) -> bool:
        """Whether the UTC minute containing C{seconds} (since the epoch) matches."""
        when = datetime.fromtimestamp(seconds, UTC)
        return (
            when.minute in self.minutes
            and when.hour in self.hours
            and when.day in self.days
            and when.month in self.months
            and (when.weekday() + 1) % 7 in self.weekdays
        )


def _uint(text: str) -> int | None:
    return int(text) if _DIGITS.fullmatch(text) else None


def _value(text: str, low: int, high: int) -> int:
    value = _uint(text)
    if value is None:
        raise ScheduleError(f"invalid field value: {text}")
    if not low <= value <= high:
        raise ScheduleError(f"value {value} out of bounds ({low}-{high})")
    return value


def _range(text: str, low: int, high: int) -> tuple[int, int]:
    start_text, _, end_text = text.partition("-")
    start, end = _uint(start_text), _uint(end_text)
    if start is None:
        raise ScheduleError(f"invalid range start: {start_text}")
    if end is None:
        raise ScheduleError(f"invalid range end: {end_text}")
    if start < low or end > high or start > end:
        raise ScheduleError(f"range {start}-{end} out of bounds ({low}-{high})")
    return start, end


def _field(text: str, low: int, high: int) -> frozenset[int]:
    """One field: comma-separated C{*}, C{N}, C{N-M}, C{*/S}, C{N-M/S}, C{N/S}."""
    values: set[int] = set()
    for part in text.split(","):
        if "/" in part:
            base, _, step_text = part.partition("/")
            step = _uint(step_text)
            if step is None:
                raise ScheduleError(f"invalid step value: {step_text}")
            if step == 0:
                raise ScheduleError("step value must be > 0")
            if base == "*":
                start, end = low, high
            elif "-" in base:
                start, end = _range(base, low, high)
            else:
                start, end = _value(base, low, high), high
            values.update(range(start, end + 1, step))
        elif part == "*":
            values.update(range(low, high + 1))
        elif "-" in part:
            start, end = _range(part, low, high)
            values.update(range(start, end + 1))
        else:
            values.add(_value(part, low, high))
    return frozenset(values)


def parse_cron(text: str) -> CronExpr:
    """Parse C{minute hour day-of-month month day-of-week} (weekday 0 = Sunday)."""
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"cron expression must have 5 fields, got {len(fields)}")
    return CronExpr(
        _field(fields[0], 0, 59),
        _field(fields[1], 0, 23),
        _field(fields[2], 1, 31),
        _field(fields[3], 1, 12),
        _field(fields[4], 0, 6),
    )


def parse_interval(text: str) -> int:
    """C{"<positive int>s|m|h"} in seconds."""
    text = text.strip()
    if not text:
        raise ScheduleError("empty interval string")
    unit = _UNITS.get(text[-1])
    if unit is None:
        raise ScheduleError(f"interval must end with 's', 'm', or 'h': {text}")
    number = _uint(text[:-1])
    if number is None:
        raise ScheduleError(f"invalid interval number: {text[:-1]}")
    if number == 0:
        raise ScheduleError("interval must be > 0")
    return number * unit


def _string(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) else None


def new_schedule(request: dict[str, Any]) -> dict[str, Any]:
    """
    The schedule document for a C{create_schedule} request (its C{name} was
    checked by the caller): exactly one of C{cron}/C{every}, valid; a
    C{procedure} name; C{enabled} (default true) and a fresh run state. Whether
    the procedure exists is checked when the document is stored.
    """
    cron, every = _string(request, "cron"), _string(request, "every")
    if cron is None and every is None:
        raise ScheduleError("schedule must have 'cron' or 'every' field")
    if cron is not None and every is not None:
        raise ScheduleError("schedule cannot have both 'cron' and 'every'")
    if cron is not None:
        parse_cron(cron)
    else:
        assert every is not None
        parse_interval(every)
    if _string(request, "procedure") is None:
        raise ScheduleError("missing 'procedure' field")
    enabled = request.get("enabled")
    return {
        **request,
        "enabled": enabled if isinstance(enabled, bool) else True,
        "last_run": None,
        "last_run_epoch": 0,
        "last_status": None,
        "last_error": None,
        "run_count": 0,
    }


def is_due(schedule: dict[str, Any], now: float) -> bool:
    """Whether an (enabled) schedule should run at C{now} (seconds since the epoch)."""
    if schedule.get("enabled") is False:
        return False
    stored = schedule.get("last_run_epoch")
    last = stored if isinstance(stored, (int, float)) and not isinstance(stored, bool) else 0
    cron, every = _string(schedule, "cron"), _string(schedule, "every")
    try:
        if cron is not None:
            return parse_cron(cron).matches(now) and last // 60 != now // 60
        if every is not None:
            return abs(now - last) >= parse_interval(every)
    except ScheduleError:
        return False
    return False


def format_timestamp(seconds: float) -> str:
    """C{YYYY-MM-DDTHH:MM:SSZ} (UTC, whole seconds)."""
    return datetime.fromtimestamp(int(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_record(now: float, error: str | None) -> dict[str, Any]:
    """The update recording a run that started at C{now} and failed with C{error} (or succeeded)."""
    return {
        "$set": {
            "last_run": format_timestamp(now),
            "last_run_epoch": int(now),
            "last_status": "ok" if error is None else "error",
            "last_error": error,
        },
        "$inc": {"run_count": 1},
    }
