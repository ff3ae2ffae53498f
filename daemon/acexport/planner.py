"""What is due: the windows of a job, minus what the output store already holds.

``due_windows`` is pure arithmetic on a job's settings and the time. A
``Planner`` turns a look at a job into ledger rows: it asks the output store
once per job (the truth: README, "Output") which due windows are already
there, marks those its manifests prove done, queues again the ones the ledger
calls done but the store lacks, and records the rest as queued. Looking twice
changes nothing. Queueing rows into lanes is the daemon's business.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from .config import JobSettings, Settings
from .errors import StoreRejected, StoreUnavailable
from .ledger_schema import ExportRecord
from .output.layout import OutputLayout
from .output.store import OutputStore
from .output.stored import StoredFile, stored_files, unproven
from .retention import effective_months, retention_start
from .windows import ExportWindow, aligned_windows

log = structlog.get_logger("acexport.planner")


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


class PlanLedger(Protocol):
    """What the planner needs of the ledger (``ledger.Ledger``)."""

    def plan(
        self, job: str, workspace: str, types: Iterable[str], windows: Iterable[ExportWindow]
    ) -> Awaitable[list[ExportRecord]]: ...

    def adopt_stored(
        self, job: str, workspace: str, found: Iterable[tuple[str, ExportWindow, str, int]]
    ) -> Awaitable[int]: ...

    def done_files(
        self, workspace: str, types: Iterable[str], windows: Sequence[ExportWindow]
    ) -> Awaitable[dict[tuple[str, ExportWindow], tuple[int, int | None]]]: ...

    def requeue(self, export_ids: Iterable[int], reason: str) -> Awaitable[int]: ...

    def mark_beyond_retention(
        self,
        job: str,
        workspace: str,
        types: Iterable[str],
        windows: Iterable[ExportWindow],
        reason: str,
    ) -> Awaitable[int]: ...

    def learned_retention(self, workspace: str) -> Awaitable[int | None]: ...


class Planner:
    """Turns looks at jobs into ledger rows, asking the output store first."""

    def __init__(
        self,
        ledger: PlanLedger,
        store: OutputStore,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._settings = settings
        self._clock = clock
        self._listed: set[str] = set()  # jobs whose windows were looked for in the store

    def due(self, job: JobSettings) -> list[ExportWindow]:
        """The job's windows due now."""
        return due_windows(job, self._settings().workspaces[job.workspace].zone, self._clock())

    async def look(self, job: JobSettings) -> Look:
        """Plan the job's due windows; the store is listed once per job (at start, or
        when a reload changes it): afterwards this daemon is what writes its windows."""
        windows = self.due(job)
        return await self.plan(job, windows, look_in_store=_key(job) not in self._listed)

    async def plan(
        self, job: JobSettings, windows: list[ExportWindow], *, look_in_store: bool = True
    ) -> Look:
        """Record ``windows`` of ``job`` (those the output store lacks, if it is looked
        in); those before AC's retention are recorded as such, never queued."""
        earliest = await self.retention_start(job.workspace)
        beyond = [w for w in windows if w.start < earliest]
        inside = [w for w in windows if w.start >= earliest]
        newly = await self._ledger.mark_beyond_retention(
            job.name, job.workspace, job.types, beyond, _beyond_reason(earliest)
        )
        if look_in_store:
            await self.adopt(job, inside)
        records = await self._ledger.plan(job.name, job.workspace, job.types, inside)
        return Look(len(windows) * len(job.types), records, len(beyond) * len(job.types), newly)

    async def retention_start(self, workspace: str) -> datetime:
        """The earliest window start AC still holds data for (configured or learned)."""
        ws = self._settings().workspaces[workspace]
        months = effective_months(ws.retention, await self._ledger.learned_retention(workspace))
        return retention_start(self._clock(), months, ws.zone)

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
            files = await stored_files(
                self._store, layout, job.workspace, job.name, job.types, windows
            )
            done = await self._ledger.done_files(job.workspace, job.types, windows)
            fresh = [f for f in files if (f.type, f.window) not in done]
            refused = await unproven(self._store, job.workspace, fresh)
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
        untrusted = {stored for stored, _ in refused}
        proven = [(f.type, f.window, f.location, f.size) for f in fresh if f not in untrusted]
        adopted = await self._ledger.adopt_stored(job.name, job.workspace, proven)
        if adopted:
            log.info("exports_found_in_store", job=job.name, count=adopted, stored=len(files))
        return changed + adopted

    async def _requeue_missing(
        self,
        job: JobSettings,
        files: list[StoredFile],
        done: dict[tuple[str, ExportWindow], tuple[int, int | None]],
    ) -> int:
        sizes = {(f.type, f.window): f.size for f in files}
        missing = [
            export_id
            for slot, (export_id, size) in done.items()
            if slot not in sizes or (size is not None and sizes[slot] != size)
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


def _beyond_reason(earliest: datetime) -> str:
    return f"before AC's data retention (data from {earliest.date().isoformat()} on)"


def _key(job: JobSettings) -> str:
    return job.model_dump_json()
