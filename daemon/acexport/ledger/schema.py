"""The ledger's SQL schema, as the migrations that build it: version N is the
first N scripts, run in order; ``PRAGMA user_version`` says how many ran."""

from __future__ import annotations

from collections.abc import Sequence

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
    # version 7: the most windows one AC request may serve this window with, after a
    # request of several failed (halved each time): a failed span is never asked for
    # identically again, and a window that fails alone fails only itself.
    """
    ALTER TABLE exports ADD COLUMN max_windows INTEGER;
    """,
    # version 8: a final state for windows whose files ``keep`` deleted ('expired':
    # never exported again, never adopted back; the table is rebuilt for its CHECK);
    # and what hooks are told (hooks/). An event is staged when its export starts and
    # committed by the trigger in the transaction that marks its row done (its body
    # built from that row), so a crash between the two loses nothing and an export
    # that never finishes announces nothing. Each hook's deliveries of it are its queue.
    """
    CREATE TABLE exports_v8 (
        id             INTEGER PRIMARY KEY,
        workspace      TEXT NOT NULL,
        type           TEXT NOT NULL,
        window_start   TEXT NOT NULL,
        window_end     TEXT NOT NULL,
        job            TEXT NOT NULL,
        state          TEXT NOT NULL
                       CHECK (state IN ('queued', 'submitted', 'ready', 'done', 'failed',
                                        'beyond_retention', 'expired')),
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
        failures       INTEGER NOT NULL DEFAULT 0,
        last_error     TEXT,
        request_start  TEXT,
        request_end    TEXT,
        max_windows    INTEGER,
        reexport       INTEGER NOT NULL DEFAULT 0,  -- acexport reexport asked for it
        UNIQUE (workspace, type, window_start, window_end)
    );
    INSERT INTO exports_v8 SELECT id, workspace, type, window_start, window_end, job, state,
        attempts, requests, reason, created_date, destination, records, payload_bytes,
        payload_sha256, planned_at, submitted_at, ready_at, finished_at, updated_at,
        file_bytes, mode, revision, file_sha256, failures, last_error, request_start,
        request_end, max_windows, 0 FROM exports;
    DROP TABLE exports;
    ALTER TABLE exports_v8 RENAME TO exports;
    CREATE INDEX exports_by_state ON exports (state, workspace);
    CREATE INDEX exports_by_type_ready ON exports (type, ready_at);
    CREATE INDEX exports_by_job_mode ON exports (job, type, mode, window_end);
    CREATE TABLE hook_events (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id     TEXT NOT NULL UNIQUE,
        export_id    INTEGER NOT NULL,
        revision     INTEGER NOT NULL,
        staged_at    REAL NOT NULL,
        committed_at REAL,
        body         TEXT
    );
    CREATE INDEX hook_events_by_export ON hook_events (export_id, revision);
    CREATE TABLE hook_deliveries (
        hook        TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'failed')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL NOT NULL DEFAULT 0,
        last_error  TEXT,
        finished_at REAL,
        committed_at REAL,  -- the event's, copied: a hook's next delivery is one seek
        PRIMARY KEY (hook, seq)
    );
    CREATE INDEX hook_deliveries_due ON hook_deliveries (hook, state, committed_at, seq);
    CREATE TRIGGER hook_events_committed AFTER UPDATE OF state ON exports
    WHEN NEW.state = 'done'
    BEGIN
        UPDATE hook_events SET
            committed_at = (julianday('now') - 2440587.5) * 86400.0,
            body = json_object(
                'id', event_id, 'event', 'committed', 'job', NEW.job,
                'workspace', NEW.workspace, 'type', NEW.type, 'mode', NEW.mode,
                'fromDate', NEW.window_start, 'toDate', NEW.window_end,
                'revision', NEW.revision, 'url', NEW.destination, 'records', NEW.records,
                'file_bytes', NEW.file_bytes, 'file_sha256', NEW.file_sha256,
                'committedAt', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
        WHERE export_id = NEW.id AND revision = NEW.revision AND committed_at IS NULL;
        UPDATE hook_deliveries SET committed_at =
            (SELECT committed_at FROM hook_events e WHERE e.seq = hook_deliveries.seq)
        WHERE committed_at IS NULL AND seq IN
            (SELECT seq FROM hook_events WHERE export_id = NEW.id AND revision = NEW.revision);
    END;
    """,
)
