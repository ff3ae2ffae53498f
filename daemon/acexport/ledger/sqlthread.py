"""One SQLite connection in a thread of its own, its statements committed in groups.

The event loop never waits on SQLite: each statement runs in the ledger's thread
and its awaiting task resumes with the rows. Statements asked for while the
thread is busy wait for the next group, and a group runs in one transaction: at
a thousand lanes one thread hop, one turn at the GIL and one WAL commit serve the
dozens of statements the lanes asked for meanwhile, where each statement had its
own (aiosqlite's queue made the hops the ledger's cost; issue 35). An idle ledger
runs a statement at once, alone, as before.

A group's answers resume their tasks a few at a turn of the event loop
(``ANSWERS_PER_TURN``), in the order asked: a hundred tasks resumed in one turn
made that turn as long as all their steps, and every timer and socket waited for
it (issue 35: at a thousand lanes the loop's lag max fell from a median of 126 ms
to 81 ms, bench/README.md).

A statement's error is its own: it reaches the task that asked for it. An error
that rolls the whole transaction back (a full disk, say) fails every statement
of the group, none of which then stands.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

Work = Callable[[sqlite3.Connection], Any]

# How many of the ledger's answers resume their tasks in one turn of the event loop.
# Fewer made the lag smaller still (8: 48-109 ms) but the ledger a bottleneck: a busy
# turn takes tens of ms, and a thousand lanes ask ~2,500 statements a second.
ANSWERS_PER_TURN = 16


class SqlThread:
    """``path``'s connection, used by one thread; what runs there comes in order."""

    def __init__(self, executor: ThreadPoolExecutor, db: sqlite3.Connection, grouped: bool):
        self._executor = executor
        self._db = db
        self._grouped = grouped  # in one transaction (a read-only connection has none)
        self._waiting: list[_Waiting] = []
        self._running = False
        self._answers: deque[tuple[_Waiting, tuple[bool, Any]]] = deque()

    @classmethod
    async def connect(cls, path: Path, *, readonly: bool) -> SqlThread:
        executor = ThreadPoolExecutor(1, thread_name_prefix="acexport-ledger")
        target: str | Path = f"file:{path}?mode=ro" if readonly else path
        # Autocommit (isolation_level None): the transactions are the groups' own.
        connect = partial(
            sqlite3.connect,
            target,
            uri=readonly,
            isolation_level=None,
            check_same_thread=False,  # made here, used only in the ledger's thread
        )
        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        db.row_factory = sqlite3.Row
        return cls(executor, db, grouped=not readonly)

    @property
    def total_changes(self) -> int:
        return self._db.total_changes

    async def rows(self, sql: str, args: Sequence[Any]) -> list[sqlite3.Row]:
        """Run one statement to its end (an UPDATE ... RETURNING commits with its group)."""
        # The cursor is released in the thread: released on the loop's thread, it reset
        # a cached statement the ledger's thread was running ("bad parameter or other
        # API misuse", seen with a thousand jobs looked at at once).
        return await self.run(lambda db: db.execute(sql, args).fetchall())  # type: ignore[no-any-return]

    async def many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``sql`` for each of ``rows``; how many rows it changed."""
        params = list(rows)  # read on the loop's thread, where its objects live

        def run(db: sqlite3.Connection) -> int:
            cursor = db.executemany(sql, params)
            try:
                return cursor.rowcount
            finally:
                cursor.close()

        return await self.run(run)  # type: ignore[no-any-return]

    async def script(self, sql: str) -> None:
        """Run a script of statements (a migration: its own BEGIN ... COMMIT)."""
        await self.run(lambda db: db.executescript(sql).close(), alone=True)

    async def run(self, work: Work, *, alone: bool = False) -> Any:
        """``work(connection)`` in the ledger's thread, in the order asked for; ``alone``:
        in no group's transaction (a script with its own, closing)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(work, future, alone))
        if not self._running:
            self._next_group()
        return await future

    async def close(self) -> None:
        try:
            await self.run(lambda db: db.close(), alone=True)
        finally:
            self._executor.shutdown(wait=False)

    def _next_group(self) -> None:
        """Send what waits to the thread: all of it, up to the next work that runs alone."""
        if self._waiting[0].alone:
            size = 1
        else:
            size = next((i for i, w in enumerate(self._waiting) if w.alone), len(self._waiting))
        group, self._waiting = self._waiting[:size], self._waiting[size:]
        grouped = self._grouped and size > 1
        self._running = True
        outcome = asyncio.get_running_loop().run_in_executor(
            self._executor, _run_group, self._db, [w.work for w in group], grouped
        )
        outcome.add_done_callback(partial(self._group_done, group))

    def _group_done(self, group: list[_Waiting], outcome: asyncio.Future[Any]) -> None:
        self._running = False
        try:
            results: list[tuple[bool, Any]] = outcome.result()
        except BaseException as exc:  # the thread could not run it at all
            results = [(False, exc)] * len(group)
        if self._waiting:
            self._next_group()  # the thread goes on while the answers are handed out
        answering = bool(self._answers)
        self._answers.extend(zip(group, results, strict=True))
        if not answering:
            self._answer()

    def _answer(self) -> None:
        """Resume the next few tasks, in the order they asked; the rest at the next turn."""
        for _ in range(min(ANSWERS_PER_TURN, len(self._answers))):
            waiting, (ok, value) = self._answers.popleft()
            if waiting.future.done():  # its task was cancelled: the work ran all the same
                continue
            if ok:
                waiting.future.set_result(value)
            else:
                waiting.future.set_exception(value)
        if self._answers:
            asyncio.get_running_loop().call_soon(self._answer)


@dataclass(frozen=True)
class _Waiting:
    work: Work
    future: asyncio.Future[Any]
    alone: bool


def _run_group(db: sqlite3.Connection, works: list[Work], grouped: bool) -> list[tuple[bool, Any]]:
    """Each work's (succeeded, result or error); in one transaction if ``grouped``."""
    if grouped:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(False, exc)] * len(works)
    results: list[tuple[bool, Any]] = []
    for work in works:
        try:
            results.append((True, work(db)))
        except Exception as exc:
            results.append((False, exc))
            if grouped and not db.in_transaction:
                # SQLite rolled the whole transaction back: none of the group stands.
                return [(False, exc)] * len(works)
    if grouped:
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            return [(False, exc)] * len(works)
    return results
