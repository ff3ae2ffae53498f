"""What is due: a job's windows, restatements and snapshots, minus what is done.

``due_windows`` is pure arithmetic on a job's settings and the time. A
``Planner`` turns a look at a job into ledger rows: it asks the output store
once per job (the truth: docs/data.md, "Output") which due windows are already
there, marks those its manifests prove done, queues again the ones the ledger
calls done but the store lacks, records windows before AC's retention as such
(never asked for), and queues the rest; then the windows now ``restate`` old,
and a snapshot of each entity table unless one is under way or the newest is
younger than the schedule's period. Looking twice changes nothing. Queueing
rows into lanes is the daemon's business.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from .config import JobSettings, Settings
from .errors import StoreRejected, StoreUnavailable
from .keep import Keep, KeepLedger
from .ledger import ACTIVE, DoneFile, ExportRecord, LedgerState
from .output.layout import OutputLayout
from .output.snapshots import KnownSnapshots, StoredSnapshot, listed_snapshots
from .output.store import OutputStore
from .output.stored import StoredFile, prove, stored_files
from .payload.split import MAX_WINDOWS
from .protocol import TIME_SERIES, ExportMode
from .retention import LearnedRetention, beyond_reason, effective_months, retention_start
from .triggers import schedule_period
from .windows import ExportWindow, aligned_windows, one_request_each

log = structlog.get_logger("acexport.planner")


def ac_requests(job: JobSettings, type_: str, windows: list[ExportWindow]) -> int:
    """How many AC requests ``windows`` (of one type, oldest first) take: consecutive
    windows of a time series share one of up to the job's ``coalesce_max``."""
    if type_ not in TIME_SERIES:
        return len(windows)
    most = job.windows_per_request(MAX_WINDOWS)
    return len(one_request_each(windows, job.coalesce_max, most))


def due_windows(job: JobSettings, zone: ZoneInfo, now: datetime) -> list[ExportWindow]:
    """Windows that ended at least ``lag`` ago and reach into the last ``catch_up``.

    A window that straddles the horizon counts, so ``catch_up = "7d"`` with daily
    windows means the last seven days. Nothing before ``start`` (if set) is due.
    """
    latest_end = now - job.lag
    earliest = now - job.catch_up
    windows = [
        w
        for w in aligned_windows(zone, job.window, earliest - job.window, latest_end)
        if w.end > earliest
    ]
    if job.start is not None:
        start = job.start if job.start.tzinfo else job.start.replace(tzinfo=zone)
        windows = [w for w in windows if w.start >= start]
    return windows


@dataclass(frozen=True)
class Look:
    """What a look at a job found: how many (window, type) pairs are due, the
    ledger's rows among them still to export, and how many lie before AC's retention."""

    due: int
    records: list[ExportRecord]
    beyond_retention: int = 0
    newly_beyond_retention: int = 0  # of those, recorded as such by this look
    expired: int = 0  # windows whose files this look deleted (the job's keep)


class PlanLedger(KeepLedger, Protocol):
    """What the planner needs of the ledger (``ledger.Ledger``)."""

    def plan(
        self, job: str, workspace: str, types: Iterable[str], windows: Iterable[ExportWindow]
    ) -> Awaitable[list[ExportRecord]]: ...

    def adopt_stored(
        self,
        job: str,
        workspace: str,
        found: Iterable[tuple[str, ExportWindow, str, int, int, str | None]],
        mode: ExportMode = ExportMode.WINDOWS,
    ) -> Awaitable[int]: ...

    def plan_snapshot(
        self,
        job: str,
        workspace: str,
        type_: str,
        window: ExportWindow,
        found: Sequence[ExportRecord] = (),
    ) -> Awaitable[ExportRecord]: ...

    def snapshots(self, job: str, workspace: str) -> Awaitable[dict[str, list[ExportRecord]]]: ...

    def retry_failed(self, job: str, workspace: str) -> Awaitable[list[ExportRecord]]: ...

    def restate(
        self,
        job: str,
        workspace: str,
        types: Iterable[str],
        restate_s: float,
        ended_before: datetime,
        ended_after: datetime,
    ) -> Awaitable[list[ExportRecord]]: ...

    def done_files(
        self, workspace: str, types: Iterable[str], windows: Sequence[ExportWindow]
    ) -> Awaitable[dict[tuple[str, ExportWindow], DoneFile]]: ...

    def requeue(self, export_ids: Iterable[int], reason: str) -> Awaitable[int]: ...

    def mark_beyond_retention(
        self,
        job: str,
        workspace: str,
        types: Iterable[str],
        windows: Iterable[ExportWindow],
        reason: str,
    ) -> Awaitable[int]: ...

    def learned_retention(self, workspace: str) -> Awaitable[LearnedRetention | None]: ...


