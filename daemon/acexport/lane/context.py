"""What every lane shares."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

import aiohttp

from ..ac.serverclock import ServerClock
from ..config import Settings
from ..config.hooks import EventKind
from ..events import LaneObserver
from ..export import Timing
from ..ledger import ExportRecord, Ledger
from ..output.sink import Sink
from ..output.snapshots import KnownSnapshots
from ..protocol import ExportMode
from .seats import STORES_AT_ONCE, Seats


class WaitingKeep(Protocol):
    """A job's keep as a lane meets it (``keep.Keep``, the planner's): a queued window
    that waited in the lane past its keep is expired there, never asked of AC."""

    def kept_from(self, record: ExportRecord) -> str: ...

    def expire_waiting(self, record: ExportRecord) -> Awaitable[bool]: ...


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
    keep: WaitingKeep | None = None  # the jobs' keep, for windows waiting in a lane
    # The snapshots the store holds, as the planner listed them: pruned without a listing.
    snapshots: KnownSnapshots = field(default_factory=KnownSnapshots)
    seats: Seats = field(default_factory=Seats)  # every lane's, to ask AC
    stores: Seats = field(default_factory=lambda: Seats(STORES_AT_ONCE))  # to store data


async def timing_for(ctx: LaneContext, record: ExportRecord) -> Timing:
    """The daemon's timing with what the ledger knows: how long this kind of export
    took before (or, for a first one, similar exports), and how long its data has
    been ready. One export receives these as plain values: it knows no ledger."""
    ledger = ctx.ledger
    expected = await ledger.expected_processing_s(record.workspace, record.type)
    guess = None if expected else await ledger.similar_processing_s(record.workspace, record.type)
    ready_age_s = None if record.ready_at is None else max(0.0, time.time() - record.ready_at)
    return replace(
        ctx.timing(),
        expected_s=expected,
        guess_s=guess,
        ready_age_s=ready_age_s,
        created_date=record.created_date,
    )


def hooks_for(settings: Settings, record: ExportRecord) -> list[str]:
    """The hooks to tell when the record's file is committed."""
    kind: EventKind = "snapshot" if record.mode is ExportMode.SNAPSHOT else "window"
    return [hook.name for hook in settings.hooks if hook.wants(record.job, kind)]
