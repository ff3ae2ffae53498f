"""The SQLite ledger: idempotent planning, lifecycle, re-planning failures, migrations."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acexport.errors import StateError
from acexport.ledger import Ledger, ledger_path
from acexport.windows import ExportWindow, iso_ms

DAY1 = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
DAY2 = ExportWindow(datetime(2022, 1, 2, tzinfo=UTC), datetime(2022, 1, 3, tzinfo=UTC))
DAY3 = ExportWindow(datetime(2022, 1, 3, tzinfo=UTC), datetime(2022, 1, 4, tzinfo=UTC))


@pytest.fixture
async def ledger(tmp_path: Path) -> Ledger:
    ledger = await Ledger.open(tmp_path / "state.sqlite3")
    yield ledger  # type: ignore[misc]
    await ledger.close()


async def test_planning_twice_records_each_window_once(ledger: Ledger) -> None:
    """Planning the same windows again adds no rows."""
    first = await ledger.plan("nightly", "acme", ["page", "event"], [DAY1, DAY2])
    again = await ledger.plan("nightly", "acme", ["page", "event"], [DAY1, DAY2])
    assert len(first) == 4
    assert [r.id for r in again] == [r.id for r in first]
    assert len(await ledger.all_rows()) == 4


async def test_done_windows_are_not_planned_again(ledger: Ledger) -> None:
    """A done row is never returned for export again; a failed one is re-queued."""
    done, failed = await ledger.plan("nightly", "acme", ["page"], [DAY1, DAY2])
    await ledger.claim(done.id, time.time())
    await ledger.mark_ready(done.id, "2022-06-29T17:50:46.824Z")
    await ledger.mark_done(
        done.id,
        destination="/x",
        records=1,
        payload_bytes=2,
        payload_sha256="ab",
        requests=3,
        created_date="c",
    )
    await ledger.claim(failed.id, time.time())
    await ledger.mark_failed(failed.id, "AuthError: 401")
    replanned = await ledger.plan("nightly", "acme", ["page"], [DAY1, DAY2])
    assert [(r.id, r.state) for r in replanned] == [(failed.id, "queued")]
    row = await ledger.get(failed.id)
    assert row is not None
    assert row.attempts == 1


async def test_active_rows_resume_ready_then_submitted_then_queued(ledger: Ledger) -> None:
    """After a restart, ready downloads come first, then the submitted export, then the queue."""
    queued, submitted, ready = await ledger.plan(
        "j", "acme", ["page"], [DAY1, DAY2, ExportWindow(DAY2.end, DAY2.end + timedelta(days=1))]
    )
    await ledger.claim(submitted.id, time.time())
    await ledger.claim(ready.id, time.time())
    await ledger.mark_ready(ready.id, None)
    assert [r.id for r in await ledger.active()] == [ready.id, submitted.id, queued.id]


async def test_readonly_reader_sees_the_writer(ledger: Ledger, tmp_path: Path) -> None:
    """`status` opens the database read-only beside a running daemon (WAL)."""
    await ledger.plan("j", "acme", ["page"], [DAY1])
    reader = await Ledger.open(tmp_path / "state.sqlite3", readonly=True)
    try:
        assert len(await reader.all_rows()) == 1
    finally:
        await reader.close()


async def test_schema_is_versioned_and_newer_is_refused(tmp_path: Path) -> None:
    """The schema version is recorded; a database from a newer acexport is refused."""
    path = tmp_path / "state.sqlite3"
    ledger = await Ledger.open(path)
    await ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 8
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert "exports_by_type_ready" in indexes
        assert "hook_events_committed" in indexes  # the trigger that commits hook events
        db.execute("PRAGMA user_version = 99")
        db.commit()
    with pytest.raises(StateError, match=f"{path} is schema version 99, newer"):
        await Ledger.open(path)


async def test_a_version_3_ledger_is_migrated_with_its_rows(tmp_path: Path) -> None:
    """Version 4 rebuilds the table (a new final state): every row and index survives,
    old rows are windows of revision 1, and the new state is accepted."""
    from acexport.ledger import LedgerState
    from acexport.ledger.schema import _MIGRATIONS
    from acexport.protocol import ExportMode

    path = tmp_path / "state.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        for number, script in enumerate(_MIGRATIONS[:3], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        db.execute(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, state, "
            "planned_at, updated_at, file_bytes, reason) VALUES ('acme', 'page', ?, ?, 'j', "
            "'failed', 1, 1, 7, 'AuthError: no')",
            (DAY1.from_date, iso_ms(DAY1.end)),
        )
        db.commit()
    ledger = await Ledger.open(path)
    try:
        (row,) = await ledger.all_rows()
        assert (row.state, row.reason, row.mode, row.revision) == (
            LedgerState.FAILED,
            "AuthError: no",
            ExportMode.WINDOWS,
            1,
        )
        await ledger.mark_failed(row.id, "x")
        await ledger._rows("UPDATE exports SET state = 'beyond_retention' WHERE id = ?", row.id)
        assert (await ledger.get(row.id)).state is LedgerState.BEYOND_RETENTION  # type: ignore[union-attr]
    finally:
        await ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert {"exports_by_state", "exports_by_type_ready", "meta"} <= names
        assert "exports_v4" not in names


async def test_ledger_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """The state dir is created 0700 and the ledger 0600 even under umask 000."""
    from acexport.lock import take_lock

    old = os.umask(0)
    try:
        state_dir = tmp_path / "state"
        take_lock(state_dir).close()
        ledger = await Ledger.open(ledger_path(state_dir))
        await ledger.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(ledger_path(state_dir).stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "acexport.lock").stat().st_mode) == 0o600


def test_a_lock_file_that_is_a_link_is_refused_not_truncated(tmp_path: Path) -> None:
    """A symlink planted as acexport.lock is refused; its target keeps its content."""
    from acexport.lock import take_lock

    victim = tmp_path / "victim"
    victim.write_text("precious")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "acexport.lock").symlink_to(victim)
    with pytest.raises(StateError, match="symbolic link"):
        take_lock(state_dir)
    assert victim.read_text() == "precious"


def test_malformed_database_is_not_called_a_full_disk(tmp_path: Path) -> None:
    """'(disk full?)' is only added for writes that failed, not for a corrupt file."""
    from acexport.ledger.connection import describe_db_error

    corrupt = sqlite3.DatabaseError("database disk image is malformed")
    assert "disk full" not in str(describe_db_error(tmp_path / "x", corrupt))
    full = sqlite3.OperationalError("database or disk is full")
    assert "(disk full?)" in str(describe_db_error(tmp_path / "x", full))


async def test_implausible_spans_are_not_learned(ledger: Ledger) -> None:
    """A submit-to-ready span of 30 days (a wall-clock jump) is not a processing time."""
    (record,) = await ledger.plan("job", "acme", ["page"], [DAY1])
    await ledger.claim(record.id, time.time())
    await _submitted_ago(ledger, record.id, 30 * 86400)
    await ledger.mark_ready(record.id, None)
    assert await ledger.expected_processing_s("acme", "page") is None
    assert await ledger.similar_processing_s("acme", "page") is None


async def test_rows_ending_after_leave_out_older_windows(ledger: Ledger) -> None:
    """The status page reads only the windows that end after its horizon."""
    await ledger.plan("job", "acme", ["page"], [DAY1, DAY2])
    later = await ledger.rows_ending_after(DAY1.end)
    assert [row.start for row in later] == [DAY2.start]
    assert len(await ledger.rows_ending_after(DAY1.start)) == 2


async def test_claim_submits_or_keeps_fresh_ready_data_and_skips_finished_rows(
    ledger: Ledger,
) -> None:
    """One statement decides: fresh ready data stays ready; stale is resubmitted; done is None."""
    fresh, stale, finished = await ledger.plan(
        "j", "acme", ["page"], [DAY1, DAY2, ExportWindow(DAY2.end, DAY2.end + timedelta(days=1))]
    )
    for record in (fresh, stale, finished):
        await ledger.claim(record.id, time.time())
        await ledger.mark_ready(record.id, None)
    await ledger.mark_failed(finished.id, "x")
    await ledger.plan("j", "acme", ["page"], [])  # nothing re-queued
    kept = await ledger.claim(fresh.id, time.time() - 3600)
    assert kept is not None
    assert (kept.state, kept.attempts) == ("ready", 1)
    again = await ledger.claim(stale.id, time.time() + 1)  # ready before "now + 1": stale
    assert again is not None
    assert (again.state, again.attempts) == ("submitted", 2)
    assert await ledger.claim(finished.id, time.time()) is None


async def test_claim_refuses_a_queued_window_past_its_keep_but_not_one_at_ac(
    ledger: Ledger,
) -> None:
    """The keep edge is part of the claim: a queued window that ended by ``kept_from``
    stays queued for keep to expire (checked first, then claimed, it could pass the
    check and be claimed after its keep had passed); one at AC is claimed, to finish."""
    old_queued, old_submitted = await ledger.plan("j", "acme", ["page", "event"], [DAY1])
    (young,) = await ledger.plan(
        "j", "acme", ["page"], [ExportWindow(DAY2.end, DAY2.end + timedelta(days=1))]
    )
    assert await ledger.claim(old_submitted.id, time.time()) is not None  # at AC
    kept_from = iso_ms(DAY2.end)  # DAY1 ended by then, the young window after

    assert await ledger.claim(old_queued.id, time.time(), kept_from) is None
    assert await ledger.claim(old_submitted.id, time.time(), kept_from) is not None
    claimed = await ledger.claim(young.id, time.time(), kept_from)
    assert claimed is not None
    assert claimed.state == "submitted"
    left = await ledger.get(old_queued.id)
    assert left is not None
    assert left.state == "queued"


async def test_a_released_window_is_asked_for_anew_not_as_ready_data(ledger: Ledger) -> None:
    """A window put back from a coalesced request (``release``) forgets AC's export
    and ready time of its rows: its next claim submits it, and its lane does not take
    it for ready data AC let expire (a misleading warning, an expiry counted)."""
    first, second = await ledger.plan("j", "acme", ["page"], [DAY1, DAY2])
    for record in (first, second):
        await ledger.claim(record.id, time.time())
        await ledger.mark_ready(record.id, "2022-01-03T00:00:00.000Z")
    assert await ledger.release([second.id]) == 1
    released = await ledger.get(second.id)
    assert released is not None
    assert (released.state, released.ready_at, released.created_date) == ("queued", None, None)
    claimed = await ledger.claim(second.id, 0.0)
    assert claimed is not None
    assert (claimed.state, claimed.ready_at) == ("submitted", None)
    kept = await ledger.get(first.id)
    assert kept is not None
    assert kept.created_date == "2022-01-03T00:00:00.000Z"


async def _submitted_ago(ledger: Ledger, export_id: int, seconds: float) -> None:
    """A processing span of a known length, not of however long the test took."""
    await ledger._db.rows(
        "UPDATE exports SET submitted_at = ? WHERE id = ?", (time.time() - seconds, export_id)
    )


async def test_the_expected_time_follows_new_ready_rows_without_asking_the_ledger(
    ledger: Ledger,
) -> None:
    """Read once per workspace and type; rows becoming ready update it in memory."""
    first, second, third = await ledger.plan("j", "acme", ["page"], [DAY1, DAY2, DAY3])
    for record, span in ((first, 10.0), (second, 30.0)):
        await ledger.claim(record.id, time.time())
        await _submitted_ago(ledger, record.id, span)
        await ledger.mark_ready(record.id, None)
    assert await ledger.expected_processing_s("acme", "page") == pytest.approx(30.0, abs=1)
    assert await ledger.similar_processing_s("acme", "event") == pytest.approx(30.0, abs=1)
    statements: list[str] = []
    await ledger._db.run(lambda db: db.set_trace_callback(statements.append))
    await ledger.claim(third.id, time.time())
    await _submitted_ago(ledger, third.id, 20.0)
    await ledger.mark_ready(third.id, None)
    assert await ledger.expected_processing_s("acme", "page") == pytest.approx(20.0, abs=1)
    assert await ledger.similar_processing_s("acme", "event") == pytest.approx(20.0, abs=1)
    assert not [sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    # What was learned in memory is what a fresh read of the ledger says.
    again = await Ledger.open(ledger.path)
    assert await again.expected_processing_s("acme", "page") == pytest.approx(20.0, abs=1)
    await again.close()


async def test_the_expected_time_is_the_median_of_the_newest_five(ledger: Ledger) -> None:
    """Older spans drop out, whether read from the ledger or learned as rows become ready."""
    days = [
        ExportWindow(DAY1.start + timedelta(days=i), DAY1.end + timedelta(days=i)) for i in range(8)
    ]
    records = await ledger.plan("j", "acme", ["page"], days)
    for record, span in zip(records[:7], [100, 100, 100, 1, 2, 3, 4], strict=True):
        await ledger.claim(record.id, time.time())
        await _submitted_ago(ledger, record.id, span)
        await ledger.mark_ready(record.id, None)
    assert await ledger.expected_processing_s("acme", "page") == pytest.approx(3, abs=0.5)
    read = await Ledger.open(ledger.path)
    assert await read.expected_processing_s("acme", "page") == pytest.approx(3, abs=0.5)
    await read.close()
    await ledger.claim(records[7].id, time.time())
    await _submitted_ago(ledger, records[7].id, 0.5)
    await ledger.mark_ready(records[7].id, None)  # 100 drops out: 1 2 3 4 0.5
    assert await ledger.expected_processing_s("acme", "page") == pytest.approx(2, abs=0.3)
    assert await ledger.similar_processing_s("beta", "page") == pytest.approx(2, abs=0.3)


async def test_a_version_1_ledger_is_migrated_in_place(tmp_path: Path) -> None:
    """A ledger of the previous release gets the new index and keeps its rows."""
    from acexport.ledger.schema import _MIGRATIONS

    path = tmp_path / "state.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(f"BEGIN; {_MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
        db.execute(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, state, "
            "planned_at, updated_at) VALUES ('acme', 'page', '2022-01-01T00:00:00.000Z', "
            "'2022-01-02T00:00:00.000Z', 'j', 'queued', 0, 0)"
        )
        db.commit()
    ledger = await Ledger.open(path)
    assert len(await ledger.all_rows()) == 1
    await ledger.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 8


async def test_the_first_export_of_a_kind_is_guessed_from_similar_ones(
    ledger: Ledger,
) -> None:
    """No history for (workspace, type): the type elsewhere, else the workspace's others."""
    (other,) = await ledger.plan("j", "beta", ["page"], [DAY1])
    await ledger.claim(other.id, time.time())
    await _submitted_ago(ledger, other.id, 10.0)
    await ledger.mark_ready(other.id, None)
    took = await ledger.expected_processing_s("beta", "page")
    assert took is not None
    assert await ledger.expected_processing_s("acme", "page") is None  # not its own history
    assert await ledger.similar_processing_s("acme", "page") == took  # the type elsewhere
    assert await ledger.similar_processing_s("beta", "event") == took  # the workspace's other
    assert await ledger.similar_processing_s("acme", "event") is None


