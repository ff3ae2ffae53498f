"""Windows and planning: contiguity, alignment, DST, catch-up, lag, start (hypothesis)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from acexport.config import JobSettings, Settings
from acexport.errors import StoreRejected, StoreUnavailable
from acexport.ledger import ExportRecord, Ledger, LedgerState
from acexport.output.layout import OutputLayout
from acexport.output.manifest import Manifest, manifest_key
from acexport.output.store import with_manifests
from acexport.planner import Planner, due_windows
from acexport.protocol import ExportMode
from acexport.retention import LearnedRetention
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


# -- the Planner, with the real ledger (SQLite), an in-memory store and a fixed clock ---


class MemoryStore:
    """An output store in a dict (key -> bytes); ``down`` makes listing fail."""

    def __init__(self) -> None:
        self.objects: dict[PurePosixPath, bytes] = {}
        self.listings = 0  # prefixes listed
        self.asked = 0  # times the store was asked for listings
        self.down = False
        self.batches = 0  # delete_many calls
        self.refuse_batch: int | None = None  # the delete_many call that is refused

    def location(self, key: PurePosixPath) -> str:
        return f"mem://{key}"

    def describe(self) -> str:
        return "mem://"

    async def start(self, stack: AsyncExitStack) -> None:
        """Nothing to connect to."""

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        self.objects[key] = data.read_bytes()
        self.objects[manifest_key(key)] = manifest.to_json()
        return self.location(manifest_key(key))

    def commit_here(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str | None:
        return None

    async def stored_under(self, prefix: str) -> dict[PurePosixPath, int]:
        return with_manifests(await self.listed_under(prefix), prefix)

    async def listed_under(self, prefix: str) -> dict[str, int]:
        self.listings += 1
        if self.down:
            raise StoreUnavailable("the store is down")
        return {str(k): len(v) for k, v in self.objects.items() if str(k).startswith(prefix)}

    async def listed_under_each(self, prefixes: Sequence[str]) -> list[dict[str, int]]:
        self.asked += 1
        return [await self.listed_under(prefix) for prefix in prefixes]

    async def read_small(self, key: PurePosixPath) -> bytes | None:
        return self.objects.get(key)

    async def write_small(self, key: PurePosixPath, data: bytes) -> None:
        self.objects[key] = data

    async def delete(self, key: PurePosixPath) -> None:
        self.objects.pop(key, None)

    async def delete_many(self, keys: Sequence[PurePosixPath]) -> None:
        self.batches += 1
        if self.batches == self.refuse_batch:
            raise StoreRejected("deleting: AccessDenied")
        for key in keys:
            await self.delete(key)


NOW = datetime(2022, 6, 10, 12, tzinfo=UTC)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    ledger = await Ledger.open(tmp_path / "state.sqlite3")
    yield ledger
    await ledger.close()


def planner_for(ledger: Ledger, store: MemoryStore) -> tuple[Planner, JobSettings, OutputLayout]:
    settings = Settings(
        workspaces={"acme": {"token": "t", "base_url": "https://ac.example"}},
        jobs=[{"name": "daily", "workspace": "acme", "types": ["page", "event"],
               "catch_up": "3d", "lag": "0s"}],
    )  # fmt: skip
    planner = Planner(ledger, store, lambda: settings, lambda: NOW)
    return planner, settings.jobs[0], OutputLayout.from_settings(settings.output)


def store_window(
    store: MemoryStore,
    key: PurePosixPath,
    window: ExportWindow,
    data: bytes = b'{"id": "1"}\n',
    *,
    type_: str = "page",
    claimed_bytes: int | None = None,
    version: int = 2,
    revision: int = 1,
) -> None:
    """A data file and its manifest, as a daemon (of ``version``) wrote them."""
    store.objects[key] = data
    fields = {
        "manifest_version": version,
        "workspace": "acme",
        "type": type_,
        "fromDate": window.from_date,
        "toDate": window.to_date,
        "file": key.name,
        "file_bytes": len(data) if claimed_bytes is None else claimed_bytes,
        "records": 1,
        "revision": revision,
        "file_sha256": f"sha-of-revision-{revision}",
    }
    if version == 1:
        del fields["manifest_version"], fields["file_bytes"]
    store.objects[manifest_key(key)] = json.dumps(fields).encode()


def slots(records: list[ExportRecord]) -> set[tuple[str, int]]:
    return {(r.type, r.start.day) for r in records}


async def test_a_look_queues_the_due_windows_the_store_lacks(ledger: Ledger) -> None:
    """Windows whose file the store holds, proven by its manifest, are done; the rest
    queued."""
    store = MemoryStore()
    planner, job, layout = planner_for(ledger, store)
    windows = planner.due(job)
    assert [w.start.day for w in windows] == [7, 8, 9]
    stored = layout.key_for("acme", "page", "daily", windows[0])
    store_window(store, stored, windows[0])

    look = await planner.look(job)

    assert look.due == 6
    assert len(look.records) == 5
    assert ("page", 7) not in slots(look.records)
    (row,) = [r for r in await ledger.rows_ending_after(windows[0].start) if r.type == "page"
              and r.start == windows[0].start]  # fmt: skip
    assert row.state is LedgerState.DONE
    assert row.destination == f"mem://{stored}"


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        ({"data": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00", "claimed_bytes": 4096}, "short"),
        ({"data": b"12345", "claimed_bytes": 0}, "long"),
        ({"type_": "event"}, "another type's manifest"),
        ({"version": 1}, "version 1"),
    ],
)
async def test_a_stored_file_its_manifest_does_not_prove_is_exported_again(
    ledger: Ledger, damage: dict[str, object], what: str
) -> None:
    """Issue 21 item 1: a 9-byte truncated gzip beside a manifest claiming more, a
    manifest naming another type, or a version-1 manifest (which cannot prove its
    file) is not adopted: the window is queued and exported again."""
    store = MemoryStore()
    planner, job, layout = planner_for(ledger, store)
    window = planner.due(job)[0]
    store_window(store, layout.key_for("acme", "page", "daily", window), window, **damage)  # type: ignore[arg-type]

    with capture_logs() as logs:
        look = await planner.look(job)

    assert ("page", 7) in slots(look.records), what
    assert len(look.records) == 6
    (warning,) = [e for e in logs if e["event"] == "stored_windows_not_trusted"]
    assert warning["count"] == 1


async def test_windows_done_in_the_ledger_but_gone_from_the_store_are_queued_again(
    ledger: Ledger,
) -> None:
    """Issue 21 item 2: a new output root, a copied state dir, a deleted file: the
    ledger's done is not the truth, the store is."""
    store = MemoryStore()
    planner, job, layout = planner_for(ledger, store)
    windows = planner.due(job)
    for window in windows:
        for type_ in job.types:
            store_window(store, layout.key_for("acme", type_, "daily", window), window,
                         type_=type_)  # fmt: skip
    assert (await planner.look(job)).records == []  # all adopted, file sizes recorded

    # The same state dir against a store that lost one file and had another replaced.
    store = MemoryStore()
    gone = layout.key_for("acme", "page", "daily", windows[1])
    for window in windows:
        for type_ in job.types:
            key = layout.key_for("acme", type_, "daily", window)
            if key != gone:
                store_window(store, key, window, type_=type_)
    changed = layout.key_for("acme", "event", "daily", windows[2])
    store_window(store, changed, windows[2], b"{}\n" * 3, type_="event")
    planner, job, _ = planner_for(ledger, store)

    with capture_logs() as logs:
        look = await planner.look(job)

    assert slots(look.records) == {("page", 8), ("event", 9)}
    assert all(r.state is LedgerState.QUEUED for r in look.records)
    (warning,) = [e for e in logs if e["event"] == "exports_missing_from_store"]
    assert warning["count"] == 2


