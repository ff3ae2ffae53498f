"""Hook events and each hook's queue of deliveries (schema version 8).

An export about to run stages its event, with a delivery row for each hook that
wants it; the trigger ``hook_events_committed`` commits the event (its body built
from the row) in the very statement that marks the row done. A delivery is due
once its event is committed, in commit order per hook.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .connection import LedgerConnection, state_errors
from .rows import ExportRecord


def event_id(record: ExportRecord) -> str:
    """The same for every delivery of one file, different for each revision."""
    key = (
        "\0".join((record.job, record.type, record.start.isoformat(), record.end.isoformat()))
        + f"\0{record.revision}"
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Delivery:
    """The head of a hook's queue: an event committed and not yet delivered."""

    seq: int
    attempts: int
    next_at: float
    committed_at: float
    body: str


@dataclass(frozen=True)
class HookBacklog:
    """A hook's queue as ``status`` shows it."""

    pending: int = 0
    oldest_pending_at: float | None = None  # when the oldest pending event was committed
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None


class HookQueue(LedgerConnection):
    """Events staged, committed and delivered."""

    @state_errors
    async def stage_events(self, staged: Iterable[tuple[ExportRecord, list[str]]]) -> None:
        """Each record's event for its revision, and a delivery for each named hook;
        staging again (a retried export) changes nothing."""
        now = time.time()
        rows = [(event_id(record), record, hooks) for record, hooks in staged if hooks]
        if not rows:
            return
        await self._many(
            "INSERT OR IGNORE INTO hook_events (event_id, export_id, revision, staged_at) "
            "VALUES (?, ?, ?, ?)",
            [(key, record.id, record.revision, now) for key, record, _ in rows],
        )
        await self._many(
            "INSERT OR IGNORE INTO hook_deliveries (hook, seq, committed_at) "
            "SELECT ?, seq, committed_at FROM hook_events WHERE event_id = ?",
            [(hook, key) for key, _, hooks in rows for hook in hooks],
        )

    @state_errors
    async def unstage_events(self, export_id: int, revision: int) -> None:
        """The revision's event will not be committed (its file was kept as it was)."""
        await self._rows(
            "DELETE FROM hook_deliveries WHERE seq IN (SELECT seq FROM hook_events WHERE "
            "export_id = ? AND revision = ? AND committed_at IS NULL)",
            export_id,
            revision,
        )
        await self._rows(
            "DELETE FROM hook_events WHERE export_id = ? AND revision = ? AND committed_at IS NULL",
            export_id,
            revision,
        )

    @state_errors
    async def next_delivery(self, hook: str) -> Delivery | None:
        rows = await self._rows(
            "SELECT d.seq, d.attempts, d.next_at, d.committed_at, e.body "
            "FROM hook_deliveries d JOIN hook_events e ON e.seq = d.seq "
            "WHERE d.hook = ? AND d.state = 'pending' AND d.committed_at IS NOT NULL "
            "ORDER BY d.committed_at, d.seq LIMIT 1",
            hook,
        )
        return Delivery(*rows[0]) if rows else None

    @state_errors
    async def delivered(self, hook: str, seq: int) -> None:
        await self._rows(
            "UPDATE hook_deliveries SET state = 'delivered', attempts = attempts + 1, "
            "last_error = NULL, finished_at = ? WHERE hook = ? AND seq = ?",
            time.time(),
            hook,
            seq,
        )

    @state_errors
    async def retry_delivery(self, hook: str, seq: int, next_at: float, error: str) -> None:
        await self._rows(
            "UPDATE hook_deliveries SET attempts = attempts + 1, next_at = ?, last_error = ? "
            "WHERE hook = ? AND seq = ?",
            next_at,
            error,
            hook,
            seq,
        )

    @state_errors
    async def delivery_failed(self, hook: str, seq: int, error: str) -> None:
        await self._rows(
            "UPDATE hook_deliveries SET state = 'failed', attempts = attempts + 1, "
            "last_error = ?, finished_at = ? WHERE hook = ? AND seq = ?",
            error,
            time.time(),
            hook,
            seq,
        )

    @state_errors
    async def hook_backlogs(self, since: float) -> dict[str, HookBacklog]:
        """Each hook's pending (committed) events, and its deliveries and failures
        that ended after ``since``, with the newest error."""
        rows = await self._rows(
            "SELECT d.hook, "
            "SUM(d.state = 'pending' AND d.committed_at IS NOT NULL), "
            "MIN(CASE WHEN d.state = 'pending' THEN d.committed_at END), "
            "SUM(d.state = 'delivered' AND d.finished_at >= ?), "
            "SUM(d.state = 'failed' AND d.finished_at >= ?), "
            "(SELECT last_error FROM hook_deliveries x WHERE x.hook = d.hook AND "
            "x.last_error IS NOT NULL ORDER BY COALESCE(x.finished_at, x.next_at) DESC "
            "LIMIT 1) "
            "FROM hook_deliveries d GROUP BY d.hook",
            since,
            since,
        )
        return {
            hook: HookBacklog(pending or 0, oldest, delivered or 0, failed or 0, error)
            for hook, pending, oldest, delivered, failed, error in rows
        }

    @state_errors
    async def prune_hook_events(self, before: float) -> None:
        """Forget deliveries that ended before ``before``, events no hook still
        waits for, and events staged then that were never committed."""
        await self._rows(
            "DELETE FROM hook_deliveries WHERE state != 'pending' AND finished_at < ?", before
        )
        await self._rows(
            "DELETE FROM hook_deliveries WHERE seq IN (SELECT seq FROM hook_events WHERE "
            "committed_at IS NULL AND staged_at < ?)",
            before,
        )
        await self._rows(
            "DELETE FROM hook_events WHERE (committed_at IS NOT NULL OR staged_at < ?) AND "
            "seq NOT IN (SELECT seq FROM hook_deliveries)",
            before,
        )
