"""One ledger row as the rest of the daemon sees it (``ExportRecord``), and the
states a row moves through."""

from __future__ import annotations

import enum
import functools
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..protocol import ExportMode
from ..windows import ExportWindow


class LedgerState(enum.StrEnum):
    """Where an export is in its life (see the ledger package's docstring)."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    READY = "ready"
    DONE = "done"
    FAILED = "failed"
    BEYOND_RETENTION = "beyond_retention"  # before AC's data retention: final, never asked
    EXPIRED = "expired"  # its file deleted by the job's ``keep``: final, never exported again


ACTIVE = frozenset({LedgerState.QUEUED, LedgerState.SUBMITTED, LedgerState.READY})


@functools.lru_cache(maxsize=8192)  # every row has its window's two, the same for many
def parse_time(text: str) -> datetime:
    """A time the ledger stored (ISO 8601), in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def _column(row: sqlite3.Row, name: str, default: Any = None) -> Any:
    """A column a later schema added: its default in a ledger of an older schema (read
    by ``status`` or ``check-config`` after an upgrade, before a daemon migrated it)."""
    try:
        return row[name]
    except IndexError:
        return default


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


@dataclass(frozen=True)
class DoneFile:
    """A window recorded done, and the file it was recorded with (whose name may
    predate a change of format or compression)."""

    export_id: int
    file_bytes: int | None
    destination: str | None


@dataclass(frozen=True)
class ExportRecord:
    """One row of the ledger."""

    id: int
    job: str
    workspace: str
    type: str
    start: datetime
    end: datetime
    state: LedgerState
    attempts: int
    requests: int
    reason: str | None
    created_date: str | None
    destination: str | None
    planned_at: float
    submitted_at: float | None
    ready_at: float | None
    finished_at: float | None
    mode: ExportMode = ExportMode.WINDOWS
    revision: int = 1
    file_sha256: str | None = None
    failures: int = 0  # attempts in a row that failed (0 once done)
    last_error: str | None = None  # the last failure's reason, kept while retried
    # The range of the AC request that serves this window with others (None: its own).
    request_start: datetime | None = None
    request_end: datetime | None = None
    # After a coalesced request of it failed: the most windows the next may serve.
    max_windows: int | None = None
    records: int | None = None  # in its file, once done
    # Queued by ``acexport reexport``: its next revision is committed whatever AC serves.
    reexport: bool = False

    @property
    def retrying(self) -> bool:
        """Still to do, after failing: what status, page and metrics call retrying."""
        return self.state in ACTIVE and self.failures > 0

    def window(self, zone: Any = UTC) -> ExportWindow:
        return ExportWindow(self.start, self.end, zone)

    def label(self, zone: Any = UTC) -> str:
        """What people call this row's window (``2026-11-29``, ``2026-11-29 14:00``) or
        snapshot (``as of 2026-12-01 02:00``), in ``zone``."""
        window = self.window(zone)
        if self.mode is ExportMode.SNAPSHOT:
            return f"as of {window.local_end:%Y-%m-%d %H:%M}"
        return window.label

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ExportRecord:
        return cls(
            id=row["id"],
            job=row["job"],
            workspace=row["workspace"],
            type=row["type"],
            start=parse_time(row["window_start"]),
            end=parse_time(row["window_end"]),
            state=LedgerState(row["state"]),
            attempts=row["attempts"],
            requests=row["requests"],
            reason=row["reason"],
            created_date=row["created_date"],
            destination=row["destination"],
            planned_at=row["planned_at"],
            submitted_at=row["submitted_at"],
            ready_at=row["ready_at"],
            finished_at=row["finished_at"],
            mode=ExportMode(_column(row, "mode", "windows")),
            revision=_column(row, "revision", 1),
            file_sha256=_column(row, "file_sha256"),
            failures=_column(row, "failures", 0),
            last_error=_column(row, "last_error"),
            request_start=_time_or_none(_column(row, "request_start")),
            request_end=_time_or_none(_column(row, "request_end")),
            max_windows=_column(row, "max_windows"),
            records=row["records"],
            reexport=bool(_column(row, "reexport", 0)),
        )
