"""What every lane shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from ..ac.serverclock import ServerClock
from ..config import Settings
from ..events import LaneObserver
from ..export import Timing
from ..ledger import Ledger
from ..output.sink import Sink


@dataclass
class LaneContext:
    """What every lane shares: session, ledger, sink, settings, and who observes it."""

    session: aiohttp.ClientSession
    ledger: Ledger
    sink: Sink
    settings: Callable[[], Settings]
    timing: Callable[[], Timing]
    observer: LaneObserver  # metrics, health, progress: told what happened
    fatal: Callable[[BaseException], None]  # the ledger failed: the daemon must stop
    server_clock: ServerClock | None = None  # told AC's time by every answer
    # The earliest window start AC holds data for, by workspace (the planner's).
    retention_start: Callable[[str], Awaitable[datetime]] | None = None
