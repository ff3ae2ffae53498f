"""After a snapshot lands: its job keeps the newest ``keep_snapshots`` of the type."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import structlog

from ..errors import SinkError, StoreRejected, StoreUnavailable
from ..export import StoredFile
from ..ledger import ExportRecord
from ..output.layout import OutputLayout
from ..output.snapshots import (
    StoredSnapshot,
    nothing_to_prune,
    prune_oldest,
    prune_snapshots,
    stored_snapshots,
)
from ..output.store import OutputStore
from .context import LaneContext

log = structlog.get_logger("acexport.lane")


async def prune_snapshots_after(
    ctx: LaneContext, record: ExportRecord, zone: ZoneInfo, committed: StoredFile
) -> None:
    """Keep the newest ``keep_snapshots`` of the type, now that ``committed`` is in:
    of the snapshots the planner listed and this daemon wrote since (no listing), or,
    for a series not known, of those a listing finds."""
    settings = ctx.settings()
    job = settings.jobs_by_name.get(record.job)
    if job is None:
        return
    store = ctx.sink.store
    series = (record.job, record.workspace, record.type)
    leftovers = 0
    try:  # all of it: the snapshot is done whatever happens here
        size, location = committed.manifest.file_bytes or 0, store.location(committed.key)
        snapshot = StoredSnapshot(committed.key, size, committed.window, location)
        known = ctx.snapshots.committed(series, snapshot)
        if known is None:
            layout = OutputLayout.from_settings(settings.output)
            known, pruned, leftovers = await _list_and_prune(
                store, layout, record, zone, job.keep_snapshots
            )
        else:
            pruned = await prune_oldest(store, known, job.keep_snapshots)
        ctx.snapshots.learn(series, known[len(pruned) :])
    except (StoreUnavailable, StoreRejected, SinkError) as exc:
        ctx.snapshots.forget(series)  # what is left is not known: the next one lists
        log.warning("snapshots_not_pruned", error=str(exc), detail="the next one prunes")
        return
    except Exception as exc:
        # The snapshot is committed and recorded done: a pruning bug must not turn
        # it into a failed export (its row would become the next snapshot's).
        ctx.snapshots.forget(series)
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


async def _list_and_prune(
    store: OutputStore, layout: OutputLayout, record: ExportRecord, zone: ZoneInfo, keep: int
) -> tuple[list[StoredSnapshot], list[StoredSnapshot], int]:
    """The series' snapshots as a listing proves them, those of them pruned, and how
    many files a prune stopped half way had left."""
    prefix = layout.snapshot_prefix(record.workspace, record.type, record.job)
    listed = await store.listed_under(prefix)  # one listing for both steps
    stored = await stored_snapshots(
        store, layout, record.workspace, record.type, record.job, zone, listed
    )
    if nothing_to_prune(layout, listed, keep):
        return stored, [], 0
    pruned, leftovers = await prune_snapshots(store, layout, prefix, stored, keep, listed)
    return stored, pruned, leftovers
