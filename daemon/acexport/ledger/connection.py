"""The ledger's connection: opening (0600, WAL, migrated), the statement helpers
every part of the ledger uses, and the one place sqlite3 errors become StateError."""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Self, TypeVar

import aiosqlite

from ..errors import StateError
from .rows import ExportRecord
from .schema import _MIGRATIONS

if TYPE_CHECKING:  # timings.py builds on this module
    from .timings import ProcessingTimes

P = ParamSpec("P")


T = TypeVar("T")
C = TypeVar("C", bound="LedgerConnection")


def describe_db_error(path: Path, exc: sqlite3.Error) -> StateError:
    # Only I/O that failed hints at a full disk ("disk image is malformed" does not).
    code = getattr(exc, "sqlite_errorname", None) or ""
    failed_io = code.startswith(("SQLITE_FULL", "SQLITE_IOERR"))
    hint = (
        " (disk full?)"
        if failed_io or "disk I/O error" in str(exc) or "is full" in str(exc)
        else ""
    )
    return StateError(f"the state database {path} failed: {exc}{hint}")


def state_errors(
    method: Callable[Concatenate[C, P], Awaitable[T]],
) -> Callable[Concatenate[C, P], Awaitable[T]]:
    """sqlite3 errors become StateError naming the database (one place, every method)."""

    @functools.wraps(method)
    async def wrapper(ledger: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(ledger, *args, **kwargs)
        except sqlite3.Error as exc:
            raise describe_db_error(ledger.path, exc) from None

    return wrapper


def _create_private(path: Path) -> None:
    """The ledger file, created 0600 whatever the umask (SQLite gives -wal/-shm its mode).

    Only when it is missing: closing a descriptor of the file releases every POSIX
    lock this process holds on it, those of an open connection too (SQLite's own
    warning); a second connection opened beside a first corrupted the ledger so
    (found by the soak)."""
    if path.exists():
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot open the state database {path}: {exc.strerror or exc}") from None


def ledger_path(state_dir: Path) -> Path:
    return state_dir / "state.sqlite3"


class LedgerConnection:
    """The connection to ``<state_dir>/state.sqlite3`` and its statement helpers."""

    times: ProcessingTimes  # set by ProcessingHistory; mark_ready adds to it

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @property
    def changes(self) -> int:
        """Rows this connection has changed since it opened: moves with every write."""
        return self._db.total_changes

    @classmethod
    async def start(cls, path: Path, stack: AsyncExitStack) -> Self:
        """Open the ledger for the daemon; it is closed when ``stack`` closes."""
        ledger = await cls.open(path)
        stack.push_async_callback(ledger.close)
        return ledger

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False) -> Self:
        """Open (or create, 0600) the ledger; every failure is a StateError naming it."""
        try:
            return await cls._open(path, readonly)
        except sqlite3.Error as exc:
            raise describe_db_error(path, exc) from None

    @classmethod
    async def _open(cls, path: Path, readonly: bool) -> Self:
        if readonly:
            db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True)
        else:
            _create_private(path)
            # Autocommit: a change commits itself, with no second round trip through
            # aiosqlite's thread. (Batches commit row by row: in WAL mode with
            # synchronous = NORMAL that is an append each, and any prefix is consistent.)
            db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute_fetchall("PRAGMA busy_timeout = 5000")
            if not readonly:
                await db.execute_fetchall("PRAGMA journal_mode = WAL")
                # NORMAL (in WAL mode) survives crashes; a power cut may lose the last
                # commits, which only means a window is exported again, to the same path:
                # files are fsynced before their row says done. FULL cost an fsync per
                # update and made the ledger the bottleneck at 1,000 lanes.
                await db.execute_fetchall("PRAGMA synchronous = NORMAL")
                await cls._migrate(db, path)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    @staticmethod
    async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        if version > len(_MIGRATIONS):
            raise StateError(
                f"the state database {path} is schema version {version}, newer than this "
                f"acexport understands ({len(_MIGRATIONS)}); upgrade acexport"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            async with db.executescript(
                f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
            ):
                pass

    async def close(self) -> None:
        await self._db.close()

    @state_errors
    async def has_schema(self) -> bool:
        """Whether the schema is there (a database a first start is creating has none)."""
        rows = await self._rows("PRAGMA user_version")
        return bool(rows and rows[0][0])

    async def _rows(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        """Run one statement to its end: one hop to aiosqlite's thread, not three."""
        return list(await self._db.execute_fetchall(sql, args))

    async def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``sql`` for each of ``rows``; how many rows it changed (this statement's
        count: other statements share the connection meanwhile)."""
        # Closed in aiosqlite's thread: a cursor released on the event loop's thread
        # resets its cached statement there, which the next executemany of the same SQL
        # may be running in aiosqlite's thread ("bad parameter or other API misuse",
        # seen with a thousand jobs looked at at once).
        async with self._db.executemany(sql, rows) as cursor:
            return int(cursor.rowcount)

    async def _one(self, sql: str, *args: Any) -> ExportRecord | None:
        rows = await self._rows(sql, *args)  # all: an UPDATE ... RETURNING ends, commits
        return ExportRecord.from_row(rows[0]) if rows else None

    async def _all(self, sql: str, *args: Any) -> list[ExportRecord]:
        rows = await self._rows(sql, *args)
        return [ExportRecord.from_row(row) for row in rows]

    async def _update(self, export_id: int, returning: str = "id", **fields: Any) -> list[Any]:
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        return await self._rows(
            f"UPDATE exports SET {assignments} WHERE id = ? "  # noqa: S608 - names are ours
            f"RETURNING {returning}",
            *fields.values(),
            export_id,
        )