async def test_the_store_is_listed_once_per_job_and_again_after_a_failure(
    ledger: Ledger,
) -> None:
    """One listing per type at the first look; none later; a failed listing is retried."""
    store = MemoryStore()
    store.down = True
    planner, job, _ = planner_for(ledger, store)

    first = await planner.look(job)  # the store is down: everything is queued anyway
    assert len(first.records) == 6
    store.down = False
    await planner.look(job)
    assert store.listings == 1 + 2  # the failed one, then one per type
    await planner.look(job)
    assert store.listings == 3


async def test_windows_before_acs_retention_are_recorded_never_queued(ledger: Ledger) -> None:
    """Issue 22 item 3: a catch-up reaching past the workspace's retention records the
    windows before it as beyond_retention (final) and queues only the rest; a second
    look changes nothing; a retention AC named (learned) shortens the configured one."""
    settings = Settings(
        workspaces={"acme": {"token": "t", "base_url": "https://ac.example",
                             "retention": "1 month"}},
        jobs=[{"name": "daily", "workspace": "acme", "types": ["page"],
               "catch_up": "40d", "lag": "0s"}],
    )  # fmt: skip
    planner = Planner(ledger, MemoryStore(), lambda: settings, lambda: NOW)
    job = settings.jobs[0]

    look = await planner.look(job)

    # NOW is 2022-06-10 12:00: a month back is 05-10 12:00, so data from 05-11 on.
    assert look.due == 40
    assert min(r.start for r in look.records) == datetime(2022, 5, 11, tzinfo=UTC)
    assert (look.beyond_retention, look.newly_beyond_retention) == (10, 10)
    rows = await ledger.all_rows()
    beyond = [r for r in rows if r.state is LedgerState.BEYOND_RETENTION]
    assert max(r.start for r in beyond) == datetime(2022, 5, 10, tzinfo=UTC)
    assert "data from 2022-05-11 on" in (beyond[0].reason or "")

    again = await planner.look(job)
    assert (again.beyond_retention, again.newly_beyond_retention) == (10, 0)
    assert len(again.records) == 30

    await ledger.learn_retention("acme", LearnedRetention(1, 1))  # as configured: nothing moves
    assert (await planner.retention_start("acme")).day == 11
    settings = settings.model_copy(
        update={"workspaces": {"acme": settings.workspaces["acme"].model_copy(
            update={"retention": 3})}}
    )  # fmt: skip
    # Issue 34 item 1: a learned value never outlives a change of the configured one.
    assert (await planner.retention_start("acme")).date().isoformat() == "2022-03-11"
    await ledger.learn_retention("acme", LearnedRetention(2, 3))
    assert (await planner.retention_start("acme")).date().isoformat() == "2022-04-11"
    await ledger.learn_retention("acme", LearnedRetention(0, 3))  # never plausible
    assert (await planner.retention_start("acme")).date().isoformat() == "2022-03-11"


