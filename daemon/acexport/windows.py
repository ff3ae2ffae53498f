"""Window arithmetic: aligned export periods in a time zone, and AC's date format.

An ``ExportWindow`` is half-open, ``[start, end)``, in the workspace's zone. AC
takes inclusive bounds in UTC with milliseconds, so ``toDate`` is ``end - 1 ms``:
consecutive windows neither overlap nor leave a gap, DST days included. A time
series is asked for ``through_end`` (``toDate`` = ``end``) and split locally by
each record's timestamp (payload/split.py): AC's timestamps carry microseconds, so
``end - 1 ms`` would lose a window's last millisecond.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import pairwise
from typing import Protocol, TypeVar
from zoneinfo import ZoneInfo

ONE_MS = timedelta(milliseconds=1)


def iso_ms(when: datetime) -> str:
    """``2022-01-01T00:00:00.000Z``: UTC, milliseconds, as AC's docs write dates."""
    if when.tzinfo is UTC:
        return _utc_iso_ms(when)
    # Not cached: a zone's wall time in its repeated hour names two instants (fold 0
    # and 1) that compare and hash alike, and the cache answered one for the other.
    return _format_ms(when)


@functools.lru_cache(maxsize=8192)  # window edges: a few days', named thousands of times
def _utc_iso_ms(when: datetime) -> str:
    return _format_ms(when)


def now_iso_ms() -> str:
    """``iso_ms`` of now (never asked for twice: not cached)."""
    return _format_ms(datetime.now(UTC))


def _format_ms(when: datetime) -> str:
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True, order=True)
class ExportWindow:
    """One export's period: ``start`` inclusive, ``end`` exclusive, held in UTC.

    Python compares and subtracts datetimes that share a zone by wall clock, which
    is wrong across DST changes; so the bounds are kept in UTC, and ``zone`` (not
    compared) only says how to show them (``local_start``, ``local_end``).
    """

    start: datetime
    end: datetime
    zone: tzinfo = field(default=UTC, compare=False)
    through_end: bool = field(default=False, compare=False)  # toDate = end, not end - 1 ms

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must carry a time zone")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} is not after its start {self.start}")

    @property
    def local_start(self) -> datetime:
        return self.start.astimezone(self.zone)

    @property
    def local_end(self) -> datetime:
        return self.end.astimezone(self.zone)

    @functools.cached_property
    def from_date(self) -> str:
        return iso_ms(self.start)

    @property
    def last_instant(self) -> datetime:
        """AC's inclusive ``toDate`` as an instant."""
        return self.end if self.through_end else self.end - ONE_MS

    @functools.cached_property
    def to_date(self) -> str:
        return iso_ms(self.last_instant)

    def __str__(self) -> str:
        return f"{self.local_start.isoformat()}/{self.local_end.isoformat()}"

    @property
    def label(self) -> str:
        """The window as people name it, in its zone as its file name is: ``2026-11-29``
        for a window of whole days, ``2026-11-29 14:00`` otherwise."""
        start = self.local_start
        whole_days = start.hour == start.minute == 0 and self.end - self.start >= timedelta(days=1)
        return f"{start:%Y-%m-%d}" if whole_days else f"{start:%Y-%m-%d %H:%M}"


def parse_bound(text: str, zone: ZoneInfo, *, end: bool) -> datetime:
    """A CLI date or datetime as an aware datetime in ``zone``.

    A bare date means the whole day: as a start, its midnight; as an end, the
    next midnight (so ``--from 2022-01-01 --to 2022-01-01`` is one full day).
    A naive datetime is read in ``zone``; a datetime end is exclusive.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            if end:
                day += timedelta(days=1)
            return datetime.combine(day, time(), zone)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date or datetime (e.g. 2022-01-01 or "
            "2022-01-01T06:00:00Z)"
        ) from None
    return when.replace(tzinfo=zone) if when.tzinfo is None else when.astimezone(zone)


DAY = timedelta(days=1)


def check_window_length(length: timedelta) -> timedelta:
    """Under a day it must divide a day; from a day on it must be whole days."""
    if length <= timedelta(0):
        raise ValueError("must be positive")
    if length < DAY and DAY % length:
        raise ValueError(f"{length} does not divide a day evenly (use e.g. 1h, 6h, 15m)")
    if length >= DAY and length % DAY:
        raise ValueError(f"{length} is over a day but not whole days (use e.g. 1d, 7d)")
    return length


def _boundaries_of(day: date, zone: ZoneInfo, length: timedelta) -> Iterator[datetime]:
    """Window starts on a local calendar day, as UTC instants."""
    if length >= DAY:
        if day.toordinal() % (length // DAY) == 0:
            yield datetime.combine(day, time(), zone).astimezone(UTC)
        return
    midnight = datetime.combine(day, time())
    for k in range(DAY // length):
        # Wall-clock boundaries: on DST days a boundary inside the skipped hour maps
        # onto the next one (an empty window, dropped), a repeated hour makes one
        # longer window. The windows stay contiguous either way.
        yield (midnight + k * length).replace(tzinfo=zone).astimezone(UTC)


def aligned_windows(
    zone: ZoneInfo, length: timedelta, start: datetime, end: datetime
) -> list[ExportWindow]:
    """Every aligned window that lies wholly inside ``[start, end)``, oldest first."""
    first_day = start.astimezone(zone).date() - timedelta(days=length // DAY + 1)
    last_day = end.astimezone(zone).date() + timedelta(days=1)
    instants: list[datetime] = []
    day = first_day
    while day <= last_day:
        instants.extend(_boundaries_of(day, zone, length))
        day += timedelta(days=1)
    instants = sorted(set(instants))
    windows = []
    for left, right in pairwise(instants):
        if left >= start and right <= end and right > left:
            windows.append(ExportWindow(left, right, zone))
    return windows


class _Period(Protocol):
    @property
    def start(self) -> datetime: ...

    @property
    def end(self) -> datetime: ...


P = TypeVar("P", bound=_Period)


def one_request_each(periods: Sequence[P], max_span: timedelta, max_windows: int) -> list[list[P]]:
    """Windows (oldest first) grouped as coalesced AC requests cover them: each group
    consecutive without a gap, at most ``max_windows`` long and spanning at most
    ``max_span`` (a window alone is always a request of its own)."""
    groups: list[list[P]] = []
    for period in periods:
        group = groups[-1] if groups else None
        if (
            group is not None
            and period.start == group[-1].end
            and len(group) < max_windows
            and period.end - group[0].start <= max_span
        ):
            group.append(period)
        else:
            groups.append([period])
    return groups
