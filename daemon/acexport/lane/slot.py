"""A lane's single AC slot as one export holds it: taken before submitting, given
back the moment data is ready, taken again before a request that may resubmit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..ac.client import ExportStatus
from ..export import ExportObserver, ready_lifetime_s
from ..ledger import ExportRecord, LedgerState


def still_downloadable(record: ExportRecord, download_window_s: float) -> bool:
    """Ready data AC still keeps is fetched without the slot; anything else needs it."""
    if record.state is not LedgerState.READY or record.ready_at is None:
        return False
    return time.time() - record.ready_at < ready_lifetime_s(download_window_s)


def in_slot_order(records: list[ExportRecord], download_window_s: float) -> list[ExportRecord]:
    """``records`` in the order they take the slot, each kind in the order given: ready
    data AC still keeps (it needs none), then an export AC is preparing, then those
    that ask AC anew. After a restart AC's slot is still held by what the last process
    submitted: expired ready data asked for first was a second export at AC beside it
    (found by the soak: max_unready 2)."""

    def rank(record: ExportRecord) -> int:
        if still_downloadable(record, download_window_s):
            return 0
        return 1 if record.state is LedgerState.SUBMITTED else 2

    return sorted(records, key=rank)


class SlotHold:
    """One export's hold on its lane's single AC slot: taken, given back, taken again."""

    def __init__(self, slot: asyncio.Semaphore, held: bool) -> None:
        self._slot = slot
        self.held = held

    async def take(self) -> None:
        if not self.held:
            await self._slot.acquire()
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self._slot.release()


class SlotKeeper(ExportObserver):
    """Follows AC's answers; frees the lane's slot once data is ready (after
    ``on_ready``, the lane's record of it), and takes it back before a request that
    may find the data expired (and so submit anew)."""

    def __init__(
        self,
        created_date: str | None,
        hold: SlotHold,
        on_ready: Callable[[str | None, float], Awaitable[None]],
    ) -> None:
        self.created_date = created_date
        self._hold = hold
        self._on_ready = on_ready

    async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
        self.created_date = answer.created_date or self.created_date

    async def ready(self, processing_s: float) -> None:
        await self._on_ready(self.created_date, processing_s)
        self._hold.give_back()

    async def may_resubmit(self) -> None:
        await self._hold.take()
