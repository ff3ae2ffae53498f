"""The ledger: every planned export and where it is in its life, in SQLite.

One row per (workspace, type, window). A row is ``queued`` when planned,
``submitted`` once a request for it may have reached AC, ``ready`` once AC
served data, ``done`` after the file and manifest are committed, ``failed``
(with the reason) when an attempt gave up; failed rows are planned again at
the next look. A window with a ``done`` row is never exported again (unless
restated); one ``beyond_retention`` (before AC's data retention) is never asked for.

WAL mode lets ``acexport status`` read while the daemon writes. aiosqlite keeps
every query off the event loop. The schema carries ``PRAGMA user_version``
and is migrated forward on open.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

from .errors import StateError
from .history import ANY, LAST, ProcessingTimes
from .ledger_schema import _MIGRATIONS, ExportRecord, LedgerState, parse_time
from .protocol import ExportMode
from .windows import ExportWindow, iso_ms, one_request_each

P = ParamSpec("P")


T = TypeVar("T")


def _describe_db_error(path: Path, exc: sqlite3.Error) -> StateError:
    # Only I/O that failed hints at a full disk ("disk image is malformed" does not).
    code = getattr(exc, "sqlite_errorname", None) or ""
    failed_io = code.startswith(("SQLITE_FULL", "SQLITE_IOERR"))
    hint = (
        " (disk full?)"
        if failed_io or "disk I/O error" in str(exc) or "is full" in str(exc)
        else ""
    )
    return StateError(f"the state database {path} failed: {exc}{hint}")


def _state_errors(
    method: Callable[Concatenate[Ledger, P], Awaitable[T]],
) -> Callable[Concatenate[Ledger, P], Awaitable[T]]:
    """sqlite3 errors become StateError naming the database (one place, every method)."""

    @functools.wraps(method)
    async def wrapper(ledger: Ledger, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(ledger, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _describe_db_error(ledger.path, exc) from None

    return wrapper


def _create_private(path: Path) -> None:
    """The ledger file, created 0600 whatever the umask (SQLite gives -wal/-shm its mode)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot open the state database {path}: {exc.strerror or exc}") from None


def ledger_path(state_dir: Path) -> Path:
    return state_dir / "state.sqlite3"


_SPAN = "ready_at - submitted_at"


# First attempts that became ready: a resubmitted export's span is not a processing time.
_CLEAN_SPAN = (
    "state IN ('ready', 'done') AND attempts = 1 AND ready_at IS NOT NULL "
    "AND submitted_at IS NOT NULL"
)


