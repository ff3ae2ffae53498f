"""Snapshot rows: an entity table's export as of a look, one queued per look
(a failed one becomes the next), and the job's newest done and failed ones."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..windows import ExportWindow, iso_ms
from .connection import LedgerConnection, state_errors
from .rows import ExportRecord, LedgerState


class Snapshots(LedgerConnection):
    """A job's snapshots of a type."""

    @state_errors
    async def plan_snapshot(
        self,
        job: str,
        workspace: str,
        type_: str,
        window: ExportWindow,
        found: Sequence[ExportRecord] = (),
    ) -> ExportRecord:
        """Queue a snapshot of ``window`` (from snapshot_from to the as-of time). The
        job's newest failed snapshot of the type (among ``found``, the type's rows as
        ``snapshots`` returned them) is not retried as it was: it becomes this one (its
        data would be out of date), so failures do not pile up."""
        now = time.time()
        failed = next((row for row in found if row.state is LedgerState.FAILED), None)
        if failed is not None:
            reused = await self._one(
                "UPDATE exports SET window_start = ?, window_end = ?, state = 'queued', "
                "attempts = 0, requests = 0, created_date = NULL, submitted_at = NULL, "
                "ready_at = NULL, finished_at = NULL, planned_at = ?, updated_at = ?, "
                "reason = 'the snapshot before failed: ' || COALESCE(reason, '') "
                "WHERE id = ? AND state = 'failed' RETURNING *",
                iso_ms(window.start),
                iso_ms(window.end),
                now,
                now,
                failed.id,
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
    async def snapshots(self, job: str, workspace: str) -> dict[str, list[ExportRecord]]:
        """The job's snapshot rows by type, oldest first: those still active, and its
        newest done and newest failed one. One statement for every type: a look at a
        thousand jobs made three per type."""
        rows = await self._all(
            "SELECT * FROM exports WHERE job = ? AND workspace = ? AND mode = 'snapshot' AND "
            "(state IN ('queued', 'submitted', 'ready') OR id IN (SELECT id FROM (SELECT id, "
            "ROW_NUMBER() OVER (PARTITION BY type, state ORDER BY window_end DESC) AS newness "
            "FROM exports WHERE job = ? AND workspace = ? AND mode = 'snapshot' AND "
            "state IN ('done', 'failed')) WHERE newness = 1)) ORDER BY window_end",
            job,
            workspace,
            job,
            workspace,
        )
        by_type: dict[str, list[ExportRecord]] = {}
        for row in rows:
            by_type.setdefault(row.type, []).append(row)
        return by_type
