"""A lane's single AC slot as one export holds it: taken before submitting, given
back the moment data is ready, taken again before a request that may resubmit."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..ac.client import ExportStatus
from ..export import ExportObserver


class Slot:
    """A lane's single AC slot, and the ready mark its last holder left being written.

    The slot is given back as the ready mark is asked for, not once it is durable:
    the next holder's claim is asked for after it (the ledger runs statements in
    order, often in the same transaction), and its first request to AC waits for it
    (``settled``). So the ledger never shows two exports waiting on AC at once, and
    the lane's next export does not wait a round trip of the ledger more.
    """

    def __init__(self) -> None:
        self._free = asyncio.Semaphore(1)
        self._marking: asyncio.Future[None] | None = None

    async def acquire(self) -> None:
        await self._free.acquire()

    def release(self, marking: asyncio.Future[None] | None = None) -> None:
        """Free the slot; ``marking``: the holder's ready mark, being written."""
        if marking is not None:  # else the last one stays the one to wait for
            self._marking = marking
        self._free.release()

    async def settled(self) -> None:
        """Once the last holder's ready mark is durable (raising its failure)."""
        marking = self._marking
        if marking is not None and not marking.done():
            await asyncio.shield(marking)
        elif marking is not None:
            marking.result()


class SlotHold:
    """One export's hold on its lane's single AC slot: taken, given back, taken again."""

    def __init__(self, slot: Slot, held: bool) -> None:
        self._slot = slot
        self.held = held

    async def take(self) -> None:
        if not self.held:
            await self._slot.acquire()
            self.held = True
            await self._slot.settled()

    async def settled(self) -> None:
        """Before the first request to AC: the previous holder's ready mark is durable."""
        await self._slot.settled()

    def give_back(self, marking: asyncio.Future[None] | None = None) -> None:
        if self.held:
            self.held = False
            self._slot.release(marking)


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
        # The mark is asked for first (its task runs before the next holder's), the
        # slot given back with it, and then waited for (see ``Slot``).
        marking = asyncio.ensure_future(self._on_ready(self.created_date, processing_s))
        self._hold.give_back(marking)
        await asyncio.shield(marking)

    async def may_resubmit(self) -> None:
        await self._hold.take()
