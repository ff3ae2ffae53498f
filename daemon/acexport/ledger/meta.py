"""Facts about the state directory (its id, its output root) and about AC's
retention: what AC's refusals taught, and the windows recorded as before it."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from ..retention import LearnedRetention
from ..windows import ExportWindow, iso_ms
from .connection import LedgerConnection, state_errors
from .rows import LedgerState
from .sqlthread import SqlThread


class Meta(LedgerConnection):
    """The meta table, and retention."""

    def __init__(self, db: SqlThread, path: Path) -> None:
        super().__init__(db, path)
        self._retention: dict[str, LearnedRetention | None] = {}  # learned, by workspace

    @state_errors
    async def state_id(self) -> str:
        """This state directory's identity (made on first use; a copy shares it)."""
        await self._rows(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('state_id', ?)", uuid.uuid4().hex
        )
        rows = await self._rows("SELECT value FROM meta WHERE key = 'state_id'")
        return str(rows[0][0])

    @state_errors
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

    @state_errors
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

    @state_errors
    async def mark_row_beyond_retention(self, export_id: int, reason: str) -> None:
        """One row AC refused (or would refuse) as before its retention: final."""
        await self._update(
            export_id,
            state=LedgerState.BEYOND_RETENTION,
            reason=reason,
            finished_at=time.time(),
        )

    @state_errors
    async def learned_retention(self, workspace: str) -> LearnedRetention | None:
        """What AC's refusal named as this workspace's retention (whether it applies
        is ``effective_months``'s call: it depends on the configured retention)."""
        if workspace not in self._retention:
            try:
                rows = await self._rows(
                    "SELECT value FROM meta WHERE key = ?", f"retention_months/{workspace}"
                )
            except sqlite3.OperationalError:  # schema 1 or 2, read before a migration
                rows = []
            self._retention[workspace] = LearnedRetention.from_text(rows[0][0]) if rows else None
        return self._retention[workspace]

    @state_errors
    async def learn_retention(self, workspace: str, learned: LearnedRetention) -> None:
        await self.replace_meta(f"retention_months/{workspace}", learned.to_text())
        self._retention[workspace] = learned
