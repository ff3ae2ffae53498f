"""The daemon's background loops that need nothing of it but a callback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..ops.notify import SystemdNotifier


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
