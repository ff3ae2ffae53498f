"""A job's ``schedule`` as an APScheduler 3 trigger: when to look for due windows.

Only the trigger arithmetic is used (``get_next_fire_time``); the daemon runs
its own loop, so a missed look is never replayed: the planner's catch-up
covers whatever was missed while the daemon was down.
"""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_EVERY = re.compile(r"\s*every\s+(.+?)\s*", re.IGNORECASE)


class Trigger(Protocol):
    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None: ...


def parse_schedule(text: str, zone: ZoneInfo, every: Any = None) -> Trigger:
    """``"30 2 * * *"`` (5-field cron) or ``"every 6h"``, in ``zone``.

    ``every`` parses the duration after "every" (config's parser, passed in so
    this module stays below config). Raises ValueError with what is wrong.
    """
    match = _EVERY.fullmatch(text)
    if match:
        if every is None:
            raise ValueError("no duration parser given")
        interval: timedelta = every(match.group(1))
        if interval < timedelta(milliseconds=100):
            raise ValueError(f"interval {match.group(1)!r} is shorter than 100ms")
        # Anchored at a fixed local midnight so looks land on stable times of day.
        anchor = datetime(2000, 1, 1, tzinfo=zone)
        trigger: Trigger = IntervalTrigger(seconds=interval.total_seconds(), start_date=anchor)
        return trigger
    text = _NICKNAMES.get(text.strip().lower(), text)
    try:
        return CronTrigger.from_crontab(text, timezone=zone)  # type: ignore[no-any-return]
    except ValueError as exc:
        problem = _cron_problem(text, exc)
        raise ValueError(f"not a 5-field cron or 'every <duration>': {problem}") from None


# cron's nicknames, as crontab(5) defines them.
_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_CRON_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_CRON_NAMES = ("minute", "hour", "day of month", "month", "day of week")


def _cron_problem(text: str, exc: ValueError) -> str:
    """APScheduler's complaint, naming the field it is about (``hour '25': ...``)."""
    fields = text.split()
    if len(fields) != len(_CRON_FIELDS):
        return f"{len(fields)} fields, a cron has 5 (minute hour day month weekday) or @daily"
    for field, name, value in zip(_CRON_FIELDS, _CRON_NAMES, fields, strict=True):
        try:
            CronTrigger(**{field: value})
        except ValueError as problem:
            return f"the {name} field {value!r}: {problem}"
    return str(exc)


def next_looks(trigger: Trigger, now: datetime, count: int) -> list[datetime]:
    looks: list[datetime] = []
    previous = None
    moment = now
    while len(looks) < count:
        fire = trigger.get_next_fire_time(previous, moment)
        if fire is None:
            break
        looks.append(fire)
        previous = fire
        moment = fire + timedelta(microseconds=1)
    return looks


def schedule_period(trigger: Trigger, now: datetime) -> timedelta | None:
    """The shortest gap between the next few looks: how often the schedule looks
    (for a cron of irregular gaps, its most frequent rhythm). None if it never fires."""
    looks = next_looks(trigger, now, 8)
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    return min(gaps) if gaps else None
