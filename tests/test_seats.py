"""The seats every lane shares to ask AC (lane/seats.py): a bound, submissions first,
and no seat lost or taken twice by a cancelled wait."""

from __future__ import annotations

import asyncio

from acexport.lane.seats import Seats


async def test_a_submission_waiting_for_a_seat_goes_before_the_other_requests() -> None:
    """A submission starts AC's work (a lane's slot is idle until it does); a poll or a
    download only collects it: with every seat taken, submissions are seated first,
    each kind in the order it asked."""
    seats = Seats(1)
    await seats.take(submission=False)
    seated: list[str] = []

    async def ask(name: str, submission: bool) -> None:
        await seats.take(submission)
        seated.append(name)

    tasks = []
    for name, submission in (("poll-1", False), ("submit-1", True), ("poll-2", False),
                             ("submit-2", True)):  # fmt: skip
        tasks.append(asyncio.create_task(ask(name, submission)))
        await asyncio.sleep(0)  # each waiting, in this order
    for _ in tasks:
        seats.give_back()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert seated == ["submit-1", "submit-2", "poll-1", "poll-2"]


async def test_a_cancelled_wait_neither_keeps_nor_loses_a_seat() -> None:
    """A stop cancels the exports waiting for a seat. One cancelled while waiting
    leaves the queue; one cancelled just after a seat was handed to it passes the seat
    on (else a seat would be lost for good, and with all of them lost, every lane
    would wait for ever)."""
    seats = Seats(1)
    await seats.take(submission=False)
    waiting = asyncio.create_task(seats.take(submission=True))
    handed = asyncio.create_task(seats.take(submission=False))
    after = asyncio.create_task(seats.take(submission=False))
    await asyncio.sleep(0)
    waiting.cancel()  # still waiting: leaves the queue
    await asyncio.gather(waiting, return_exceptions=True)
    seats.give_back()  # handed to ``handed``...
    handed.cancel()  # ... cancelled before it ran: the seat goes to ``after``
    await asyncio.gather(handed, return_exceptions=True)
    async with asyncio.timeout(1):
        await after
    seats.give_back()
    async with asyncio.timeout(1):
        await seats.take(submission=False)  # the one seat is free again...
    extra = asyncio.create_task(seats.take(submission=True))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not extra.done()  # ... and there is only the one
    extra.cancel()
