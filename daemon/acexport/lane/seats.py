"""The seats every lane shares: how many requests are made to AC at once, and how
many exports store their data at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

# How many exports of all lanes ask AC at once, each request with the download of
# its data. A thousand lanes' polls falling due together made one turn of
# the event loop send hundreds of requests: its lag reached 220-345 ms, and those
# past the connection pool's 100 had built their request for nothing. With 64 seats:
# 84-111 ms at 1,000 workspaces, the wall unchanged; 32 made the run slower (issue
# 35, bench/README.md).
REQUESTS_AT_ONCE = 64
# How many exports store downloaded data at once (finish, fsync, commit; an upload to
# S3): a bound of its own. Stored in a seat to ask AC, a thousand lanes' commits held
# those seats through their fsyncs, and polls and submissions waited 0.1-1.1 s for
# one (issue 35, bench/README.md).
STORES_AT_ONCE = 64


class Seats:
    """At most ``count`` requests to AC at once. A submission waiting for a seat goes
    before the other requests waiting: it starts AC's work, which takes a lane's
    slot for as long as AC takes; the others only collect what AC did."""

    def __init__(self, count: int | None = None) -> None:
        self._free = REQUESTS_AT_ONCE if count is None else count
        self._submissions: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    async def take(self, submission: bool) -> None:
        if self._free > 0 and not self._submissions and not self._others:
            self._free -= 1
            return
        queue = self._submissions if submission else self._others
        seat: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(seat)
        try:
            await seat
        except asyncio.CancelledError:
            if seat.done() and not seat.cancelled():
                self.give_back()  # handed over as its task was cancelled: the next one's
            elif seat in queue:
                queue.remove(seat)
            raise

    @contextlib.asynccontextmanager
    async def held(self, submission: bool = False) -> AsyncIterator[None]:
        """A seat for the block's length."""
        await self.take(submission)
        try:
            yield
        finally:
            self.give_back()

    def give_back(self) -> None:
        for queue in (self._submissions, self._others):
            while queue:
                seat = queue.popleft()
                if not seat.done():
                    seat.set_result(None)
                    return
        self._free += 1