def test_retention_months_are_calendar_months() -> None:
    from acexport.retention import months_before, months_in, retention_start

    assert months_before(datetime(2024, 3, 31, 5, tzinfo=UTC), 1) == datetime(
        2024, 2, 29, 5, tzinfo=UTC
    )
    assert months_before(datetime(2025, 1, 15, tzinfo=UTC), 13) == datetime(
        2023, 12, 15, tzinfo=UTC
    )
    berlin = ZoneInfo("Europe/Berlin")
    assert retention_start(datetime(2026, 12, 1, 23, 30, tzinfo=UTC), 13, berlin) == datetime(
        2025, 11, 3, tzinfo=berlin
    )
    assert (
        months_in(
            "The requested data is outside of your data retention period of 13 months. Please"
        )
        == 13
    )
    assert months_in("An internal problem happened when trying to reach our services") is None


def snapshot_planner(
    ledger: Ledger, store: MemoryStore, clock: list[datetime], **job: object
) -> tuple[Planner, JobSettings]:
    settings = Settings(
        workspaces={"acme": {"token": "t", "base_url": "https://ac.example",
                             "timezone": "Europe/Berlin"}},
        jobs=[{"name": "nightly", "workspace": "acme", "catch_up": "1d", "lag": "0s",
               "schedule": "30 2 * * *", **job}],
    )  # fmt: skip
    return Planner(ledger, store, lambda: settings, lambda: clock[0]), settings.jobs[0]


