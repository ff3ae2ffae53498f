"""The ledger: every planned export and where it is in its life, in SQLite.

One row per (workspace, type, window). A row is ``queued`` when planned,
``submitted`` once a request for it may have reached AC, ``ready`` once AC
served data, ``done`` after the file and manifest are committed, ``failed``
(with the reason) when an attempt gave up; failed rows are planned again at
the next look. A window with a ``done`` row is never exported again (unless
restated); one ``beyond_retention`` (before AC's data retention) is never asked for.

WAL mode lets ``acexport status`` read while the daemon writes. Every statement
runs in the ledger's own thread, committed in groups (``sqlthread``). The schema
carries ``PRAGMA user_version`` and is migrated forward on open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from ..errors import StateError
from ..retention import LearnedRetention
from .coalescing import Coalescing
from .connection import ledger_path
from .exports import REEXPORT_REASON, ExportRows
from .hooks import Delivery, HookBacklog, HookQueue, event_id
from .meta import Meta
from .rows import ACTIVE, DoneFile, ExportRecord, LedgerState, parse_time
from .snapshots import Snapshots
from .timings import ProcessingHistory

__all__ = [
    "ACTIVE",
    "REEXPORT_REASON",
    "Delivery",
    "DoneFile",
    "ExportRecord",
    "HookBacklog",
    "Ledger",
    "LedgerState",
    "event_id",
    "ledger_path",
    "parse_time",
    "read_hook_backlogs",
]

T = TypeVar("T")


class Ledger(ExportRows, Coalescing, Snapshots, Meta, ProcessingHistory, HookQueue):
    """The ledger in ``<state_dir>/state.sqlite3``: each concern in its own module."""


async def read_rows(state_dir: Path) -> list[ExportRecord]:
    """Every ledger row, read-only (a daemon may be writing); none before the first run."""
    return await _read_only(state_dir, lambda ledger: ledger.all_rows(), [])


async def read_learned_retention(
    state_dir: Path, workspaces: Iterable[str]
) -> dict[str, LearnedRetention]:
    """What AC's refusals named as retention, by workspace, read-only."""

    async def learned(ledger: Ledger) -> dict[str, LearnedRetention]:
        found = {ws: await ledger.learned_retention(ws) for ws in workspaces}
        return {ws: value for ws, value in found.items() if value is not None}

    return await _read_only(state_dir, learned, {})


async def read_hook_backlogs(state_dir: Path, since: float) -> dict[str, HookBacklog]:
    """Each hook's queue, read-only (see ``HookQueue.hook_backlogs``)."""
    return await _read_only(state_dir, lambda ledger: ledger.hook_backlogs(since), {})


async def _read_only(state_dir: Path, read: Callable[[Ledger], Awaitable[T]], none: T) -> T:
    """``read`` of the ledger opened read-only; ``none`` before the first run."""
    path = ledger_path(state_dir)
    try:
        path.stat()
    except FileNotFoundError:
        return none
    except OSError as exc:  # e.g. systemd's DynamicUser state dir, seen by another user
        raise StateError(f"cannot read the state database {path}: {exc.strerror}") from None
    ledger = await Ledger.open(path, readonly=True)
    try:
        if not await ledger.has_schema():
            return none  # a first run is creating it this moment
        return await read(ledger)
    finally:
        await ledger.close()
