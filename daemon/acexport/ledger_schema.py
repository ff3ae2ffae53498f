"""What the ledger holds: its SQL schema (as migrations), the states a row moves
through, and ``ExportRecord``, one row as the rest of the daemon sees it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiosqlite

from .protocol import ExportMode
from .windows import ExportWindow

_MIGRATIONS: Sequence[str] = (
    # version 1
    """
    CREATE TABLE exports (
        id             INTEGER PRIMARY KEY,
        workspace      TEXT NOT NULL,
        type           TEXT NOT NULL,
        window_start   TEXT NOT NULL,  -- UTC, ISO 8601 with milliseconds
        window_end     TEXT NOT NULL,  -- exclusive
        job            TEXT NOT NULL,
        state          TEXT NOT NULL
                       CHECK (state IN ('queued', 'submitted', 'ready', 'done', 'failed')),
        attempts       INTEGER NOT NULL DEFAULT 0,
        requests       INTEGER NOT NULL DEFAULT 0,
        reason         TEXT,
        created_date   TEXT,           -- AC's createdDate for the export
        destination    TEXT,
        records        INTEGER,
        payload_bytes  INTEGER,
        payload_sha256 TEXT,
        planned_at     REAL NOT NULL,
        submitted_at   REAL,
        ready_at       REAL,
        finished_at    REAL,
        updated_at     REAL NOT NULL,
        UNIQUE (workspace, type, window_start, window_end)
    );
    CREATE INDEX exports_by_state ON exports (state, workspace);
    """,
    # version 2: the latest processing times of a type, across workspaces
    """
    CREATE INDEX exports_by_type_ready ON exports (type, ready_at);
    """,
    # version 3: the size of each done window's file, to notice it changed or went
    # missing in the output store; facts about the state dir (its id, its output root)
    """
    ALTER TABLE exports ADD COLUMN file_bytes INTEGER;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # version 4: a final state for windows before AC's data retention (never asked for);
    # each row's mode (an aligned window of a time series, or a snapshot of an entity
    # table) and revision (2 once restated), and its file's sha256 (a restatement's
    # previous_sha256). SQLite cannot change a CHECK constraint: the table is rebuilt.
    """
    CREATE TABLE exports_v4 (
        id             INTEGER PRIMARY KEY,
        workspace      TEXT NOT NULL,
        type           TEXT NOT NULL,
        window_start   TEXT NOT NULL,
        window_end     TEXT NOT NULL,
        job            TEXT NOT NULL,
        state          TEXT NOT NULL
                       CHECK (state IN ('queued', 'submitted', 'ready', 'done', 'failed',
                                        'beyond_retention')),
        attempts       INTEGER NOT NULL DEFAULT 0,
        requests       INTEGER NOT NULL DEFAULT 0,
        reason         TEXT,
        created_date   TEXT,
        destination    TEXT,
        records        INTEGER,
        payload_bytes  INTEGER,
        payload_sha256 TEXT,
        planned_at     REAL NOT NULL,
        submitted_at   REAL,
        ready_at       REAL,
        finished_at    REAL,
        updated_at     REAL NOT NULL,
        file_bytes     INTEGER,
        mode           TEXT NOT NULL DEFAULT 'windows' CHECK (mode IN ('windows', 'snapshot')),
        revision       INTEGER NOT NULL DEFAULT 1,
        file_sha256    TEXT,
        UNIQUE (workspace, type, window_start, window_end)
    );
    INSERT INTO exports_v4 (id, workspace, type, window_start, window_end, job, state,
        attempts, requests, reason, created_date, destination, records, payload_bytes,
        payload_sha256, planned_at, submitted_at, ready_at, finished_at, updated_at, file_bytes)
    SELECT id, workspace, type, window_start, window_end, job, state, attempts, requests,
        reason, created_date, destination, records, payload_bytes, payload_sha256, planned_at,
        submitted_at, ready_at, finished_at, updated_at, file_bytes FROM exports;
    DROP TABLE exports;
    ALTER TABLE exports_v4 RENAME TO exports;
    CREATE INDEX exports_by_state ON exports (state, workspace);
    CREATE INDEX exports_by_type_ready ON exports (type, ready_at);
    CREATE INDEX exports_by_job_mode ON exports (job, type, mode, window_end);
    """,
    # version 5: a window's failures survive its retries: how many attempts in a row
    # failed, and the last one's error, until it is done (a re-queued window looked
    # fine everywhere until it failed again).
    """
    ALTER TABLE exports ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE exports ADD COLUMN last_error TEXT;
    """,
    # version 6: the AC request a window is served by, when one request covers several
    # consecutive windows (a coalesced export): its range, shared by those rows, so a
    # restart resumes that request instead of asking AC for a new one.
    """
    ALTER TABLE exports ADD COLUMN request_start TEXT;
    ALTER TABLE exports ADD COLUMN request_end TEXT;
    """,
)


class LedgerState(enum.StrEnum):
    """Where an export is in its life (see ledger.py's module docstring)."""

    QUEUED = "queued"
    SUBMITTED = "submitted"
    READY = "ready"
    DONE = "done"
    FAILED = "failed"
    BEYOND_RETENTION = "beyond_retention"  # before AC's data retention: final, never asked


ACTIVE = frozenset({LedgerState.QUEUED, LedgerState.SUBMITTED, LedgerState.READY})


def parse_time(text: str) -> datetime:
    """A time the ledger stored (ISO 8601), in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def _time_or_none(text: str | None) -> datetime | None:
    return None if text is None else parse_time(text)


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
    def from_row(cls, row: aiosqlite.Row) -> ExportRecord:
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
            mode=ExportMode(row["mode"]),
            revision=row["revision"],
            file_sha256=row["file_sha256"],
            failures=row["failures"],
            last_error=row["last_error"],
            request_start=_time_or_none(row["request_start"]),
            request_end=_time_or_none(row["request_end"]),
        )
