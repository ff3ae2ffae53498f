"""A window's next revision: the guard a restatement carries, what happens when AC
serves far fewer records than the file it would replace, and the replaced file
removed when the new one has another name."""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

import structlog

from ..config import Settings
from ..errors import RestatementShrank, StoreRejected, StoreUnavailable
from ..export import ExportSpec
from ..ledger import ExportRecord
from ..output.store import key_at
from ..output.stored import delete_stored
from .context import LaneContext

log = structlog.get_logger("acexport.lane")


def guarded(spec: ExportSpec, record: ExportRecord, settings: Settings) -> ExportSpec:
    """A restatement must serve at least the job's share of the records it replaces; a
    re-export the operator asked for replaces it whatever it serves."""
    if record.reexport:
        return replace(spec, reexport=True)
    job = settings.jobs_by_name.get(record.job)
    if record.revision < 2 or not record.records or job is None or not job.restate_min_records:
        return spec
    least = max(1, math.ceil(record.records * job.restate_min_records))
    return replace(spec, min_records=least)


async def keep_previous_revision(
    ctx: LaneContext, record: ExportRecord, exc: RestatementShrank
) -> None:
    """A restatement far smaller than the file it would replace: that file stays,
    its row done at its revision, and the operator told (log, status, metric)."""
    reason = (
        f"restatement kept revision {record.revision - 1}: AC served {exc.served} "
        f"records where it has {record.records} (re-export the window to accept it)"
    )
    await asyncio.shield(ctx.ledger.keep_previous_revision(record.id, reason))
    log.warning("restatement_kept_previous", served=exc.served, previous=record.records)


async def drop_replaced_file(ctx: LaneContext, record: ExportRecord, location: str) -> None:
    """The file a window's new revision replaced, when the two have other names (the
    output's format or compression changed between them): deleted once the new one is
    committed and recorded, manifest first as ``keep`` deletes, so the window is one
    file. A delete that fails leaves an extra file, said, and fails no export (the
    window is committed and recorded done: a bug here must not make it failed)."""
    store = ctx.sink.store
    replaced = key_at(store, record.destination)
    if replaced is None or store.location(replaced) == location:
        return
    try:
        await delete_stored(store, [replaced])
    except (StoreRejected, StoreUnavailable, OSError) as exc:
        log.warning("replaced_file_not_deleted", file=record.destination, error=str(exc))
    except Exception as exc:
        log.exception("replaced_file_not_deleted", file=record.destination, kind=type(exc).__name__)
