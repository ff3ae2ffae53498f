"""AC's data retention: the earliest data a workspace's exports may ask for.

AC refuses a range that starts before the workspace's retention (13 months in
its tests) with ``The requested data is outside of your data retention period
of 13 months. ...`` (design section 1.1), as a 400 with that message or hidden
in a 500, by controller version. acexport never asks for such a window: it is
recorded ``beyond_retention``, a final state. When AC refuses all the same (the
configured retention is longer than the workspace's), the months in its message
are learned and used from then on.
"""

from __future__ import annotations

import re
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


def effective_months(configured: int, learned: int | None) -> int:
    """The shorter of the configured retention and the one AC's refusal named."""
    return configured if learned is None else min(configured, learned)
