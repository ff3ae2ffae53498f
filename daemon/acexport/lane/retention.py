"""A lane's windows before AC's data retention: noticed before asking (the window
fell out while it waited), or refused by AC (final, and its months learned)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import structlog

from ..errors import BeyondRetention
from ..ledger import ExportRecord
from ..ops.logging import remote_text
from ..protocol import ExportMode
from ..retention import LearnedRetention, beyond_reason, refusal_fits
from .context import LaneContext

log = structlog.get_logger("acexport.lane")


async def before_retention(ctx: LaneContext, record: ExportRecord) -> bool:
    """A queued window that fell out of AC's retention while it waited (a backfill
    queued long ago, a daemon that was down) is recorded as such, not asked for."""
    if ctx.retention_start is None or record.mode is ExportMode.SNAPSHOT:
        # A snapshot starts at the retention's edge as planned; AC would refuse it
        # only after a day in the queue, and the next look plans a fresh one.
        return False
    earliest = await ctx.retention_start(record.workspace)
    if record.start >= earliest:
        return False
    reason = beyond_reason(earliest)
    await asyncio.shield(ctx.ledger.mark_row_beyond_retention(record.id, reason))
    log.warning("export_beyond_retention", reason=reason)
    return True


async def refused_as_beyond_retention(
    ctx: LaneContext, record: ExportRecord, exc: BeyondRetention, configured: int
) -> bool:
    """AC refused the window as before its retention: final, and its months learned,
    if the refusal can be true of this window (``refusal_fits``). False if it cannot:
    the caller fails the window as an ordinary rejection, visibly, and nothing is
    learned (a "0 months" once made every window of a workspace final)."""
    now = ctx.server_clock.now() if ctx.server_clock else datetime.now(UTC)
    if exc.months is None or not refusal_fits(exc.months, record.start, now):
        log.error(
            "retention_refusal_ignored",
            refused_months=exc.months,
            window=record.label(),
            detail="AC's refusal names a retention this window is not beyond: "
            "not learned, the window fails as a rejection",
        )
        return False
    reason = remote_text(f"{type(exc).__name__}: {exc}")
    await asyncio.shield(ctx.ledger.mark_row_beyond_retention(record.id, reason))
    learned = LearnedRetention(
        exc.months,
        configured,
        remote_text(f"AC refused {record.type} {record.label()}: {exc}"),
        now.isoformat(timespec="seconds"),
    )
    await ctx.ledger.learn_retention(record.workspace, learned)
    log.warning(
        "export_beyond_retention",
        reason=reason,
        learned_retention_months=exc.months,
        detail="AC's retention is shorter than configured; windows before it are "
        "no longer asked for",
    )
    return True
