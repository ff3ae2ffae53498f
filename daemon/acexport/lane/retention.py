"""A lane's windows before AC's data retention: noticed before asking (the window
fell out while it waited), or refused by AC (final, and its months learned)."""

from __future__ import annotations

import asyncio

import structlog

from ..errors import BeyondRetention
from ..ledger import ExportRecord
from ..ops.logging import remote_text
from ..protocol import ExportMode
from ..retention import beyond_reason
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
    ctx: LaneContext, record: ExportRecord, exc: BeyondRetention
) -> None:
    """AC refused the window as before its retention: final, and its months learned."""
    reason = remote_text(f"{type(exc).__name__}: {exc}")
    await asyncio.shield(ctx.ledger.mark_row_beyond_retention(record.id, reason))
    if exc.months is not None:
        await ctx.ledger.learn_retention(record.workspace, exc.months)
    log.warning(
        "export_beyond_retention",
        reason=reason,
        learned_retention_months=exc.months,
        detail="AC's retention is shorter than configured; windows before it are "
        "no longer asked for",
    )
