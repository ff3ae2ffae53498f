"""A lane's single AC slot as one export holds it: taken before submitting, given
back the moment data is ready, taken again before a request that may resubmit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..ac.client import ExportStatus
from ..export import ExportObserver


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