async def test_entity_types_are_snapshots_once_per_schedule_period(ledger: Ledger) -> None:
    """Issue 22 item 1: a nightly job of all six types, as a newcomer writes it, plans
    windows for event and page and one snapshot of each entity table, from the
    retention's start to the look; a look while they run or soon after plans no
    other; a day later (the schedule's period) a new one; a failed snapshot becomes
    the next one instead of piling up; a type's mode can be overridden."""
    clock = [datetime(2026, 12, 1, 1, 30, 0, 123000, tzinfo=UTC)]
    planner, job = snapshot_planner(ledger, MemoryStore(), clock)

    look = await planner.look(job)

    snapshots = [r for r in look.records if r.mode == "snapshot"]
    assert sorted(r.type for r in snapshots) == ["identity", "individual", "membership", "segment"]
    assert {r.type for r in look.records if r.mode == "windows"} == {"event", "page"}
    berlin = ZoneInfo("Europe/Berlin")
    assert {(r.start, r.end) for r in snapshots} == {
        (datetime(2025, 11, 2, tzinfo=berlin), datetime(2026, 12, 1, 1, 30, tzinfo=UTC))
    }
    again = await planner.look(job)
    assert {r.id for r in again.records if r.mode == "snapshot"} == {r.id for r in snapshots}

    for record in snapshots:
        await ledger.mark_done(record.id, destination="x", records=1, payload_bytes=1,
                               payload_sha256="s", requests=1, created_date=None)  # fmt: skip
    clock[0] += timedelta(hours=23)
    assert [r for r in (await planner.look(job)).records if r.mode == "snapshot"] == []
    clock[0] += timedelta(hours=1)
    later = [r for r in (await planner.look(job)).records if r.mode == "snapshot"]
    assert len(later) == 4
    assert {r.end for r in later} == {datetime(2026, 12, 2, 1, 30, tzinfo=UTC)}

    await ledger.mark_failed(later[0].id, "AuthError: no")
    clock[0] += timedelta(days=1)
    retried = [r for r in (await planner.look(job)).records if r.type == later[0].type]
    assert [r.id for r in retried] == [later[0].id]  # the failed row, now the next snapshot
    assert retried[0].end == datetime(2026, 12, 3, 1, 30, tzinfo=UTC)
    assert retried[0].reason == "the snapshot before failed: AuthError: no"

    override = {"name": "w", "types": ["individual"], "modes": {"individual": "windows"}}
    windowed, job2 = snapshot_planner(ledger, MemoryStore(), clock, **override)
    assert {r.mode for r in (await windowed.look(job2)).records} == {"windows"}


async def test_a_first_look_asks_the_store_and_the_ledger_together(
    ledger: Ledger,
) -> None:
    """A job of all six types: its first look lists a prefix per type, in two requests
    of the store (the windows', the snapshots'), not six: each was a thread hop, and
    a thousand jobs look at start; its four snapshots are planned in one round trip
    of the ledger, not four. Later looks list nothing."""
    clock = [datetime(2026, 12, 1, 1, 30, tzinfo=UTC)]
    store = MemoryStore()
    planner, job = snapshot_planner(ledger, store, clock)

    statements: list[str] = []
    await ledger._db.run(lambda conn: conn.set_trace_callback(statements.append))

    look = await planner.look(job)
    assert len(look.records) == 2 + 4
    assert (store.asked, store.listings) == (2, 6)
    # The four snapshots' rows are asked for together: the first runs at once, alone
    # (the ledger is idle), the three asked for meanwhile in one transaction.
    inserts = [i for i, sql in enumerate(statements) if "'snapshot', 'queued'" in sql]
    assert len(inserts) == 4
    between = statements[inserts[0] : inserts[-1]]
    assert between.count("BEGIN IMMEDIATE") == 1, between
    await planner.look(job)
    assert (store.asked, store.listings) == (2, 6)


async def test_a_snapshot_in_the_store_is_adopted_not_taken_again(ledger: Ledger) -> None:
    """A lost state dir: the store's newest proven snapshot (manifest mode snapshot, file
    bytes matching) is recorded done, and no new one is taken within the period; a
    snapshot whose file does not match its manifest proves nothing."""
    clock = [datetime(2026, 12, 1, 3, 0, tzinfo=UTC)]
    store = MemoryStore()
    planner, job = snapshot_planner(ledger, store, clock, types=["individual", "segment"])
    layout = OutputLayout.from_settings(Settings().output)
    berlin = ZoneInfo("Europe/Berlin")
    window = ExportWindow(datetime(2025, 11, 2, tzinfo=berlin),
                          datetime(2026, 12, 1, 1, 30, tzinfo=UTC), berlin)  # fmt: skip
    for type_, claimed in (("individual", None), ("segment", 99)):
        key = layout.key_for("acme", type_, "nightly", window, mode=ExportMode.SNAPSHOT)
        # The as-of instant in UTC (issue 37 item 4), not Berlin's 02:30.
        assert str(key).startswith(f"workspace=acme/type={type_}/snapshot=20261201T013000Z/")
        store_window(store, key, window, type_=type_, claimed_bytes=claimed)
        fields = json.loads(store.objects[manifest_key(key)])
        snapshot = {**fields, "mode": "snapshot", "job": job.name}
        store.objects[manifest_key(key)] = json.dumps(snapshot).encode()

    look = await planner.look(job)

    assert [r.type for r in look.records] == ["segment"]
    (adopted,) = [r for r in await ledger.all_rows() if r.state is LedgerState.DONE]
    assert (adopted.type, adopted.mode, adopted.end) == ("individual", "snapshot", window.end)