@pytest.mark.slow
async def test_a_thousand_jobs_planned_at_once_share_the_ledger(ledger: Ledger) -> None:
    """Concurrent looks (the scheduler starts every job at once) never misuse the connection.

    A statement's cursor released on the event loop's thread reset a cached statement
    that the ledger's thread was running: 'bad parameter or other API misuse'.
    """
    import asyncio

    async def look(n: int) -> int:
        records = await ledger.plan(f"job{n}", f"ws{n:04d}", ["page", "event"], [DAY1, DAY2])
        found = [("page", DAY1, f"/out/ws{n:04d}/page", 10, 1, None)]
        return len(records) + await ledger.adopt_stored(f"job{n}", f"ws{n:04d}", found)

    counts = await asyncio.gather(*(look(n) for n in range(1000)))
    assert counts == [4 + 1] * 1000  # four queued, then one of them found done
    assert len(await ledger.active()) == 3000


async def test_a_jobs_snapshots_come_in_one_statement_newest_done_and_failed_per_type(
    ledger: Ledger,
) -> None:
    """``snapshots`` answers for every type of a job at once (a look made three
    statements per type): the active rows, the newest done and the newest failed one
    of each type, no older ones. ``plan_snapshot`` turns that failed one into the new
    snapshot, or inserts one if it is failed no longer."""
    edge = DAY1.start - timedelta(days=400)
    as_of = [ExportWindow(edge, day.end) for day in (DAY1, DAY2, DAY3)]
    rows = {}
    for type_ in ("individual", "segment"):
        planned = [await ledger.plan_snapshot("s", "acme", type_, w) for w in as_of]
        await ledger.claim(planned[0].id, time.time())
        await ledger.mark_done(
            planned[0].id, destination="x", records=1, payload_bytes=1, payload_sha256="0",
            requests=1, created_date=None,
        )  # fmt: skip
        for failed in planned[1:]:
            await ledger.mark_failed(failed.id, "AuthError: no")
        rows[type_] = planned
    active = await ledger.plan_snapshot(
        "s", "acme", "individual", ExportWindow(edge, DAY3.end + timedelta(hours=1))
    )
    other = ExportWindow(edge, DAY1.end + timedelta(hours=1))
    await ledger.plan_snapshot("other-job", "acme", "individual", other)  # not the job's

    found = await ledger.snapshots("s", "acme")
    assert sorted(found) == ["individual", "segment"]
    assert [r.id for r in found["segment"]] == [r.id for r in rows["segment"][::2]]
    assert [r.id for r in found["individual"]] == [
        rows["individual"][0].id, rows["individual"][2].id, active.id
    ]  # fmt: skip

    window = ExportWindow(edge, DAY3.end + timedelta(days=1))
    reused = await ledger.plan_snapshot("s", "acme", "segment", window, found["segment"])
    assert reused.id == rows["segment"][2].id
    assert (reused.state, reused.end) == ("queued", window.end)
    assert reused.reason == "the snapshot before failed: AuthError: no"
    # What was found is stale now (that row is queued): a new row, not the queued one moved.
    later = ExportWindow(edge, window.end + timedelta(days=1))
    fresh = await ledger.plan_snapshot("s", "acme", "segment", later, found["segment"])
    assert fresh.id not in {r.id for r in rows["segment"]}
    assert (await ledger.snapshots("s", "acme"))["segment"][-2:] == [reused, fresh]


