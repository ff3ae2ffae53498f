"""The state of one ``run_export`` call, and the observer its caller may pass."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..ac.client import ExportStatus
from ..output.sink import Sink
from ..payload.writer import PayloadWriter


class ExportObserver:
    """Hooks into an export's progress; every method is optional."""

    async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
        """AC answered a status; the next poll is in ``next_poll_s``."""

    async def ready(self, processing_s: float) -> None:
        """Data is ready, ``processing_s`` after it was asked for: AC's slot for this
        workspace is free again."""

    async def downloaded(self, received_bytes: int, total_bytes: int | None) -> None:
        """Called as the download progresses."""

    async def may_resubmit(self) -> None:
        """The ready data may have expired: the next request may start a new AC export."""


@dataclass
class Attempt:
    """Mutable state of one run_export call."""

    requests: int = 0
    failures: int = 0
    ac_failures: int = 0  # ERROR answers since the last data
    unreachable_since: float | None = None  # monotonic: nothing listening since then
    suspect_waited_s: float = 0.0  # waited since 5xx answers to an unproven token began
    expired: int = 0
    ready_at: float | None = None  # monotonic time AC's current export's data was ready
    created_date: str | None = None
    writer: PayloadWriter | None = None
    offset: int = 0
    resumable: bool = False
    # Monotonic. A check's time is when it was sent (its answer waits on this process
    # too, and an export's time learned from it grew with the daemon's load); the
    # submission's, when AC answered it (``submitted_at``, below).
    asked_at: float = 0.0  # the latest request to AC
    # When the latest request was due (the end of the wait before it): a timer that
    # fires late or a connection pool that holds a request is not AC's time either.
    due_at: float = field(default_factory=time.monotonic)
    # When AC's first status answer arrived: AC had created the export by then. (When
    # that request was sent, it still had the connection pool and AC's own queue ahead:
    # at a thousand lanes those took 0.3-1 s for a fifth of the exports, whose single
    # check, due by the time learned, then came too early, 70-97% of them.)
    submitted_at: float | None = None
    answered_at: float = 0.0  # monotonic: the latest answer from AC arrived
    not_ready_at: float | None = None  # the latest request AC answered "not yet"
    expected_s: float | None = None  # when history says the data is ready, after submitting
    processing_s: float | None = None  # submitted to ready, as far as the requests tell
    started_at: float = field(default_factory=time.monotonic)
    said_waiting: bool = False  # export_waiting_at_ac was logged (at most once)


async def drop_partial(state: Attempt, sink: Sink) -> None:
    if state.writer is not None:
        await sink.discard(state.writer)
    state.writer, state.offset = None, 0
