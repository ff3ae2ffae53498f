"""The daemon's waits and background loops that need nothing of it but what they watch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Settings
from ..lane import Lane
from ..ops.notify import SystemdNotifier
from ..ops.statusview import LaneView
from .shard import WorkerLink


async def measure_loop_lag(record: Callable[[float], None], period_s: float = 0.25) -> None:
    """How late a timer fires (``record``: seconds late): a blocked event loop shows
    here first. Four wake-ups a second cost an idle daemon almost nothing."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period_s)
        record(loop.time() - before - period_s)


async def ping_watchdog(notifier: SystemdNotifier, interval_s: float) -> None:
    # Sent from the event loop itself: a blocked loop stops the pings and systemd acts.
    while True:
        notifier.notify(watchdog=1)
        await asyncio.sleep(interval_s)


async def report_lanes(
    link: WorkerLink, lanes: Callable[[], list[LaneView]], lag_s: Callable[[], float]
) -> None:
    """A worker's lanes and loop lag, told to process 0 each second, for its metrics,
    status line and page."""
    while True:
        link.lanes(lanes(), lag_s())
        await asyncio.sleep(1.0)


async def all_idle(lanes: Iterable[Lane], stop: asyncio.Event) -> bool:
    """Every lane idle (True), or a stop asked for first (False)."""
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    idle: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(*(lane.wait_idle() for lane in lanes))
    )
    await asyncio.wait([stopped, idle], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not idle.done():
        idle.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await idle  # retrieved: no "exception was never retrieved" at exit
        return False
    return True


def status_line(settings: Settings, lanes: Iterable[LaneView]) -> str:
    """What systemd's status shows: the jobs, and each lane's queue."""
    text = "; ".join(
        f"{lane.key}: {lane.queued} queued, {lane.in_flight} running" for lane in lanes
    )
    return f"{len(settings.jobs)} jobs; {text or 'no lanes'}"
