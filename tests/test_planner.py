"""Windows and planning: contiguity, alignment, DST, catch-up, lag, start (hypothesis)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acexport.config import JobSettings, Settings
from acexport.errors import StoreUnavailable
from acexport.ledger_schema import ExportRecord, LedgerState
from acexport.output.layout import OutputLayout
from acexport.output.manifest import Manifest
from acexport.output.stored import StoredWindow
from acexport.planner import Planner, due_windows
from acexport.windows import ExportWindow, aligned_windows, check_window_length

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]
LENGTHS = [
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=7),
]

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    length=st.sampled_from(LENGTHS),
    start=instants,
    span_hours=st.integers(min_value=0, max_value=24 * 20),
)
@pytest.mark.slow
def test_windows_are_contiguous_aligned_and_inside(
    zone: str, length: timedelta, start: datetime, span_hours: int
) -> None:
    """Windows never overlap or leave gaps, start on local boundaries and stay in range."""
    tz = ZoneInfo(zone)
    end = start + timedelta(hours=span_hours)
    windows = aligned_windows(tz, length, start, end)
    for left, right in itertools.pairwise(windows):
        assert left.end == right.start  # contiguous: no gap, no overlap
        # AC's inclusive bounds: toDate is exactly 1 ms before the next fromDate.
        to_date = datetime.fromisoformat(left.to_date)
        assert datetime.fromisoformat(right.from_date) - to_date == timedelta(milliseconds=1)
    for window in windows:
        assert start <= window.start < window.end <= end
        local = window.local_start
        if length >= timedelta(days=1):
            assert (local.hour, local.minute) == (0, 0)
            assert local.date().toordinal() % (length // timedelta(days=1)) == 0
            continue
        steady = {
            (window.start - length).astimezone(tz).utcoffset(),
            local.utcoffset(),
            window.local_end.utcoffset(),
        }
        if len(steady) == 1:  # away from DST changes, boundaries sit exactly on the grid
            minutes = local.hour * 60 + local.minute
            assert minutes % (length // timedelta(minutes=1)) == 0
            assert window.end - window.start == length


@settings(max_examples=60, deadline=None)
@given(zone=st.sampled_from(ZONES), length=st.sampled_from(LENGTHS), start=instants)
def test_planning_is_idempotent_and_split_invariant(
    zone: str, length: timedelta, start: datetime
) -> None:
    """Planning a range twice, or in two halves, gives the same windows."""
    tz = ZoneInfo(zone)
    end = start + timedelta(days=10)
    middle = start + timedelta(days=5)
    whole = aligned_windows(tz, length, start, end)
    assert whole == aligned_windows(tz, length, start, end)
    halves = aligned_windows(tz, length, start, middle) + aligned_windows(tz, length, middle, end)
    assert set(halves) <= set(whole)
    # Only the window straddling the cut can be missing from the halves.
    assert len(whole) - len(halves) <= 1


def test_berlin_dst_days_are_one_window_each() -> None:
    """A 23-hour and a 25-hour Berlin day are each a single daily window."""
    tz = ZoneInfo("Europe/Berlin")
    windows = aligned_windows(
        tz, timedelta(days=1), datetime(2022, 3, 26, tzinfo=UTC), datetime(2022, 11, 1, tzinfo=UTC)
    )
    hours = {
        w.local_start.date().isoformat(): (w.end - w.start) / timedelta(hours=1) for w in windows
    }
    assert hours["2022-03-27"] == 23
    assert hours["2022-10-30"] == 25
    assert hours["2022-06-01"] == 24


def test_hourly_windows_across_spring_forward_skip_the_missing_hour() -> None:
    """Hourly Berlin windows on the spring-forward night stay contiguous in UTC."""
    tz = ZoneInfo("Europe/Berlin")
    windows = aligned_windows(
        tz,
        timedelta(hours=1),
        datetime(2022, 3, 27, 0, tzinfo=UTC),
        datetime(2022, 3, 27, 3, tzinfo=UTC),
    )
    assert [w.from_date for w in windows] == [
        "2022-03-27T00:00:00.000Z",
        "2022-03-27T01:00:00.000Z",
        "2022-03-27T02:00:00.000Z",
    ]
    assert [w.to_date for w in windows] == [
        "2022-03-27T00:59:59.999Z",
        "2022-03-27T01:59:59.999Z",
        "2022-03-27T02:59:59.999Z",
    ]


@pytest.mark.parametrize("text", ["7h", "7m", "36h", "0s"])
def test_window_lengths_must_tile_days(text: str) -> None:
    """Under a day a window divides a day; over a day it is whole days."""
    from acexport.config import parse_duration

    with pytest.raises(ValueError, match=r"day|positive"):
        check_window_length(parse_duration(text))


def job(**kwargs: object) -> JobSettings:
    return JobSettings(name="nightly", workspace="acme", **kwargs)  # type: ignore[arg-type]


def test_due_windows_honour_catch_up_and_lag() -> None:
    """catch_up 7d gives the last seven complete days; lag holds back a day not yet aged."""
    tz = ZoneInfo("Europe/Berlin")
    now = datetime(2022, 6, 10, 1, 30, tzinfo=tz)  # 01:30: yesterday ended 1.5 h ago
    windows = due_windows(job(lag="2h", catch_up="7d"), tz, now)
    assert [w.local_start.day for w in windows] == [3, 4, 5, 6, 7, 8]  # the 9th is too young
    later = due_windows(job(lag="2h", catch_up="7d"), tz, now + timedelta(hours=1))
    assert [w.local_start.day for w in later] == [3, 4, 5, 6, 7, 8, 9]


def test_due_windows_never_start_before_start() -> None:
    """A job's start bounds planning as well as catch_up."""
    tz = ZoneInfo("UTC")
    now = datetime(2022, 6, 10, 12, tzinfo=UTC)
    windows = due_windows(job(catch_up="30d", start=datetime(2022, 6, 7)), tz, now)
    assert [w.local_start.day for w in windows] == [7, 8, 9]


