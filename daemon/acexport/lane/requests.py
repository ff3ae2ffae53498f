"""Which windows one AC request serves: the consecutive due windows of a time series
claimed together, or the coalesced request a restart resumes, known by its range."""

from __future__ import annotations

from datetime import datetime

import structlog

from ..config import Settings
from ..ledger import ExportRecord
from ..payload.split import MAX_WINDOWS
from ..protocol import TIME_SERIES, ExportMode
from .context import LaneContext

log = structlog.get_logger("acexport.lane")


def request_of(record: ExportRecord) -> tuple[str, str, datetime, datetime] | None:
    """The coalesced AC request a row is served by (job, type, range), if any."""
    if record.request_start is None or record.request_end is None:
        return None
    return (record.job, record.type, record.request_start, record.request_end)


async def coalesce(
    ctx: LaneContext, record: ExportRecord, was_queued: bool, settings: Settings
) -> list[ExportRecord]:
    """The windows one request serves with ``record``: consecutive windows of a time
    series due together (or the coalesced request a restart resumes)."""
    job = next((j for j in settings.jobs if j.name == record.job), None)
    if (
        record.type not in TIME_SERIES
        or record.mode is not ExportMode.WINDOWS
        or record.revision != 1
        or job is None
    ):
        return [record]  # an entity table in windows is asked for a window at a time
    most = job.windows_per_request(MAX_WINDOWS) if was_queued else 1
    group = await ctx.ledger.coalesce(record, job.coalesce_max, most)
    if len(group) > 1:
        zone = settings.workspaces[record.workspace].zone
        log.info("export_coalesced", windows=len(group), last=group[-1].label(zone))
    return group or [record]