async def test_a_snapshot_waits_behind_the_windows_queued_before_it(ledger: Ledger) -> None:
    """A snapshot starts where every snapshot starts (the retention's edge): sorted by
    its start it went before every window at each restart, and snapshots every few
    seconds starved a backfill (the soak did 13 of 1,008 windows in 9 minutes). It
    is as old as its as-of time."""
    windows = await ledger.plan("j", "acme", ["page"], [DAY1, DAY2])
    snapshot = await ledger.plan_snapshot(
        "s", "acme", "individual", ExportWindow(DAY1.start - timedelta(days=400), DAY2.end)
    )
    assert [r.id for r in await ledger.active()] == [w.id for w in windows] + [snapshot.id]


async def test_a_windows_failures_survive_its_retries_until_it_is_done(ledger: Ledger) -> None:
    """Issue 24 item 1: a failed window queued again lost its failure at the next claim
    (status said "pending 6, failed 0" while /healthz said the token was rejected). The
    count of failures in a row and the last error stay while it is retried; done clears
    them."""
    (row,) = await ledger.plan("j", "acme", ["page"], [DAY1])
    await ledger.claim(row.id, time.time())
    for attempt in (1, 2, 3):
        await ledger.mark_failed(row.id, f"AuthError: rejected ({attempt})")
        await ledger.plan("j", "acme", ["page"], [DAY1])  # queued again
        claimed = await ledger.claim(row.id, time.time())
        assert claimed is not None
        assert claimed.retrying
        assert claimed.failures == attempt
        assert claimed.last_error == f"AuthError: rejected ({attempt})"
    await ledger.mark_failed(row.id, "TransientError: 503")
    await ledger.plan("j", "acme", ["page"], [DAY1])
    (waiting,) = await ledger.all_rows()
    assert (waiting.state, waiting.failures, waiting.last_error) == (
        "queued", 4, "TransientError: 503"
    )  # fmt: skip
    await ledger.claim(row.id, time.time())
    await ledger.mark_done(row.id, destination="x", records=1, payload_bytes=1,
                           payload_sha256="s", requests=1, created_date=None)  # fmt: skip
    (done,) = await ledger.all_rows()
    assert (done.failures, done.last_error, done.retrying) == (0, None, False)


