"""AC's data retention: the earliest data a workspace's exports may ask for.

AC refuses a range that starts before the workspace's retention (13 months in
its tests) with ``The requested data is outside of your data retention period
of 13 months. ...`` (design section 1.1), as a 400 with that message or hidden
in a 500, by controller version. acexport never asks for such a window: it is
recorded ``beyond_retention``, a final state. When AC refuses all the same (the
configured retention is longer than the workspace's), the months in its message
are learned and used from then on, if they can be true: a plausible number of
months, and the refused window older than that. A learned value holds while the
configured retention it was learned under stays the same.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

DEFAULT_MONTHS = 13
_MESSAGE = re.compile(r"outside of your data retention period of (\d{1,4}) months?", re.I)


def months_in(text: str) -> int | None:
    """The retention AC's refusal names, or None if ``text`` is not that refusal."""
    match = _MESSAGE.search(text)
    return int(match.group(1)) if match else None


def months_before(when: datetime, months: int) -> datetime:
    """The same wall-clock time ``months`` calendar months earlier (the 31st of a
    shorter month becomes its last day)."""
    index = when.year * 12 + when.month - 1 - months
    year, month = divmod(index, 12)
    month += 1
    following = datetime(year + (month == 12), month % 12 + 1, 1)
    last_day = (following - timedelta(days=1)).day
    return when.replace(year=year, month=month, day=min(when.day, last_day))


def retention_start(now: datetime, months: int, zone: ZoneInfo) -> datetime:
    """The earliest start of a window acexport asks for: the local midnight after
    ``now`` minus ``months``. The day's margin keeps a request that waits in a lane,
    or a clock a little ahead of AC's, from crossing the edge."""
    edge = months_before(now.astimezone(zone), months)
    return datetime.combine(edge.date() + timedelta(days=1), time(), zone)


def beyond_reason(earliest: datetime) -> str:
    """The ledger's reason for a window before ``earliest`` (``retention_start``)."""
    return f"before AC's data retention (data from {earliest.date().isoformat()} on)"


# AC's retention is counted in months; no workspace keeps less than one or more than
# ten years. A refusal naming anything else ("0 months") is no retention answer.
PLAUSIBLE_MONTHS = range(1, 121)
# How much younger than the named retention a refused window may start: the zone of
# the workspace, AC's own edge (a day's margin in retention_start) and clock skew.
_REFUSAL_SLACK = timedelta(days=3)


def refusal_fits(months: int, window_start: datetime, now: datetime) -> bool:
    """Whether AC refusing a window that starts at ``window_start`` "for ``months``
    months" can be true: a plausible retention the window lies before. A 4-day-old
    window refused for 13 months is not a retention answer (an ordinary rejection)."""
    if months not in PLAUSIBLE_MONTHS:
        return False
    return window_start < months_before(now, months) + _REFUSAL_SLACK


@dataclass(frozen=True)
class LearnedRetention:
    """What AC's refusal taught about a workspace's retention, and under what."""

    months: int
    configured: int | None  # the configured retention then (None: learned before 0.x)
    reason: str = ""  # AC's words, and the window it refused
    learned_at: str = ""  # ISO 8601, UTC

    def applies_to(self, configured: int) -> bool:
        """A plausible value learned under the same configured retention."""
        same = self.configured is None or self.configured == configured
        return same and self.months in PLAUSIBLE_MONTHS

    def to_text(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> LearnedRetention | None:
        """The stored form; a bare number is how older versions stored it."""
        if text.strip().isdigit():
            return cls(int(text), None)
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (ValueError, TypeError):
            return None  # unreadable: as if nothing was learned


def describe_retention(configured: int, learned: LearnedRetention | None) -> str:
    """The retention in force and why, for ``status`` and ``check-config``."""
    months = effective_months(configured, learned)
    if learned is None:
        return f"{months} months (configured)"
    if learned.months not in PLAUSIBLE_MONTHS:
        why = f"AC once named {learned.months} months: not plausible, ignored"
    elif not learned.applies_to(configured):
        why = (
            f"AC named {learned.months} months while {learned.configured} were configured: "
            "ignored since the configured retention changed"
        )
    else:
        why = f"learned from AC {learned.learned_at or 'earlier'}: {learned.reason or '-'}"
    return f"{months} months ({why})"


def effective_months(configured: int, learned: LearnedRetention | None) -> int:
    """The shorter of the configured retention and the one AC's refusal named, if that
    still applies (the same configured retention, a plausible value)."""
    if learned is None or not learned.applies_to(configured):
        return configured
    return min(configured, learned.months)
