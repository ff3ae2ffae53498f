"""After a snapshot lands: its job keeps the newest ``keep_snapshots`` of the type."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import structlog

from ..errors import SinkError, StoreRejected, StoreUnavailable
from ..ledger import ExportRecord
from ..output.layout import OutputLayout
from ..output.snapshots import nothing_to_prune, prune_snapshots, stored_snapshots
from .context import LaneContext

log = structlog.get_logger("acexport.lane")


async def prune_snapshots_after(ctx: LaneContext, record: ExportRecord, zone: ZoneInfo) -> None:
    """Keep the newest ``keep_snapshots`` of the type, now that a new one is in."""
    settings = ctx.settings()
    job = settings.jobs_by_name.get(record.job)
    if job is None:
        return
    store = ctx.sink.store
    layout = OutputLayout.from_settings(settings.output)
    prefix = layout.snapshot_prefix(record.workspace, record.type, record.job)
    try:
        listed = await store.listed_under(prefix)  # one listing for both steps
        if nothing_to_prune(layout, listed, job.keep_snapshots):
            return
        stored = await stored_snapshots(
            store, layout, record.workspace, record.type, record.job, zone, listed
        )
        pruned, leftovers = await prune_snapshots(
            store, layout, prefix, stored, job.keep_snapshots, listed
        )
    except (StoreUnavailable, StoreRejected, SinkError) as exc:
        log.warning("snapshots_not_pruned", error=str(exc), detail="the next one prunes")
        return
    except Exception as exc:
        # The snapshot is committed and recorded done: a pruning bug must not turn
        # it into a failed export (its row would become the next snapshot's).
        log.exception("snapshots_not_pruned", kind=type(exc).__name__)
        return
    if pruned or leftovers:
        log.info(
            "snapshots_pruned",
            count=len(pruned),
            kept=job.keep_snapshots,
            newest_pruned=pruned[-1].as_of.isoformat() if pruned else None,
            leftovers_removed=leftovers,
        )
