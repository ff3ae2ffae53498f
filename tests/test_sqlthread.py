"""The ledger's thread: statements asked for together commit together, each error
stays its own statement's, and a transaction SQLite rolled back fails its group."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from acexport.ledger.sqlthread import ANSWERS_PER_TURN, SqlThread


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqlThread]:
    thread = await SqlThread.connect(tmp_path / "t.sqlite3", readonly=False)
    await thread.script("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    yield thread
    await thread.close()


async def _traced(db: SqlThread) -> list[str]:
    statements: list[str] = []
    await db.run(lambda conn: conn.set_trace_callback(statements.append))
    return statements


async def _stored(db: SqlThread) -> list[int]:
    return [row[0] for row in await db.rows("SELECT n FROM t ORDER BY n", ())]


async def test_statements_asked_for_meanwhile_commit_in_one_transaction(db: SqlThread) -> None:
    statements = await _traced(db)
    inserted = await asyncio.gather(
        *(db.rows("INSERT INTO t (n) VALUES (?) RETURNING n", (n,)) for n in range(100))
    )
    assert [rows[0][0] for rows in inserted] == list(range(100))  # each its own answer
    begun = [sql for sql in statements if sql.startswith("BEGIN")]
    # The first ran alone, at once; the 99 asked for while it ran, together.
    assert len(begun) == 1, statements[:5]
    assert statements.count("COMMIT") == 1
    assert await _stored(db) == list(range(100))


async def test_a_groups_answers_resume_a_few_tasks_a_turn_in_the_order_asked(
    db: SqlThread,
) -> None:
    """Issue 35: a group's 39 answers (the first statement runs alone) resumed 39 tasks
    in one turn of the event loop, and every timer waited for all of their steps."""
    loop = asyncio.get_running_loop()
    turn = 0

    def count_turns() -> None:  # runs once a turn: each call puts the next in the next turn
        nonlocal turn, ticking
        turn += 1
        ticking = loop.call_soon(count_turns)

    ticking = loop.call_soon(count_turns)
    resumed: list[tuple[int, int]] = []

    async def insert(n: int) -> None:
        rows = await db.rows("INSERT INTO t (n) VALUES (?) RETURNING n", (n,))
        resumed.append((turn, rows[0][0]))

    try:
        await asyncio.gather(*(insert(n) for n in range(40)))
    finally:
        ticking.cancel()
    assert [n for _, n in resumed] == list(range(40))  # in the order asked
    by_turn = Counter(at for at, _ in resumed)
    assert max(by_turn.values()) == ANSWERS_PER_TURN, by_turn  # the 39 of one group
    assert await _stored(db) == list(range(40))


async def test_an_error_is_its_own_statements_the_rest_of_the_group_commits(
    db: SqlThread,
) -> None:
    results = await asyncio.gather(
        db.rows("INSERT INTO t (n) VALUES (1)", ()),
        db.rows("INSERT INTO t (n) VALUES (2)", ()),
        db.rows("INSERT INTO t (n) VALUES (2)", ()),  # the same key: refused
        db.rows("INSERT INTO t (n) VALUES (3)", ()),
        return_exceptions=True,
    )
    assert isinstance(results[2], sqlite3.IntegrityError)
    assert [r for i, r in enumerate(results) if i != 2] == [[], [], []]
    assert await _stored(db) == [1, 2, 3]


async def test_a_group_sqlite_rolled_back_fails_whole_and_leaves_nothing(db: SqlThread) -> None:
    """An error that rolls the transaction back (a full disk, here a trigger's ROLLBACK)
    undoes the statements before it: none of the group may say it succeeded."""
    await db.script(
        "CREATE TRIGGER no_sevens BEFORE INSERT ON t WHEN NEW.n = 7 "
        "BEGIN SELECT RAISE(ROLLBACK, 'no sevens'); END"
    )
    first = asyncio.ensure_future(db.rows("INSERT INTO t (n) VALUES (1)", ()))  # alone
    results = await asyncio.gather(
        db.rows("INSERT INTO t (n) VALUES (5)", ()),
        db.rows("INSERT INTO t (n) VALUES (7)", ()),
        db.rows("INSERT INTO t (n) VALUES (9)", ()),
        return_exceptions=True,
    )
    assert await first == []
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results), results
    assert await _stored(db) == [1]
    await db.rows("INSERT INTO t (n) VALUES (8)", ())  # the ledger goes on
    assert await _stored(db) == [1, 8]


async def test_a_cancelled_caller_does_not_stop_the_others(db: SqlThread) -> None:
    first = asyncio.ensure_future(db.rows("INSERT INTO t (n) VALUES (1)", ()))
    cancelled = asyncio.ensure_future(db.rows("INSERT INTO t (n) VALUES (2)", ()))
    kept = asyncio.ensure_future(db.rows("INSERT INTO t (n) VALUES (3)", ()))
    await asyncio.sleep(0)
    cancelled.cancel()
    assert await first == []
    assert await kept == []
    assert cancelled.cancelled()
    assert await _stored(db) == [1, 2, 3]  # queued before the cancel: it ran all the same


async def test_a_read_only_connection_reads_without_transactions(tmp_path: Path) -> None:
    writer = await SqlThread.connect(tmp_path / "t.sqlite3", readonly=False)
    await writer.script("CREATE TABLE t (n INTEGER PRIMARY KEY); INSERT INTO t VALUES (4);")
    reader = await SqlThread.connect(tmp_path / "t.sqlite3", readonly=True)
    try:
        counts = await asyncio.gather(
            *(reader.rows("SELECT count(*) FROM t", ()) for _ in range(5))
        )
        assert [rows[0][0] for rows in counts] == [1] * 5
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.rows("INSERT INTO t VALUES (5)", ())
    finally:
        await reader.close()
        await writer.close()
