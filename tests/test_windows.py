"""Window bounds: AC's millisecond UTC dates, DST days, CLI date parsing."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from acexport.windows import ExportWindow, iso_ms, parse_bound

BERLIN = ZoneInfo("Europe/Berlin")


def test_dates_sent_to_ac_are_utc_with_milliseconds() -> None:
    """fromDate is the start, toDate the end minus 1 ms, both UTC with Z."""
    window = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
    assert window.from_date == "2022-01-01T00:00:00.000Z"
    assert window.to_date == "2022-01-01T23:59:59.999Z"


@pytest.mark.parametrize("first_fold", [0, 1])
def test_the_repeated_hour_of_a_dst_change_names_two_instants(first_fold: int) -> None:
    """1:30 in New York on 2026-11-01 happens twice (fold 0 and 1): each is its own
    instant to AC, whichever was named first (the two compare and hash alike)."""
    ny = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=ny, fold=first_fold)
    second = first.replace(fold=1 - first_fold)
    named = {first.fold: iso_ms(first), second.fold: iso_ms(second)}
    assert named == {0: "2026-11-01T05:30:00.000Z", 1: "2026-11-01T06:30:00.000Z"}
    assert iso_ms(second.astimezone(UTC)) == named[second.fold]


def test_a_dst_day_in_berlin_is_23_hours_and_contiguous() -> None:
    """The spring-forward day is one 23-hour window adjoining its neighbours."""
    day = ExportWindow(
        parse_bound("2022-03-27", BERLIN, end=False), parse_bound("2022-03-27", BERLIN, end=True)
    )
    # Same-zone subtraction in Python is wall-clock (24 h); elapsed time needs UTC.
    assert (day.end.astimezone(UTC) - day.start.astimezone(UTC)).total_seconds() == 23 * 3600
    assert day.from_date == "2022-03-26T23:00:00.000Z"
    assert day.to_date == "2022-03-27T21:59:59.999Z"
    next_day = ExportWindow(
        parse_bound("2022-03-28", BERLIN, end=False), parse_bound("2022-03-28", BERLIN, end=True)
    )
    assert next_day.from_date == "2022-03-27T22:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "end", "expected"),
    [
        ("2022-01-01", False, datetime(2022, 1, 1, tzinfo=BERLIN)),
        ("2022-01-01", True, datetime(2022, 1, 2, tzinfo=BERLIN)),
        ("2022-01-01T06:00:00", True, datetime(2022, 1, 1, 6, tzinfo=BERLIN)),
        ("2022-01-01T06:00:00Z", False, datetime(2022, 1, 1, 7, tzinfo=BERLIN)),
    ],
)
def test_cli_bounds(text: str, end: bool, expected: datetime) -> None:
    """A bare date is a whole day; naive datetimes are in the workspace zone."""
    assert parse_bound(text, BERLIN, end=end) == expected


@pytest.mark.parametrize("text", ["yesterday", "2022-13-01", "01/02/2022"])
def test_bad_cli_bounds(text: str) -> None:
    """Unparseable bounds name the accepted forms."""
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_bound(text, BERLIN, end=False)


def test_empty_or_reversed_windows_are_rejected() -> None:
    """A window must end after it starts."""
    start = datetime(2022, 1, 2, tzinfo=UTC)
    with pytest.raises(ValueError, match="not after"):
        ExportWindow(start, start)