class Ledger:
    """The ledger in ``<state_dir>/state.sqlite3``."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self.times = ProcessingTimes()
        self._retention: dict[str, int | None] = {}  # learned, by workspace

    @classmethod
    async def start(cls, path: Path, stack: AsyncExitStack) -> Ledger:
        """Open the ledger for the daemon; it is closed when ``stack`` closes."""
        ledger = await cls.open(path)
        stack.push_async_callback(ledger.close)
        return ledger

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Ledger:
        """Open (or create, 0600) the ledger; every failure is a StateError naming it."""
        try:
            return await cls._open(path, readonly)
        except sqlite3.Error as exc:
            raise _describe_db_error(path, exc) from None

    @classmethod
    async def _open(cls, path: Path, readonly: bool) -> Ledger:
        if readonly:
            db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
        else:
            _create_private(path)
            # Autocommit: a change commits itself, with no second round trip through
            # aiosqlite's thread. (Batches commit row by row: in WAL mode with
            # synchronous = NORMAL that is an append each, and any prefix is consistent.)
            db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute_fetchall("PRAGMA busy_timeout = 5000")
            if not readonly:
                await db.execute_fetchall("PRAGMA journal_mode = WAL")
                # NORMAL (in WAL mode) survives crashes; a power cut may lose the last
                # commits, which only means a window is exported again, to the same path:
                # files are fsynced before their row says done. FULL cost an fsync per
                # update and made the ledger the bottleneck at 1,000 lanes.
                await db.execute_fetchall("PRAGMA synchronous = NORMAL")
                await cls._migrate(db, path)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > len(_MIGRATIONS):
            raise StateError(
                f"the state database {path} is schema version {version}, newer than this "
                f"acexport understands ({len(_MIGRATIONS)}); upgrade acexport"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            async with db.executescript(
                f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
            ):
                pass

    async def close(self) -> None:
        await self._db.close()

    async def _rows(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        """Run one statement to its end: one hop to aiosqlite's thread, not three."""
        return list(await self._db.execute_fetchall(sql, args))

    async def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``sql`` for each of ``rows``; how many rows it changed (this statement's
        count: other statements share the connection meanwhile)."""
        # Closed in aiosqlite's thread: a cursor released on the event loop's thread
        # resets its cached statement there, which the next executemany of the same SQL
        # may be running in aiosqlite's thread ("bad parameter or other API misuse",
        # seen with a thousand jobs looked at at once).
        async with self._db.executemany(sql, rows) as cursor:
            return int(cursor.rowcount)

    async def _one(self, sql: str, *args: Any) -> ExportRecord | None:
        rows = await self._rows(sql, *args)  # all: an UPDATE ... RETURNING ends, commits
        return ExportRecord.from_row(rows[0]) if rows else None

    async def _all(self, sql: str, *args: Any) -> list[ExportRecord]:
        rows = await self._rows(sql, *args)
        return [ExportRecord.from_row(row) for row in rows]

    @_state_errors
    async def plan(
        self, job: str, workspace: str, types: Iterable[str], windows: Iterable[ExportWindow]
    ) -> list[ExportRecord]:
        """Record windows as queued (failed ones again); return every active row among them."""
        now = time.time()
        keys = [(workspace, t, iso_ms(w.start), iso_ms(w.end)) for t in types for w in windows]
        if not keys:
            return []
        await self._many(
            "INSERT OR IGNORE INTO exports (workspace, type, window_start, window_end, job, "
            "state, planned_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
            [(*key, job, now, now) for key in keys],
        )
        await self._many(
            "UPDATE exports SET state = 'queued', updated_at = ? WHERE workspace = ? AND "
            "type = ? AND window_start = ? AND window_end = ? AND state = 'failed'",
            [(now, *key) for key in keys],
        )
        wanted = set(keys)
        rows = await self._all(
            "SELECT * FROM exports WHERE workspace = ? AND state IN ('queued', 'submitted', "
            "'ready') ORDER BY window_start, type",
            workspace,
        )
        return [r for r in rows if (r.workspace, r.type, iso_ms(r.start), iso_ms(r.end)) in wanted]

    @_state_errors
    async def active(self) -> list[ExportRecord]:
        """Rows still to finish: ready first, then submitted, then queued, oldest first.

        A snapshot is as old as its as-of time (its start is where every snapshot
        starts): it waits behind the windows queued before it, so frequent snapshots
        cannot starve a catch-up of the lane.
        """
        return await self._all(
            "SELECT * FROM exports WHERE state IN ('queued', 'submitted', 'ready') ORDER BY "
            "CASE state WHEN 'ready' THEN 0 WHEN 'submitted' THEN 1 ELSE 2 END, "
            "CASE mode WHEN 'snapshot' THEN window_end ELSE window_start END, id"
        )

    @_state_errors
    async def get(self, export_id: int) -> ExportRecord | None:
        return await self._one("SELECT * FROM exports WHERE id = ?", export_id)

    async def _update(self, export_id: int, returning: str = "id", **fields: Any) -> list[Any]:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        return await self._rows(
            f"UPDATE exports SET {assignments} WHERE id = ? "  # noqa: S608 - names are ours
            f"RETURNING {returning}",
            *fields.values(),
            export_id,
        )

    @_state_errors
    async def claim(self, export_id: int, ready_since: float) -> ExportRecord | None:
        """Start working on a row, in one statement: None if it is no longer active.

        Ready data younger than ``ready_since`` (epoch seconds) is downloaded as it
        is; anything else is (re)submitted: state submitted, one attempt more.
        """
        fresh = "state = 'ready' AND ready_at IS NOT NULL AND ready_at > ?"
        now = time.time()
        return await self._one(
            f"UPDATE exports SET state = CASE WHEN {fresh} THEN 'ready' ELSE 'submitted' END, "  # noqa: S608
            f"attempts = attempts + CASE WHEN {fresh} THEN 0 ELSE 1 END, "
            f"reason = NULL, submitted_at = COALESCE(submitted_at, ?), updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'submitted', 'ready') RETURNING *",
            ready_since,
            ready_since,
            now,
            now,
            export_id,
        )

    @_state_errors
    async def coalesce(
        self, leader: ExportRecord, max_span: timedelta, max_windows: int
    ) -> list[ExportRecord]:
        """The windows one AC request serves, oldest first, ``leader`` (claimed) among them.

        A leader already in a coalesced request (a restart resuming it) gets that
        request's active rows. Otherwise the leader (the caller says it was queued: no
        AC export of its own outstanding) takes the queued windows of its job and type
        that follow it without a gap, up to ``max_span`` from its start and
        ``max_windows`` in all; they are claimed with it and share its request's range.
        """
        if leader.request_start is not None and leader.request_end is not None:
            return await self._all(
                "SELECT * FROM exports WHERE job = ? AND workspace = ? AND type = ? AND "
                "request_start = ? AND request_end = ? AND state IN ('queued', 'submitted', "
                "'ready') ORDER BY window_start",
                leader.job,
                leader.workspace,
                leader.type,
                iso_ms(leader.request_start),
                iso_ms(leader.request_end),
            )
        if max_windows < 2:
            return [leader]
        following = await self._all(
            "SELECT * FROM exports WHERE job = ? AND workspace = ? AND type = ? AND "
            "mode = 'windows' AND revision = 1 AND state = 'queued' AND request_start IS NULL "
            "AND window_start >= ? AND window_start < ? ORDER BY window_start LIMIT ?",
            leader.job,
            leader.workspace,
            leader.type,
            iso_ms(leader.end),
            iso_ms(leader.start + max_span),
            max_windows - 1,
        )
        group = one_request_each([leader, *following], max_span, max_windows)[0]
        if len(group) == 1:
            return group
        now = time.time()
        start, end = iso_ms(leader.start), iso_ms(group[-1].end)
        ids = ", ".join(str(record.id) for record in group)
        claimed = await self._all(
            f"UPDATE exports SET request_start = ?, request_end = ?, "  # noqa: S608 - ids are ints
            f"state = CASE WHEN id = ? THEN state ELSE 'submitted' END, "
            f"attempts = CASE WHEN id = ? THEN attempts ELSE attempts + 1 END, "
            f"submitted_at = COALESCE(submitted_at, ?), reason = NULL, updated_at = ? "
            f"WHERE id IN ({ids}) AND (id = ? OR state = 'queued') RETURNING *",
            start,
            end,
            leader.id,
            leader.id,
            now,
            now,
            leader.id,
        )
        return sorted(claimed, key=lambda record: record.start)

    @_state_errors
    async def mark_ready(self, export_id: int, created_date: str | None) -> None:
        rows = await self._update(
            export_id,
            "workspace, type, ready_at - submitted_at, attempts",
            state=LedgerState.READY,
            ready_at=time.time(),
            created_date=created_date,
        )
        for workspace, type_, span, attempts in rows:
            if attempts == 1 and span is not None:  # a resubmitted export's span is not one
                self.times.add(workspace, type_, span)

    @_state_errors
    async def mark_done(
        self,
        export_id: int,
        *,
        destination: str,
        records: int,
        payload_bytes: int,
        payload_sha256: str,
        requests: int,
        created_date: str | None,
        file_bytes: int | None = None,
        file_sha256: str | None = None,
    ) -> None:
        await self._update(
            export_id,
            state=LedgerState.DONE,
            destination=destination,
            file_bytes=file_bytes,
            file_sha256=file_sha256,
            records=records,
            payload_bytes=payload_bytes,
            payload_sha256=payload_sha256,
            requests=requests,
            created_date=created_date,
            reason=None,
            failures=0,
            last_error=None,
            finished_at=time.time(),
        )

    @_state_errors
    async def adopt_stored(
        self,
        job: str,
        workspace: str,
        found: Iterable[tuple[str, ExportWindow, str, int]],
        mode: ExportMode = ExportMode.WINDOWS,
    ) -> int:
        """Record windows (or snapshots) whose file the output store holds, proven
        whole, as done.

        ``found``: (type, window, location, file bytes). Rows not yet done become
        done; missing rows are created done. Returns how many rows changed.
        """
        now = time.time()
        rows = [
            (workspace, t, iso_ms(w.start), iso_ms(w.end), job, mode, where, size, now, now, now)
            for t, w, where, size in found
        ]
        if not rows:
            return 0
        return await self._many(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, mode, state, "
            "destination, file_bytes, planned_at, finished_at, updated_at, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, 'found in the output store') "
            "ON CONFLICT (workspace, type, window_start, window_end) DO UPDATE SET "
            "state = 'done', destination = excluded.destination, "
            "file_bytes = excluded.file_bytes, reason = excluded.reason, "
            "failures = 0, last_error = NULL, "
            "finished_at = excluded.finished_at, updated_at = excluded.updated_at "
            "WHERE state != 'done'",
            rows,
        )

    @_state_errors
    async def retry_failed(self, job: str, workspace: str) -> list[ExportRecord]:
        """The job's failed windows queued again, wherever they lie (a failed backfill
        window is outside the catch-up horizon that ``plan`` re-queues)."""
        now = time.time()
        return await self._all(
            "UPDATE exports SET state = 'queued', updated_at = ? WHERE job = ? AND "
            "workspace = ? AND state = 'failed' AND mode = 'windows' RETURNING *",
            now,
            job,
            workspace,
        )

    @_state_errors
    async def restate(
        self,
        job: str,
        workspace: str,
        types: Iterable[str],
        restate_s: float,
        ended_before: datetime,
        ended_after: datetime,
    ) -> list[ExportRecord]:
        """Queue once more (revision 2) the job's done windows that were exported
        while younger than ``restate_s`` and have since become that old (ending in
        ``(ended_after, ended_before]``). A window restated, found in the store (no
        known sha) or first exported when already old is not restated."""
        kinds = list(types)
        if not kinds:
            return []
        marks = ", ".join("?" for _ in kinds)
        now = time.time()
        return await self._all(
            "UPDATE exports SET state = 'queued', revision = 2, attempts = 0, requests = 0, "  # noqa: S608
            "created_date = NULL, submitted_at = NULL, ready_at = NULL, finished_at = NULL, "
            "request_start = NULL, request_end = NULL, reason = 'restated', updated_at = ? "
            f"WHERE job = ? AND workspace = ? AND type IN ({marks}) AND mode = 'windows' "
            "AND state = 'done' AND revision = 1 AND file_sha256 IS NOT NULL "
            "AND window_end <= ? AND window_end > ? "
            "AND finished_at < CAST(strftime('%s', window_end) AS REAL) + ? "
            "RETURNING *",
            now,
            job,
            workspace,
            *kinds,
            iso_ms(ended_before),
            iso_ms(ended_after),
            restate_s,
        )

    @_state_errors
    async def plan_snapshot(
        self, job: str, workspace: str, type_: str, window: ExportWindow
    ) -> ExportRecord:
        """Queue a snapshot of ``window`` (from snapshot_from to the as-of time). A
        failed snapshot of the job's type is not retried as it was: it becomes this
        one (its data would be out of date), so failures do not pile up."""
        now = time.time()
        reused = await self._one(
            "UPDATE exports SET window_start = ?, window_end = ?, state = 'queued', "
            "attempts = 0, requests = 0, created_date = NULL, submitted_at = NULL, "
            "ready_at = NULL, finished_at = NULL, planned_at = ?, updated_at = ?, "
            "reason = 'the snapshot before failed: ' || COALESCE(reason, '') "
            "WHERE id = (SELECT id FROM exports WHERE job = ? AND workspace = ? AND type = ? "
            "AND mode = 'snapshot' AND state = 'failed' ORDER BY window_end DESC LIMIT 1) "
            "RETURNING *",
            iso_ms(window.start),
            iso_ms(window.end),
            now,
            now,
            job,
            workspace,
            type_,
        )
        if reused is not None:
            return reused
        row = await self._one(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, mode, "
            "state, planned_at, updated_at) VALUES (?, ?, ?, ?, ?, 'snapshot', 'queued', ?, ?) "
            "ON CONFLICT (workspace, type, window_start, window_end) DO UPDATE SET "
            "updated_at = excluded.updated_at RETURNING *",
            workspace,
            type_,
            iso_ms(window.start),
            iso_ms(window.end),
            job,
            now,
            now,
        )
        assert row is not None  # an upsert returns its row
        return row

    @_state_errors
    async def snapshots(self, job: str, workspace: str, type_: str) -> list[ExportRecord]:
        """The job's snapshot rows of a type still active, and its newest done one."""
        return await self._all(
            "SELECT * FROM exports WHERE job = ? AND workspace = ? AND type = ? AND "
            "mode = 'snapshot' AND (state IN ('queued', 'submitted', 'ready') OR id = "
            "(SELECT id FROM exports WHERE job = ? AND workspace = ? AND type = ? AND "
            "mode = 'snapshot' AND state = 'done' ORDER BY window_end DESC LIMIT 1)) "
            "ORDER BY window_end",
            job,
            workspace,
            type_,
            job,
            workspace,
            type_,
        )

    @_state_errors
    async def done_files(
        self, workspace: str, types: Iterable[str], windows: Sequence[ExportWindow]
    ) -> dict[tuple[str, ExportWindow], tuple[int, int | None]]:
        """(type, window) -> (row id, file bytes if known) of the windows recorded done."""
        if not windows:
            return {}
        wanted = {(t, iso_ms(w.start), iso_ms(w.end)): w for t in types for w in windows}
        rows = await self._rows(
            "SELECT id, type, window_start, window_end, file_bytes FROM exports "
            "WHERE workspace = ? AND state = 'done' AND window_start >= ? AND window_start <= ?",
            workspace,
            iso_ms(min(w.start for w in windows)),
            iso_ms(max(w.start for w in windows)),
        )
        found: dict[tuple[str, ExportWindow], tuple[int, int | None]] = {}
        for export_id, type_, start, end, size in rows:
            window = wanted.get((type_, start, end))
            if window is not None:
                found[(type_, window)] = (export_id, size)
        return found

    @_state_errors
    async def requeue(self, export_ids: Iterable[int], reason: str) -> int:
        """Done rows back to queued (their file is gone from the output store)."""
        now = time.time()
        return await self._many(
            "UPDATE exports SET state = 'queued', reason = ?, updated_at = ?, "
            "request_start = NULL, request_end = NULL WHERE id = ? AND state = 'done'",
            [(reason, now, export_id) for export_id in export_ids],
        )

    @_state_errors
    async def release(self, export_ids: Iterable[int]) -> int:
        """Windows of a coalesced request that ended without them back to queued, to be
        asked for again (their attempt not counted)."""
        now = time.time()
        return await self._many(
            "UPDATE exports SET state = 'queued', attempts = max(attempts - 1, 0), "
            "request_start = NULL, request_end = NULL, updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'submitted', 'ready')",
            [(now, export_id) for export_id in export_ids],
        )

    @_state_errors
    async def troubled(self) -> list[ExportRecord]:
        """Failed rows, and rows being retried after failing, wherever they lie (a
        backfill's lie before the catch-up horizon the status page reads)."""
        return await self._all(
            "SELECT * FROM exports WHERE state = 'failed' OR (failures > 0 AND state IN "
            "('queued', 'submitted', 'ready'))"
        )

    @_state_errors
    async def cancel(self, job: str, start_from: str, start_before: str) -> tuple[int, int]:
        """Drop the job's queued and failed windows starting in ``[start_from,
        start_before)`` (ISO, UTC); returns (dropped, left running at AC)."""
        dropped = await self._rows(
            "DELETE FROM exports WHERE job = ? AND mode = 'windows' AND state IN "
            "('queued', 'failed') AND window_start >= ? AND window_start < ? RETURNING id",
            job,
            start_from,
            start_before,
        )
        running = await self._rows(
            "SELECT count(*) FROM exports WHERE job = ? AND mode = 'windows' AND state IN "
            "('submitted', 'ready') AND window_start >= ? AND window_start < ?",
            job,
            start_from,
            start_before,
        )
        return len(dropped), int(running[0][0])

    @_state_errors
    async def state_id(self) -> str:
        """This state directory's identity (made on first use; a copy shares it)."""
        await self._rows(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('state_id', ?)", uuid.uuid4().hex
        )
        rows = await self._rows("SELECT value FROM meta WHERE key = 'state_id'")
        return str(rows[0][0])

    @_state_errors
    async def replace_meta(self, key: str, value: str) -> str | None:
        """Record a fact about this state directory; the value it replaces, if any."""
        rows = await self._rows("SELECT value FROM meta WHERE key = ?", key)
        await self._rows(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            key,
            value,
        )
        return str(rows[0][0]) if rows else None

    @_state_errors
    async def mark_beyond_retention(
        self,
        job: str,
        workspace: str,
        types: Iterable[str],
        windows: Iterable[ExportWindow],
        reason: str,
    ) -> int:
        """Record windows before AC's retention as such, once and for good: new rows,
        and rows still queued or failed (not one AC is working on, nor a done one).
        Returns how many rows changed."""
        now = time.time()
        rows = [
            (workspace, t, iso_ms(w.start), iso_ms(w.end), job, reason, now, now, now)
            for t in types
            for w in windows
        ]
        if not rows:
            return 0
        return await self._many(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, state, "
            "reason, planned_at, finished_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'beyond_retention', ?, ?, ?, ?) "
            "ON CONFLICT (workspace, type, window_start, window_end) DO UPDATE SET "
            "state = 'beyond_retention', reason = excluded.reason, "
            "finished_at = excluded.finished_at, updated_at = excluded.updated_at "
            "WHERE state IN ('queued', 'failed')",
            rows,
        )

    @_state_errors
    async def mark_row_beyond_retention(self, export_id: int, reason: str) -> None:
        """One row AC refused (or would refuse) as before its retention: final."""
        await self._update(
            export_id,
            state=LedgerState.BEYOND_RETENTION,
            reason=reason,
            finished_at=time.time(),
        )

    @_state_errors
    async def learned_retention(self, workspace: str) -> int | None:
        """The retention (months) AC named for this workspace when it refused a window."""
        if workspace not in self._retention:
            rows = await self._rows(
                "SELECT value FROM meta WHERE key = ?", f"retention_months/{workspace}"
            )
            self._retention[workspace] = int(rows[0][0]) if rows else None
        return self._retention[workspace]

    @_state_errors
    async def learn_retention(self, workspace: str, months: int) -> None:
        await self.replace_meta(f"retention_months/{workspace}", str(months))
        self._retention[workspace] = months

    @_state_errors
    async def mark_failed(self, export_id: int, reason: str) -> None:
        """Failed; no longer part of a coalesced request (a retry asks anew)."""
        now = time.time()
        await self._rows(
            "UPDATE exports SET state = 'failed', reason = ?, last_error = ?, "
            "failures = failures + 1, finished_at = ?, updated_at = ?, "
            "request_start = NULL, request_end = NULL WHERE id = ?",
            reason,
            reason,
            now,
            now,
            export_id,
        )

    @_state_errors
    async def expected_processing_s(self, workspace: str, type_: str) -> float | None:
        """Median submit-to-ready time of the last five clean exports of this kind.

        Ready rows count too: the previous export's time is known (and recorded)
        before the next one is submitted, while it still downloads.
        """
        await self._read_workspace_times(workspace)
        return self.times.median(workspace, type_)

    @_state_errors
    async def similar_processing_s(self, workspace: str, type_: str) -> float | None:
        """For a first export of its kind: the median of this type in any workspace,
        else of any type in this workspace."""
        await self._read_workspace_times(workspace)
        if type_ not in self.times.types:
            rows = await self._rows(
                f"SELECT {_SPAN} FROM exports WHERE type = ? AND {_CLEAN_SPAN} "  # noqa: S608
                "ORDER BY ready_at DESC LIMIT ?",
                type_,
                LAST,
            )
            self.times.load_type(type_, [row[0] for row in rows])
        return self.times.median(ANY, type_) or self.times.median(workspace, ANY)

    async def _read_workspace_times(self, workspace: str) -> None:
        if workspace in self.times.workspaces:
            return
        rows = await self._rows(
            f"SELECT type, span FROM (SELECT type, ready_at, {_SPAN} AS span, "  # noqa: S608
            "ROW_NUMBER() OVER (PARTITION BY type ORDER BY ready_at DESC) AS newness "
            f"FROM exports WHERE workspace = ? AND {_CLEAN_SPAN}) "
            "WHERE newness <= ? ORDER BY ready_at DESC",
            workspace,
            LAST,
        )
        self.times.load_workspace(workspace, [(row[0], row[1]) for row in rows])

    @_state_errors
    async def oldest_unfinished_by_job(self) -> dict[str, float]:
        """Per job, the end (epoch seconds) of the oldest window not yet done."""
        rows = await self._rows(
            "SELECT job, MIN(window_end) FROM exports "
            "WHERE state NOT IN ('done', 'beyond_retention') GROUP BY job"
        )
        return {row[0]: parse_time(row[1]).timestamp() for row in rows}

    @_state_errors
    async def rows_ending_after(self, when: datetime) -> list[ExportRecord]:
        """Rows of windows that end after ``when`` (keys are UTC ISO text: they sort)."""
        return await self._all(
            "SELECT * FROM exports WHERE window_end > ? ORDER BY job, window_start, type",
            iso_ms(when),
        )

    @_state_errors
    async def all_rows(self) -> list[ExportRecord]:
        return await self._all("SELECT * FROM exports ORDER BY job, window_start, type")


async def read_rows(state_dir: Path) -> list[ExportRecord]:
    """Every ledger row, read-only (a daemon may be writing); none before the first run."""
    return await _read_only(state_dir, lambda ledger: ledger.all_rows(), [])


async def read_learned_retention(state_dir: Path, workspaces: Iterable[str]) -> dict[str, int]:
    """The retention (months) AC's refusals named, by workspace, read-only."""

    async def learned(ledger: Ledger) -> dict[str, int]:
        found = {ws: await ledger.learned_retention(ws) for ws in workspaces}
        return {ws: months for ws, months in found.items() if months is not None}

    return await _read_only(state_dir, learned, {})


async def _read_only(state_dir: Path, read: Callable[[Ledger], Awaitable[T]], none: T) -> T:
    """``read`` of the ledger opened read-only; ``none`` before the first run."""
    path = ledger_path(state_dir)
    try:
        path.stat()
    except FileNotFoundError:
        return none
    except OSError as exc:  # e.g. systemd's DynamicUser state dir, seen by another user
        raise StateError(f"cannot read the state database {path}: {exc.strerror}") from None
    ledger = await Ledger.open(path, readonly=True)
    try:
        return await read(ledger)
    finally:
        await ledger.close()
