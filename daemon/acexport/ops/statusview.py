"""What each job's due windows are, in the ledger's words: the one view that the status
page draws, ``acexport status`` reports and the ``acexport_windows`` metric counts, so
the three agree at every moment.

A cell is one window of one type (done, failed with the reason, retrying, in flight
with its age, missing, before AC's retention); a job adds its snapshots, and the view
the lanes and the last failures, wherever their windows lie.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo

from ..config import JobSettings, Settings
from ..ledger import ACTIVE, ExportRecord, HookBacklog, LedgerState
from ..planner import due_windows
from ..protocol import ExportMode
from ..triggers import next_looks
from ..windows import iso_ms


@dataclass(frozen=True)
class Cell:
    """One window of one type: its ledger state (or ``missing``) and a tooltip."""

    state: str
    detail: str = ""


@dataclass(frozen=True)
class JobView:
    name: str
    workspace: str
    schedule: str
    windows: list[str]  # each window's start (ISO, the workspace's zone), oldest first
    rows: dict[str, list[Cell]]  # type -> one cell per window
    snapshots: list[SnapshotView] = field(default_factory=list)
    sub_day: bool = False  # windows shorter than a day: columns are labelled by hour
    oldest_waiting_end: datetime | None = None  # of the oldest window not done (any type)


@dataclass(frozen=True)
class SnapshotView:
    """A snapshot type of a job: its newest snapshot, and the one under way or failed."""

    type: str
    newest: str | None  # as-of time, in the workspace's zone
    current: Cell | None  # in flight or failed, if any
    next_look: str = "never"  # when the next is taken: the job's next look, as `status`


@dataclass(frozen=True)
class LaneView:
    key: str
    queued: int
    in_flight: int


@dataclass(frozen=True)
class StatusView:
    """Everything the page shows, read at one moment."""

    generated_at: datetime
    jobs: list[JobView] = field(default_factory=list)
    lanes: list[LaneView] = field(default_factory=list)
    failures: list[tuple[str, str, str, str]] = field(
        default_factory=list
    )  # job, type, window, why
    problems: dict[str, str] = field(default_factory=dict)  # /healthz's, by lane
    hooks: dict[str, HookBacklog] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)  # by job: deleted by its keep


_LAST_FAILURES = 20


# How a cell's state is counted (acexport_windows, `acexport status`): one place, so
# the figures agree with each other and with the page.
WINDOW_STATES = ("done", "failed", "retrying", "in_flight", "missing", "beyond_retention")


def counted_state(cell_state: str) -> str:
    if cell_state in WINDOW_STATES:
        return cell_state
    return "in_flight"  # queued, submitted or ready


def horizon_start(settings: Settings, now: datetime) -> datetime:
    """The earliest a due window of any job can end: rows before it are not shown."""
    return min((now - job.catch_up - job.window for job in settings.jobs), default=now)


def build_view(
    settings: Settings,
    rows: list[ExportRecord],
    lanes: Iterable[LaneView],
    now: datetime,
    problems: dict[str, str] | None = None,
    hooks: dict[str, HookBacklog] | None = None,
    expired: dict[str, int] | None = None,
) -> StatusView:
    """The page's content: each job's due windows, by type, in the ledger's words."""
    by_key = {(r.job, r.type, r.start): r for r in rows if r.mode is ExportMode.WINDOWS}
    snapshot_rows: dict[tuple[str, str], list[ExportRecord]] = defaultdict(list)
    for r in rows:
        if r.mode is ExportMode.SNAPSHOT:
            snapshot_rows[(r.job, r.type)].append(r)
    jobs = [_job_view(job, settings, by_key, snapshot_rows, now) for job in settings.jobs]
    # Failed, and failed before while retried: a window's failure stays in view
    # until it is done, wherever the window lies (a backfill's too).
    failed = sorted(
        (r for r in rows if r.state is LedgerState.FAILED or r.retrying),
        key=lambda r: r.finished_at or 0.0,
        reverse=True,
    )
    zones = {name: ws.zone for name, ws in settings.workspaces.items()}
    failures = [
        (r.job, r.type, r.label(zones.get(r.workspace, UTC)), failure_text(r))
        for r in failed[:_LAST_FAILURES]
    ]
    return StatusView(
        now, jobs, list(lanes), failures, dict(problems or {}), dict(hooks or {}), expired or {}
    )


def _job_view(
    job: JobSettings,
    settings: Settings,
    by_key: dict[tuple[str, str, datetime], ExportRecord],
    snapshot_rows: dict[tuple[str, str], list[ExportRecord]],
    now: datetime,
) -> JobView:
    """One job's due windows by type, and its snapshots."""
    zone = settings.workspaces[job.workspace].zone
    windows = due_windows(job, zone, now) if job.window_types else []
    grid = {
        str(type_): [_cell(by_key.get((job.name, str(type_), w.start))) for w in windows]
        for type_ in job.window_types
    }
    headings = [w.local_start.isoformat() for w in windows]
    looks = next_looks(job.trigger(zone), now, 1) if job.snapshot_types else []
    upcoming = looks[0].astimezone(zone).isoformat(timespec="seconds") if looks else "never"
    snapshots = [
        replace(_snapshot_view(str(t), snapshot_rows[(job.name, str(t))], zone), next_look=upcoming)
        for t in job.snapshot_types
    ]
    sub_day = job.window < timedelta(days=1)
    waiting = [
        w.end
        for index, w in enumerate(windows)
        if any(cells[index].state not in ("done", "beyond_retention") for cells in grid.values())
    ]
    return JobView(
        job.name,
        job.workspace,
        job.schedule,
        headings,
        grid,
        snapshots,
        sub_day,
        min(waiting, default=None),
    )


def failure_text(record: ExportRecord) -> str:
    """What a failed or retrying window says: ``retrying, 3 failures, last: AuthError ...``."""
    if record.state is LedgerState.BEYOND_RETENTION:
        return record.reason or ""
    count = f"{record.failures} failure{'s' if record.failures != 1 else ''}"
    last = record.last_error or record.reason or "no reason recorded"
    if record.retrying:
        return f"retrying, {count}, last: {last}"
    return f"failed ({count}): {last}" if record.failures > 1 else last


def _snapshot_view(type_: str, mine: list[ExportRecord], zone: tzinfo) -> SnapshotView:
    done = [r for r in mine if r.state is LedgerState.DONE]
    newest = max(done, key=lambda r: r.end, default=None)
    current = next((r for r in mine if r.state is not LedgerState.DONE), None)
    return SnapshotView(
        type_,
        newest.end.astimezone(zone).isoformat(timespec="seconds") if newest else None,
        _cell(current) if current else None,
    )


def _cell(record: ExportRecord | None) -> Cell:
    if record is None:
        return Cell("missing")
    if record.state in (LedgerState.FAILED, LedgerState.BEYOND_RETENTION):
        return Cell(record.state, failure_text(record))
    if record.retrying:
        return Cell("retrying", failure_text(record))
    if record.state in ACTIVE:
        since = record.submitted_at or record.planned_at
        detail = f"{record.state} for {time.time() - since:.0f} s"
        if record.request_start is not None and record.request_end is not None:
            detail += (
                f", with the windows of one AC request from {iso_ms(record.request_start)} "
                f"to {iso_ms(record.request_end)}"
            )
        return Cell(record.state, detail)
    return Cell(record.state)