# -- the Planner, with a fake ledger and store and a fixed clock -----------------------


class FakeLedger:
    """Records what the planner asks of the ledger; every planned row is queued."""

    def __init__(self) -> None:
        self.planned: list[tuple[str, list[str], list[ExportWindow]]] = []
        self.adopted: list[tuple[str, str, ExportWindow, str]] = []

    async def plan(
        self, job: str, workspace: str, types: Iterable[str], windows: Iterable[ExportWindow]
    ) -> list[ExportRecord]:
        types, windows = list(types), list(windows)
        self.planned.append((job, types, windows))
        done = {(t, w) for _, t, w, _ in self.adopted}
        return [
            ExportRecord(
                n,
                job,
                workspace,
                t,
                w.start,
                w.end,
                LedgerState.QUEUED,
                0,
                0,
                None,
                None,
                None,
                0.0,
                None,
                None,
                None,
            )
            for n, (t, w) in enumerate(itertools.product(types, windows))
            if (t, w) not in done
        ]

    async def adopt_stored(self, job: str, workspace: str, found: Iterable[StoredWindow]) -> int:
        rows = [(job, t, w, location) for t, w, location in found]
        self.adopted += rows
        return len(rows)


class FakeStore:
    """An output store holding manifests for ``keys``; ``down`` makes listing fail."""

    def __init__(self, keys: set[PurePosixPath]) -> None:
        self.keys = keys
        self.listings = 0
        self.down = False

    def location(self, key: PurePosixPath) -> str:
        return f"mem://{key}"

    async def start(self, stack: AsyncExitStack) -> None:
        """Nothing to connect to."""

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        raise NotImplementedError

    def commit_here(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str | None:
        return None

    async def manifests_under(self, prefix: str) -> set[PurePosixPath]:
        self.listings += 1
        if self.down:
            raise StoreUnavailable("the store is down")
        return {key for key in self.keys if str(key).startswith(prefix)}


def planner_for(
    ledger: FakeLedger, store: FakeStore, now: datetime
) -> tuple[Planner, JobSettings, Settings]:
    settings = Settings(
        workspaces={"acme": {"token": "t", "base_url": "https://ac.example"}},
        jobs=[{"name": "daily", "workspace": "acme", "types": ["page", "event"],
               "catch_up": "3d", "lag": "0s"}],
    )  # fmt: skip
    return Planner(ledger, store, lambda: settings, lambda: now), settings.jobs[0], settings


async def test_a_look_queues_the_due_windows_the_store_lacks() -> None:
    """Windows whose manifest is in the store are adopted as done, the rest queued."""
    now = datetime(2022, 6, 10, 12, tzinfo=UTC)
    ledger = FakeLedger()
    store = FakeStore(set())
    planner, job, settings = planner_for(ledger, store, now)
    windows = planner.due(job)
    assert [w.start.day for w in windows] == [7, 8, 9]
    layout = OutputLayout.from_settings(settings.output)
    stored = layout.key_for("acme", "page", "daily", windows[0])
    store.keys.add(stored)

    look = await planner.look(job)

    assert look.due == 6
    assert ledger.adopted == [("daily", "page", windows[0], f"mem://{stored}")]
    assert len(look.records) == 5
    assert ("page", windows[0].start) not in {(r.type, r.start) for r in look.records}


async def test_the_store_is_listed_once_per_job_and_again_after_a_failure() -> None:
    """One listing per type at the first look; none later; a failed listing is retried."""
    now = datetime(2022, 6, 10, 12, tzinfo=UTC)
    store = FakeStore(set())
    store.down = True
    planner, job, _ = planner_for(FakeLedger(), store, now)

    first = await planner.look(job)  # the store is down: everything is queued anyway
    assert len(first.records) == 6
    store.down = False
    await planner.look(job)
    assert store.listings == 1 + 2  # the failed one, then one per type
    await planner.look(job)
    assert store.listings == 3