class Planner:
    """Turns looks at jobs into ledger rows, asking the output store first."""

    def __init__(
        self,
        ledger: PlanLedger,
        store: OutputStore,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        on_expired: Callable[[str, int], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._settings = settings
        self._clock = clock
        self._listed: set[str] = set()  # jobs whose windows were looked for in the store
        self._snapshots_listed: set[str] = set()  # ... and whose snapshots were
        self.snapshots = KnownSnapshots()  # those, for the lanes' prunes
        self.keep = Keep(ledger, store, settings, clock, on_expired)

    def due(self, job: JobSettings) -> list[ExportWindow]:
        """The job's windows due now."""
        return due_windows(job, self._settings().workspaces[job.workspace].zone, self._clock())

    async def look(self, job: JobSettings) -> Look:
        """Plan the job's due windows and snapshots; the store is listed once per job
        (at start, or when a reload changes it): afterwards this daemon is what writes
        its files."""
        key = _key(job)
        look = await self.plan(job, self.due(job), look_in_store=key not in self._listed)
        # Failed windows outside the horizon (a backfill's) are retried as often as the
        # others, not left failed until someone runs the backfill again.
        retried = await self._ledger.retry_failed(job.name, job.workspace)
        restated = await self._restate(job)
        expired = await self.keep.expire(job)
        snapshots = await self._plan_snapshots(job, look_in_store=key not in self._snapshots_listed)
        extra = retried + restated + snapshots
        return replace(
            look, due=look.due + len(extra), records=look.records + extra, expired=expired
        )

    async def _restate(self, job: JobSettings) -> list[ExportRecord]:
        """The job's windows now ``restate`` old, queued once more (if it restates)."""
        if job.restate is None or not job.window_types:
            return []
        now = self._clock()
        ended_before = now - job.restate
        records = await self._ledger.restate(
            job.name,
            job.workspace,
            job.window_types,
            job.restate.total_seconds(),
            ended_before,
            ended_before - job.catch_up - job.window,
        )
        if records:
            log.info("windows_restated", job=job.name, count=len(records))
        return records

    async def plan(
        self, job: JobSettings, windows: list[ExportWindow], *, look_in_store: bool = True
    ) -> Look:
        """Record ``windows`` of ``job``'s windowed types (those the output store lacks,
        if it is looked in); those before AC's retention are recorded as such."""
        types = job.window_types
        earliest = await self.retention_start(job.workspace)
        beyond = [w for w in windows if w.start < earliest]
        inside = [w for w in windows if w.start >= earliest]
        newly = await self._ledger.mark_beyond_retention(
            job.name, job.workspace, types, beyond, beyond_reason(earliest)
        )
        if look_in_store and types:
            await self.adopt(job, inside)
        records = await self._ledger.plan(job.name, job.workspace, types, inside)
        return Look(len(windows) * len(types), records, len(beyond) * len(types), newly)

    async def retention_start(self, workspace: str) -> datetime:
        """The earliest window start AC still holds data for (configured or learned)."""
        ws = self._settings().workspaces[workspace]
        months = effective_months(ws.retention, await self._ledger.learned_retention(workspace))
        return retention_start(self._clock(), months, ws.zone)

    async def snapshot_start(self, workspace: str) -> datetime:
        """Where a snapshot starts: ``snapshot_from``, but never before the retention."""
        ws = self._settings().workspaces[workspace]
        earliest = await self.retention_start(workspace)
        if ws.snapshot_from is None:
            return earliest
        return max(earliest, datetime.combine(ws.snapshot_from, time(), ws.zone))

    async def _plan_snapshots(self, job: JobSettings, *, look_in_store: bool) -> list[ExportRecord]:
        """A snapshot of each snapshot type, unless one is under way or the newest
        (in the ledger or, at the first look, in the store) is younger than the
        schedule's period: a daemon that was down takes one at start."""
        if not job.snapshot_types:
            return []
        zone = self._settings().workspaces[job.workspace].zone
        now = self._clock()
        start = await self.snapshot_start(job.workspace)
        as_of = now.replace(microsecond=0)
        if start >= as_of:
            log.warning("snapshot_from_in_future", job=job.name, snapshot_from=start.isoformat())
            return []

        @functools.cache
        def period() -> timedelta | None:
            # Only once a snapshot was taken: a cron's arithmetic was a third of a
            # first look's time (a thousand jobs at start).
            return schedule_period(job.trigger(zone), now)

        records = []
        by_type = await self._ledger.snapshots(job.name, job.workspace)
        idle = [
            type_
            for type_ in job.snapshot_types
            if not any(r.state in ACTIVE for r in by_type.get(type_, []))
        ]
        stored: dict[str, list[StoredSnapshot]] | None = {}
        if look_in_store and idle:
            stored = await self._stored_snapshots(job, idle, zone)
        planned: list[Awaitable[ExportRecord]] = []
        for type_ in job.snapshot_types:
            rows = by_type.get(type_, [])
            if type_ not in idle:
                records += [r for r in rows if r.state in ACTIVE]
                continue
            newest = max((r.end for r in rows if r.state is LedgerState.DONE), default=None)
            if stored:
                newest = await self._adopt_newest_snapshot(job, type_, stored[type_], newest)
            if newest is None or snapshot_due(newest, as_of, period()):
                window = ExportWindow(start, as_of, zone)
                planned.append(
                    self._ledger.plan_snapshot(job.name, job.workspace, type_, window, rows)
                )
        # Each type's row is its own: asked for together, they share the ledger's next
        # transaction (one round trip of a busy ledger, not one a type, at a first look).
        records += await asyncio.gather(*planned)
        if look_in_store and stored is not None:
            self._snapshots_listed.add(_key(job))
        return records

    async def _stored_snapshots(
        self, job: JobSettings, types: Sequence[str], zone: ZoneInfo
    ) -> dict[str, list[StoredSnapshot]] | None:
        """The proven snapshots of each of ``types`` in the store (their prefixes listed
        at once); None if the store cannot be listed now (the next look lists again)."""
        layout = OutputLayout.from_settings(self._settings().output)
        try:
            return await listed_snapshots(
                self._store, layout, job.name, job.workspace, types, zone, self.snapshots
            )
        except (StoreRejected, StoreUnavailable) as exc:
            log.warning("output_store_not_listed", job=job.name, error=str(exc))
            return None

    async def _adopt_newest_snapshot(
        self, job: JobSettings, type_: str, stored: list[StoredSnapshot], newest: datetime | None
    ) -> datetime | None:
        """The newest snapshot's as-of time, the store's (``stored``, oldest first) if it
        is newer than the ledger's (then recorded done: a lost state dir takes no extra
        snapshot)."""
        if not stored or (newest is not None and stored[-1].as_of <= newest):
            return newest
        last = stored[-1]
        found = [(type_, last.window, last.location, last.size, 1, None)]
        await self._ledger.adopt_stored(job.name, job.workspace, found, ExportMode.SNAPSHOT)
        log.info("snapshot_found_in_store", job=job.name, type=type_, as_of=last.as_of.isoformat())
        return last.as_of

    async def adopt(self, job: JobSettings, windows: list[ExportWindow]) -> int:
        """Square the ledger with the store for ``windows``; how many rows changed.

        Windows whose file the store holds, proven whole by its manifest, are done;
        windows the ledger says are done but the store lacks (a new output root, a
        state dir copied or restored, a file deleted to force a re-export) are queued
        again. If the store cannot be listed now, nothing changes: the windows are
        exported anyway (a commit replaces, never duplicates) and the next look lists
        again.
        """
        layout = OutputLayout.from_settings(self._settings().output)
        try:
            done = await self._ledger.done_files(job.workspace, job.window_types, windows)
            recorded = {slot: row.destination for slot, row in done.items()}
            files = await stored_files(
                self._store, layout, job.workspace, job.name, job.window_types, windows, recorded
            )
            fresh = [f for f in files if (f.type, f.window) not in done]
            proven, refused = await prove(self._store, job.workspace, fresh)
        except (StoreRejected, StoreUnavailable) as exc:
            log.warning("output_store_not_listed", job=job.name, error=str(exc))
            return 0
        self._listed.add(_key(job))
        changed = await self._requeue_missing(job, files, done)
        if refused:
            stored, why = refused[0]
            log.warning(
                "stored_windows_not_trusted",
                job=job.name,
                count=len(refused),
                example=stored.location,
                reason=why,
                detail="exported again; the store's files are replaced",
            )
        adopted = await self._ledger.adopt_stored(
            job.name,
            job.workspace,
            [(f.type, f.window, f.location, f.size, f.revision, f.file_sha256) for f in proven],
        )
        if adopted:
            log.info("exports_found_in_store", job=job.name, count=adopted, stored=len(files))
        return changed + adopted

    async def _requeue_missing(
        self,
        job: JobSettings,
        files: list[StoredFile],
        done: dict[tuple[str, ExportWindow], DoneFile],
    ) -> int:
        sizes = {(f.type, f.window): f.size for f in files}
        missing = [
            row.export_id
            for slot, row in done.items()
            if slot not in sizes or (row.file_bytes is not None and sizes[slot] != row.file_bytes)
        ]
        if not missing:
            return 0
        requeued = await self._ledger.requeue(missing, "missing from the output store")
        log.warning(
            "exports_missing_from_store",
            job=job.name,
            count=requeued,
            detail="recorded done, but the output store lacks the file (or it changed): "
            "exported again",
        )
        return requeued


def snapshot_due(newest: datetime, as_of: datetime, period: timedelta | None) -> bool:
    """Whether a snapshot as of ``as_of`` is due after one as of ``newest``: a schedule's
    period later. A look fires a little late at times: a tenth of the period (at most
    10 minutes) is forgiven. Never twice as of one second (one file name)."""
    if as_of <= newest:
        return False
    if period is None:
        return True
    slack = min(period / 10, timedelta(minutes=10))
    return as_of - newest >= period - slack


def _key(job: JobSettings) -> str:
    return job.model_dump_json()