async def test_a_failed_window_outside_the_horizon_is_retried_at_the_next_look(
    ledger: Ledger,
) -> None:
    """Issue 24 item 2: a failed backfill window lies outside the catch-up horizon that
    a look re-queues, so it stayed failed until the backfill was run again by hand."""
    planner, job, _ = planner_for(ledger, MemoryStore())
    old = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
    (row,) = await ledger.plan("daily", "acme", ["page"], [old])
    await ledger.mark_failed(row.id, "AuthError: no")

    look = await planner.look(job)

    (again,) = [r for r in look.records if r.id == row.id]
    assert again.state is LedgerState.QUEUED
    assert again.reason == "AuthError: no"  # the last error, kept while it waits


@pytest.mark.parametrize("then", ["failed once", "queued at a restart"])
async def test_a_restatement_is_never_done_by_the_file_it_replaces(
    ledger: Ledger, then: str
) -> None:
    """Issue 34 item 2 (reproduced): a restatement (revision 2) that failed once, or was
    queued when a daemon or `run --once` started, was "found in the output store" from
    the revision-1 file and recorded done, never restated again. The stored manifest
    must prove the row's revision; a revision-2 file does."""
    store = MemoryStore()
    planner, job, layout = planner_for(ledger, store)
    window = planner.due(job)[0]
    key = layout.key_for("acme", "page", "daily", window)
    (row,) = await ledger.plan("daily", "acme", ["page"], [window])
    await ledger.mark_done(
        row.id, destination=str(key), records=1, payload_bytes=1, payload_sha256="p",
        requests=1, created_date=None, file_bytes=12, file_sha256="sha-of-revision-1",
    )  # fmt: skip
    store_window(store, key, window)  # revision 1, as committed
    ten_years = 10 * 365 * 86400.0
    (restated,) = await ledger.restate(
        "daily", "acme", ["page"], ten_years, NOW, NOW - timedelta(days=10)
    )
    assert restated.revision == 2
    if then == "failed once":
        await ledger.mark_failed(restated.id, "TransientError: AC was down")

    await planner.adopt(job, [window])  # what every look and every start does
    await planner.look(job)

    again = await ledger.get(restated.id)
    assert again is not None
    assert again.state is LedgerState.QUEUED, again.reason
    assert again.revision == 2
    assert again.file_sha256 == "sha-of-revision-1"  # the previous_sha256 it will name

    store_window(store, key, window, revision=2)  # the restatement landed; its row did not
    await planner.adopt(job, [window])
    done = await ledger.get(restated.id)
    assert done is not None
    assert (done.state, done.revision) == (LedgerState.DONE, 2)
    assert done.file_sha256 == "sha-of-revision-2"


@pytest.mark.parametrize(
    "reason",
    ["restated unchanged: revision 1 kept", "restatement kept revision 1: AC served 1 records"],
)
async def test_a_kept_restatement_is_not_restated_again_whatever_the_clocks(
    ledger: Ledger, reason: str
) -> None:
    """A restatement that kept revision 1 (unchanged, or shrunk past the guard) is never
    restated again. The ledger stamps finished_at with its own clock; the rule held only
    while that clock was ahead of the planner's. With the planner's ahead (the model
    test's fake clock, modelled here by a restate span of ten years), the window was
    young again and restated at every look, its export downloaded each time."""
    window = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
    (row,) = await ledger.plan("daily", "acme", ["page"], [window])
    await ledger.mark_done(
        row.id, destination="k", records=1, payload_bytes=1, payload_sha256="p",
        requests=1, created_date=None, file_bytes=12, file_sha256="sha-of-revision-1",
    )  # fmt: skip
    ten_years = 10 * 365 * 86400.0
    (restated,) = await ledger.restate(
        "daily", "acme", ["page"], ten_years, NOW, NOW - timedelta(days=2000)
    )
    await ledger.keep_previous_revision(restated.id, reason)

    again = await ledger.restate(
        "daily", "acme", ["page"], ten_years, NOW, NOW - timedelta(days=2000)
    )

    assert again == []
    kept = await ledger.get(row.id)
    assert kept is not None
    assert (kept.state, kept.revision, kept.reason) == (LedgerState.DONE, 1, reason)
    with pytest.raises(ValueError, match="starts with"):
        await ledger.keep_previous_revision(row.id, "kept for no reason")


