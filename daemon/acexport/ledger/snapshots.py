"""Snapshot rows: an entity table's export as of a look, one queued per look
(a failed one becomes the next), and the job's newest done one."""

from __future__ import annotations

import time

from ..windows import ExportWindow, iso_ms
from .connection import LedgerConnection, state_errors
from .rows import ExportRecord


class Snapshots(LedgerConnection):
    """A job's snapshots of a type."""

    @state_errors
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

    @state_errors
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
