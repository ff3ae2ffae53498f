"""The life of a ledger row: planned, claimed, ready, done or failed, adopted from
the output store, restated, re-queued when its file went missing, cancelled; and
the queries that read rows."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime

from ..protocol import ExportMode
from ..windows import ExportWindow, iso_ms
from .connection import LedgerConnection, state_errors
from .rows import DoneFile, ExportRecord, LedgerState, parse_time

REEXPORT_REASON = "re-export asked for"  # a queued row's reason: its next revision, whatever
# How the reason of a restatement that kept the previous revision starts (both kinds:
# "restated unchanged", "restatement kept"), so that ``restate`` never picks it again.
KEPT_PREVIOUS = "restate"


class ExportRows(LedgerConnection):
    """Rows and their states."""

    @state_errors
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

    @state_errors
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

    @state_errors
    async def get(self, export_id: int) -> ExportRecord | None:
        return await self._one("SELECT * FROM exports WHERE id = ?", export_id)

    @state_errors
    async def claim(
        self, export_id: int, ready_since: float, kept_from: str = ""
    ) -> ExportRecord | None:
        """Start working on a row, in one statement: None if it is no longer active, or
        is a queued window that ended by ``kept_from`` (its job's keep deletes it).

        Ready data younger than ``ready_since`` (epoch seconds) is downloaded as it
        is; anything else is (re)submitted: state submitted, one attempt more.
        """
        fresh = "state = 'ready' AND ready_at IS NOT NULL AND ready_at > ?"
        now = time.time()
        return await self._one(
            f"UPDATE exports SET state = CASE WHEN {fresh} THEN 'ready' ELSE 'submitted' END, "  # noqa: S608
            f"attempts = attempts + CASE WHEN {fresh} THEN 0 ELSE 1 END, "
            f"reason = NULL, submitted_at = COALESCE(submitted_at, ?), updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'submitted', 'ready') "
            "AND NOT (state = 'queued' AND mode = 'windows' AND window_end <= ?) RETURNING *",
            ready_since,
            ready_since,
            now,
            now,
            export_id,
            kept_from,  # "": before every window
        )

    @state_errors
    async def mark_ready(
        self, export_id: int, created_date: str | None, processing_s: float | None = None
    ) -> None:
        """Ready data; ``processing_s`` is AC's time as the export measured it, from the
        request that submitted to the one that found the data (the row's submitted_at,
        set when it was claimed, is earlier: by the lane's own statements and waits)."""
        now = time.time()
        submitted = {} if processing_s is None else {"submitted_at": now - processing_s}
        rows = await self._update(
            export_id,
            "workspace, type, ready_at - submitted_at, attempts",
            state=LedgerState.READY,
            ready_at=now,
            created_date=created_date,
            **submitted,
        )
        for workspace, type_, span, attempts in rows:
            if attempts == 1 and span is not None:  # a resubmitted export's span is not one
                self.times.add(workspace, type_, span)

    @state_errors
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
            reexport=0,
            finished_at=time.time(),
        )

    @state_errors
    async def adopt_stored(
        self,
        job: str,
        workspace: str,
        found: Iterable[tuple[str, ExportWindow, str, int, int, str | None]],
        mode: ExportMode = ExportMode.WINDOWS,
    ) -> int:
        """Record windows (or snapshots) whose file the output store holds, proven
        whole, as done.

        ``found``: (type, window, location, file bytes, revision, file sha256) as the
        stored manifest says. Rows not yet done become done if the file is of their
        revision or a later one (a restatement is not done by the file it replaces);
        missing rows are created done. Returns how many rows changed.
        """
        now = time.time()
        rows = [
            (workspace, t, iso_ms(w.start), iso_ms(w.end), job, mode, where, size,
             revision, sha, now, now, now)
            for t, w, where, size, revision, sha in found
        ]  # fmt: skip
        if not rows:
            return 0
        return await self._many(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, mode, state, "
            "destination, file_bytes, revision, file_sha256, planned_at, finished_at, "
            "updated_at, reason) VALUES (?, ?, ?, ?, ?, ?, 'done', ?, ?, ?, ?, ?, ?, ?, "
            "'found in the output store') "
            "ON CONFLICT (workspace, type, window_start, window_end) DO UPDATE SET "
            "state = 'done', destination = excluded.destination, "
            "file_bytes = excluded.file_bytes, reason = excluded.reason, "
            "revision = excluded.revision, "
            "file_sha256 = COALESCE(excluded.file_sha256, file_sha256), "
            "failures = 0, last_error = NULL, "
            "finished_at = excluded.finished_at, updated_at = excluded.updated_at "
            "WHERE state != 'done' AND excluded.revision >= revision",
            rows,
        )

    @state_errors
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

    @state_errors
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
        known sha) or first exported when already old is not restated. A restatement
        that kept the previous revision is told by its reason, not by when it ended:
        a clock behind the planner's (the model test's, or a stepped one) made it
        young again, restated at every look."""
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
            f"AND COALESCE(reason, '') NOT LIKE '{KEPT_PREVIOUS}%' "
            "RETURNING *",
            now,
            job,
            workspace,
            *kinds,
            iso_ms(ended_before),
            iso_ms(ended_after),
            restate_s,
        )

    @state_errors
    async def keep_previous_revision(self, export_id: int, reason: str) -> None:
        """A restatement refused: the row done again at the revision its file is (its
        sha and records unchanged), never restated again (``reason`` starts with
        ``KEPT_PREVIOUS``, which ``restate`` skips)."""
        if not reason.startswith(KEPT_PREVIOUS):
            raise ValueError(f"a kept restatement's reason starts with {KEPT_PREVIOUS!r}")
        now = time.time()
        await self._rows(
            "UPDATE exports SET state = 'done', revision = max(revision - 1, 1), reason = ?, "
            "failures = 0, last_error = NULL, finished_at = ?, updated_at = ? WHERE id = ?",
            reason,
            now,
            now,
            export_id,
        )

    @state_errors
    async def mark_failed(
        self, export_id: int, reason: str, *, max_windows: int | None = None
    ) -> None:
        """Failed; no longer part of a coalesced request (a retry asks anew), and, when
        ``max_windows`` is given, never again in a request of more windows."""
        now = time.time()
        await self._rows(
            "UPDATE exports SET state = 'failed', reason = ?, last_error = ?, "
            "failures = failures + 1, finished_at = ?, updated_at = ?, "
            "request_start = NULL, request_end = NULL, "
            "max_windows = COALESCE(?, max_windows) WHERE id = ?",
            reason,
            reason,
            now,
            now,
            max_windows,
            export_id,
        )

    @state_errors
    async def done_files(
        self, workspace: str, types: Iterable[str], windows: Sequence[ExportWindow]
    ) -> dict[tuple[str, ExportWindow], DoneFile]:
        """(type, window) -> its row and file, of the windows recorded done."""
        if not windows:
            return {}
        wanted = {(t, iso_ms(w.start), iso_ms(w.end)): w for t in types for w in windows}
        rows = await self._rows(
            "SELECT id, type, window_start, window_end, file_bytes, destination FROM exports "
            "WHERE workspace = ? AND state = 'done' AND window_start >= ? AND window_start <= ?",
            workspace,
            iso_ms(min(w.start for w in windows)),
            iso_ms(max(w.start for w in windows)),
        )
        found: dict[tuple[str, ExportWindow], DoneFile] = {}
        for export_id, type_, start, end, size, destination in rows:
            window = wanted.get((type_, start, end))
            if window is not None:
                found[(type_, window)] = DoneFile(export_id, size, destination)
        return found

    @state_errors
    async def requeue(self, export_ids: Iterable[int], reason: str) -> int:
        """Done rows back to queued (their file is gone from the output store, so the
        ledger no longer names one: the next file replaces nothing)."""
        now = time.time()
        return await self._many(
            "UPDATE exports SET state = 'queued', reason = ?, updated_at = ?, "
            "request_start = NULL, request_end = NULL, destination = NULL "
            "WHERE id = ? AND state = 'done'",
            [(reason, now, export_id) for export_id in export_ids],
        )

    @state_errors
    async def reexport(
        self, job: str, workspace: str, types: Iterable[str], start: datetime, end: datetime
    ) -> list[ExportRecord]:
        """Queue the job's done windows of ``types`` within ``[start, end)`` once more,
        as their next revision (``acexport reexport``): replaced even if AC serves the
        same bytes, since the operator asked."""
        kinds = list(types)
        if not kinds:
            return []
        marks = ", ".join("?" for _ in kinds)
        return await self._all(
            "UPDATE exports SET state = 'queued', revision = revision + 1, attempts = 0, "  # noqa: S608
            "requests = 0, created_date = NULL, submitted_at = NULL, ready_at = NULL, "
            "finished_at = NULL, request_start = NULL, request_end = NULL, max_windows = NULL, "
            "reason = ?, reexport = 1, updated_at = ? "
            f"WHERE job = ? AND workspace = ? AND type IN ({marks}) AND mode = 'windows' "
            "AND state = 'done' AND window_start >= ? AND window_end <= ? RETURNING *",
            REEXPORT_REASON,
            time.time(),
            job,
            workspace,
            *kinds,
            iso_ms(start),
            iso_ms(end),
        )

    @state_errors
    async def expirable(
        self, job: str, workspace: str, ended_by: datetime, limit: int
    ) -> list[ExportRecord]:
        """The job's windows, done, failed or queued, that ended by ``ended_by`` (its
        ``keep``), oldest first, at most ``limit``. A queued one (left by a stop, or a
        restatement due) is not asked of AC only to be deleted at the next look; one
        at AC already ends first (a lane may be committing it)."""
        return await self._all(
            "SELECT * FROM exports WHERE job = ? AND workspace = ? AND mode = 'windows' "
            "AND state IN ('done', 'failed', 'queued') AND window_end <= ? "
            "ORDER BY window_end LIMIT ?",
            job,
            workspace,
            iso_ms(ended_by),
            limit,
        )

    @state_errors
    async def expired_by_job(self) -> dict[str, int]:
        """How many windows each job's keep deleted."""
        rows = await self._rows(
            "SELECT job, count(*) FROM exports WHERE state = 'expired' GROUP BY job"
        )
        return {str(row[0]): int(row[1]) for row in rows}

    @state_errors
    async def mark_expired(self, export_ids: Iterable[int]) -> int:
        """Final: the windows' files are deleted; never exported or adopted again."""
        return await self._many(
            "UPDATE exports SET state = 'expired', reason = 'deleted by keep', updated_at = ? "
            "WHERE id = ? AND state IN ('done', 'failed', 'queued')",  # not those at AC
            [(time.time(), export_id) for export_id in export_ids],
        )

    @state_errors
    async def troubled(self) -> list[ExportRecord]:
        """Failed rows, and rows being retried after failing, wherever they lie (a
        backfill's lie before the catch-up horizon the status page reads)."""
        return await self._all(
            "SELECT * FROM exports WHERE state = 'failed' OR (failures > 0 AND state IN "
            "('queued', 'submitted', 'ready'))"
        )

    @state_errors
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

    @state_errors
    async def oldest_unfinished_by_job(self) -> dict[str, float]:
        """Per job, the end (epoch seconds) of the oldest window not yet done."""
        rows = await self._rows(
            "SELECT job, MIN(window_end) FROM exports "
            "WHERE state NOT IN ('done', 'beyond_retention') GROUP BY job"
        )
        return {row[0]: parse_time(row[1]).timestamp() for row in rows}

    @state_errors
    async def rows_ending_after(self, when: datetime) -> list[ExportRecord]:
        """Rows of windows that end after ``when`` (keys are UTC ISO text: they sort)."""
        return await self._all(
            "SELECT * FROM exports WHERE window_end > ? ORDER BY job, window_start, type",
            iso_ms(when),
        )

    @state_errors
    async def all_rows(self) -> list[ExportRecord]:
        return await self._all("SELECT * FROM exports ORDER BY job, window_start, type")