def daily_keeping_30d() -> Settings:
    """One daily job of ``page`` on acme that keeps 30 days."""
    return Settings(
        workspaces={"acme": {"token": "t", "base_url": "https://ac.example"}},
        jobs=[{"name": "daily", "workspace": "acme", "types": ["page"], "catch_up": "3d",
               "lag": "0s", "keep": "30d"}],
    )  # fmt: skip


async def test_keep_deletes_in_batches_and_a_refusal_leaves_the_rest_for_the_next_look(
    ledger: Ledger,
) -> None:
    """150 windows older than keep: manifests then files, 100 windows a batch (S3: a
    request each, not one per object); the store refuses the second batch: the first
    100 are expired, the other 50 stay done with their files, and the next look
    expires them."""
    store = MemoryStore()
    settings = daily_keeping_30d()
    planner = Planner(ledger, store, lambda: settings, lambda: NOW)
    job, layout = settings.jobs[0], OutputLayout.from_settings(settings.output)
    first = datetime(2021, 1, 1, tzinfo=UTC)
    windows = [ExportWindow(first + timedelta(days=d), first + timedelta(days=d + 1))
               for d in range(150)]  # fmt: skip
    found = []
    for window in windows:
        key = layout.key_for("acme", "page", "daily", window)
        store_window(store, key, window)
        found.append(("page", window, store.location(key), 12, 1, "sha-of-revision-1"))
    assert await ledger.adopt_stored("daily", "acme", found) == 150
    store.refuse_batch = 3  # the second batch's manifests
    look = await planner.look(job)
    assert look.expired == 100
    states = Counter(r.state for r in await ledger.all_rows() if r.start.year == 2021)
    assert states == {LedgerState.EXPIRED: 100, LedgerState.DONE: 50}
    assert len([k for k in store.objects if "2021" in str(k)]) == 100  # 50 files, 50 manifests
    store.refuse_batch = None
    assert (await planner.look(job)).expired == 50
    assert not [k for k in store.objects if "2021" in str(k)]
    assert store.batches == 5  # 2, 1 refused, then 2: never one request a file


async def test_keep_expires_a_waiting_window_only_while_the_ledger_still_has_it_queued(
    ledger: Ledger,
) -> None:
    """A lane asks keep about the window it was handed queued. If a coalesced request
    of the lane took the window since, keep leaves it and its files alone (the check
    deleted the files of a window at AC, and logged an expiry of none: found by
    MODEL_RANDOM); queued again, it is expired, its previous file deleted."""
    store = MemoryStore()
    settings = daily_keeping_30d()
    keep = Planner(ledger, store, lambda: settings, lambda: NOW).keep
    layout = OutputLayout.from_settings(settings.output)
    window = ExportWindow(NOW - timedelta(days=40), NOW - timedelta(days=39))
    key = layout.key_for("acme", "page", "daily", window)
    store_window(store, key, window)  # its previous revision's file
    (handed,) = await ledger.plan("daily", "acme", ["page"], [window])
    assert await ledger.claim(handed.id, 0.0) is not None  # taken since, now at AC

    assert not await keep.expire_waiting(handed)
    taken = await ledger.get(handed.id)
    assert taken is not None
    assert taken.state is LedgerState.SUBMITTED
    assert key in store.objects

    assert await ledger.release([handed.id]) == 1  # queued again
    assert await keep.expire_waiting(handed)
    expired = await ledger.get(handed.id)
    assert expired is not None
    assert expired.state is LedgerState.EXPIRED
    assert key not in store.objects
