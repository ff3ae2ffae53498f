"""Coalescing: the consecutive queued windows one AC request serves, claimed
together and sharing that request's range, and their release when it ends
without them."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import timedelta

from ..windows import iso_ms, one_request_each
from .connection import LedgerConnection, state_errors
from .rows import ExportRecord


class Coalescing(LedgerConnection):
    """Windows grouped into one AC request."""

    @state_errors
    async def coalescable(
        self, leader: ExportRecord, max_span: timedelta, max_windows: int
    ) -> list[ExportRecord]:
        """The windows one AC request could serve, oldest first, ``leader`` (claimed)
        among them; ``claim_together`` claims them.

        A leader already in a coalesced request (a restart resuming it) gets that
        request's active rows. Otherwise the leader (the caller says it was queued: no
        AC export of its own outstanding) takes the queued windows of its job and type
        that follow it without a gap, up to ``max_span`` from its start and
        ``max_windows`` in all.
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
            "mode = 'windows' AND (revision = 1 OR reexport = 1) AND state = 'queued' "
            "AND request_start IS NULL "
            "AND window_start >= ? AND window_start < ? ORDER BY window_start LIMIT ?",
            leader.job,
            leader.workspace,
            leader.type,
            iso_ms(leader.end),
            iso_ms(leader.start + max_span),
            max_windows - 1,
        )
        return _within_caps(one_request_each([leader, *following], max_span, max_windows)[0])

    @state_errors
    async def claim_together(
        self, leader: ExportRecord, group: list[ExportRecord]
    ) -> list[ExportRecord]:
        """The group claimed as one request: its range on every row, the queued ones
        submitted with the (already claimed) leader. A lone window, or a resumed
        request's rows (claimed when it began), need no statement."""
        if len(group) < 2 or leader.request_start is not None:
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

    @state_errors
    async def release(self, export_ids: Iterable[int]) -> int:
        """Windows of a coalesced request that ended without them back to queued, to be
        asked for again (their attempt not counted): in a request of their own, so AC's
        export and ready data the rows named are no longer theirs (kept, the lane took
        them for ready data and said AC had let it expire)."""
        now = time.time()
        return await self._many(
            "UPDATE exports SET state = 'queued', attempts = max(attempts - 1, 0), "
            "request_start = NULL, request_end = NULL, created_date = NULL, ready_at = NULL, "
            "updated_at = ? "
            "WHERE id = ? AND state IN ('queued', 'submitted', 'ready')",
            [(now, export_id) for export_id in export_ids],
        )


def _within_caps(group: list[ExportRecord]) -> list[ExportRecord]:
    """The group cut where a member's own cap (``max_windows``, set when a request of
    it failed) says it may not be served with so many."""
    cap = len(group)
    kept: list[ExportRecord] = []
    for record in group:
        if record.max_windows is not None:
            cap = min(cap, record.max_windows)
        if len(kept) >= cap:
            break
        kept.append(record)
    return kept
