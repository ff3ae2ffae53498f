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
    job = settings.jobs_by_name.get(record.job)
    if (
        record.type not in TIME_SERIES
        or record.mode is not ExportMode.WINDOWS
        or (record.revision != 1 and not record.reexport)  # a restatement goes alone
        or job is None
    ):
        return [record]  # an entity table in windows is asked for a window at a time
    most = job.windows_per_request(MAX_WINDOWS) if was_queued else 1
    group = await ctx.ledger.coalescable(record, job.coalesce_max, most)
    if len(group) > 1 and record.request_start is None:
        # Sized once there is more than one window to size (a lone window is the
        # common case: its statement was half of what coalescing cost).
        limit = int(settings.http.max_payload)
        group = group[: await _within_payload(ctx, record, len(group), limit)]
    group = await ctx.ledger.claim_together(record, group)
    if len(group) > 1:
        zone = settings.workspaces[record.workspace].zone
        log.info("export_coalesced", windows=len(group), last=group[-1].label(zone))
    return group or [record]


# A span is sized to this share of http.max_payload at the largest window seen: one
# day's data is not the next's.
_PAYLOAD_SHARE = 0.5


async def _within_payload(ctx: LaneContext, record: ExportRecord, most: int, limit: int) -> int:
    """At most as many windows as fit ``http.max_payload`` at the sizes seen (a span
    larger than it fails whole: the windows would be asked for in halves after)."""
    per_window = await ctx.ledger.payload_per_window(record.job, record.type)
    if not per_window:
        return most
    fits = max(1, int(_PAYLOAD_SHARE * limit // per_window))
    if fits < most:
        log.info(
            "coalesced_span_sized",
            windows=fits,
            payload_per_window=round(per_window),
            max_payload=limit,
            detail="fewer windows in one AC request: more would pass http.max_payload",
        )
    return min(most, fits)
