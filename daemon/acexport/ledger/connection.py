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

from ..errors import StateError
from .rows import ExportRecord
from .schema import _MIGRATIONS
from .sqlthread import SqlThread

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

    def __init__(self, db: SqlThread, path: Path) -> None:
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
        if not readonly:
            _create_private(path)
        db = await SqlThread.connect(path, readonly=readonly)
        try:
            await db.rows("PRAGMA busy_timeout = 5000", ())
            if not readonly:
                await db.rows("PRAGMA journal_mode = WAL", ())
                # NORMAL (in WAL mode) survives crashes; a power cut may lose the last
                # commits, which only means a window is exported again, to the same path:
                # files are fsynced before their row says done. FULL cost an fsync per
                # update and made the ledger the bottleneck at 1,000 lanes.
                await db.rows("PRAGMA synchronous = NORMAL", ())
                await cls._migrate(db, path)
        except BaseException:
            await db.close()
            raise
        return cls(db, path)

    @staticmethod
    async def _migrate(db: SqlThread, path: Path) -> None:
        rows = await db.rows("PRAGMA user_version", ())
        version = int(rows[0][0]) if rows else 0
        if version > len(_MIGRATIONS):
            raise StateError(
                f"the state database {path} is schema version {version}, newer than this "
                f"acexport understands ({len(_MIGRATIONS)}); upgrade acexport"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await db.script(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")

    async def close(self) -> None:
        await self._db.close()

    @state_errors
    async def has_schema(self) -> bool:
        """Whether the schema is there (a database a first start is creating has none)."""
        rows = await self._rows("PRAGMA user_version")
        return bool(rows and rows[0][0])

    async def _rows(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        """Run one statement to its end, in the ledger's thread (see ``SqlThread``)."""
        return await self._db.rows(sql, args)

    async def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run ``sql`` for each of ``rows``; how many rows it changed (this statement's
        count: other statements share the connection meanwhile)."""
        return await self._db.many(sql, rows)

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