async def test_keep_ends_queued_windows_too_but_not_those_at_ac(ledger: Ledger) -> None:
    """A window queued (left by a stop) and older than keep is expired, not asked of AC
    only to be deleted at the next look; one submitted to AC is left to finish."""
    queued, submitted, newer = await ledger.plan("j", "acme", ["page"], [DAY1, DAY2, DAY3])
    await ledger.claim(submitted.id, time.time())
    edge = DAY2.end
    expirable = await ledger.expirable("j", "acme", edge, 10)
    assert [r.id for r in expirable] == [queued.id]
    assert await ledger.mark_expired([queued.id, submitted.id]) == 1  # a lane has that one
    states = {r.id: r.state for r in await ledger.all_rows()}
    assert states == {queued.id: "expired", submitted.id: "submitted", newer.id: "queued"}
    assert [r.id for r in await ledger.plan("j", "acme", ["page"], [DAY1])] == []


def test_a_released_state_dir_is_free_while_a_forked_child_holds_its_descriptor(
    tmp_path: Path,
) -> None:
    """A hook's command is forked from a worker thread; until it runs its program the
    child holds a copy of the lock's descriptor. The daemon's release unlocks it, so a
    daemon started at once finds the directory free (the model test hit 'another
    acexport is running' on a restart)."""
    import os
    import signal

    from acexport.lock import lock_holder, release_lock, take_lock

    handle = take_lock(tmp_path / "state")
    child = os.fork()
    if child == 0:  # a child between fork and exec: it only waits
        signal.pause()
        os._exit(0)
    try:
        release_lock(handle)
        assert lock_holder(tmp_path / "state") is None
        release_lock(take_lock(tmp_path / "state"))
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
