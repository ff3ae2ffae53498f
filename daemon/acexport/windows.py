"""Window arithmetic: aligned export periods in a time zone, and AC's date format.

An ``ExportWindow`` is half-open, ``[start, end)``, in the workspace's zone. AC
takes inclusive bounds in UTC with milliseconds, so ``toDate`` is ``end - 1 ms``:
consecutive windows neither overlap nor leave a gap, DST days included.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

ONE_MS = timedelta(milliseconds=1)


def iso_ms(when: datetime) -> str:
    """``2022-01-01T00:00:00.000Z``: UTC, milliseconds, as AC's docs write dates."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True, order=True)
class ExportWindow:
    """One export's period: ``start`` inclusive, ``end`` exclusive, both zone-aware."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must carry a time zone")
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} is not after its start {self.start}")

    @property
    def from_date(self) -> str:
        return iso_ms(self.start)

    @property
    def to_date(self) -> str:
        return iso_ms(self.end - ONE_MS)

    def __str__(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


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
