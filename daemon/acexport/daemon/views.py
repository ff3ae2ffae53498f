"""What the daemon shows of the ledger: the backlog's metrics and the status page's
input, read on the event loop, counted off it."""

from __future__ import annotations

import asyncio
from datetime import datetime

from ..config import Settings
from ..hooks import HookDispatcher
from ..ledger import ExportRecord, Ledger
from ..ops.health import Health
from ..ops.metrics import Metrics
from ..ops.statuspage import PageInput
from ..ops.statusview import LaneView, build_view, horizon_start


async def refresh_backlog(
    settings: Settings, ledger: Ledger, metrics: Metrics, now: datetime
) -> None:
    """The age of each job's oldest unfinished window, and its windows by state."""
    oldest = await ledger.oldest_unfinished_by_job()
    for job in settings.jobs:
        end = oldest.get(job.name)
        age = max(0.0, now.timestamp() - end) if end else 0
        metrics.oldest_missing.labels(job.name).set(age)
    rows = await horizon_rows(settings, ledger, now)
    # Tens of thousands of cells for many hourly jobs: counted off the loop.
    await asyncio.to_thread(lambda: metrics.count_windows(build_view(settings, rows, [], now)))


async def horizon_rows(settings: Settings, ledger: Ledger, now: datetime) -> list[ExportRecord]:
    """Ledger rows of the windows the jobs can still have due (not years of history)."""
    return await ledger.rows_ending_after(horizon_start(settings, now))


async def page_input(
    settings: Settings,
    ledger: Ledger,
    lanes: list[LaneView],
    health: Health,
    hooks: HookDispatcher,
    now: datetime,
) -> PageInput:
    """The ledger and the lanes as they are now, for the status page."""
    rows = await horizon_rows(settings, ledger, now)
    seen = {r.id for r in rows}
    rows += [r for r in await ledger.troubled() if r.id not in seen]
    problems = health.report()[1].get("problems", {})
    backlog, expired = await hooks.refresh(force=True), await ledger.expired_by_job()
    return PageInput(settings, rows, lanes, now, problems, backlog, expired)
