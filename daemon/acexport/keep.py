"""A job's ``keep``: which of its windows are too old to hold, and deleting them.

At each look the files of the windows that ended longer ago than ``keep`` are
deleted and their rows recorded ``expired`` (docs/data.md, "Keeping"). A window
that old still waiting to be exported is expired too, never asked of AC: at a
start, at a pick-up from the ledger, and when its lane reaches it (it waited in
the lane's queue past its keep). One AC is preparing finishes first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Protocol

import structlog

from .config import JobSettings, Settings
from .errors import StoreRejected, StoreUnavailable
from .ledger import ExportRecord, LedgerState
from .output.layout import OutputLayout
from .output.store import OutputStore, key_at
from .output.stored import delete_stored
from .protocol import ExportMode
from .windows import iso_ms

log = structlog.get_logger("acexport.planner")

_EXPIRED_PER_LOOK = 500  # windows whose files one look deletes: bounded work per look
# Windows whose manifests, then files, go in one batch (S3: a request for each).
_EXPIRED_PER_BATCH = 100


class KeepLedger(Protocol):
    """What keeping needs of the ledger (``ledger.Ledger``)."""

    def expirable(
        self, job: str, workspace: str, ended_by: datetime, limit: int
    ) -> Awaitable[list[ExportRecord]]: ...

    def mark_expired(self, export_ids: Iterable[int]) -> Awaitable[int]: ...

    def get(self, export_id: int) -> Awaitable[ExportRecord | None]: ...


class Keep:
    """Every job's ``keep``, applied to its windows in the output store and the ledger."""

    def __init__(
        self,
        ledger: KeepLedger,
        store: OutputStore,
        settings: Callable[[], Settings],
        clock: Callable[[], datetime],
        on_expired: Callable[[str, int], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._store = store
        self._settings = settings
        self._clock = clock
        self._on_expired = on_expired  # (job, windows): the daemon's metric

    def _edge(self, record: ExportRecord) -> datetime | None:
        """The end by which a window of ``record``'s job is too old to hold; None if its
        job keeps everything, or ``record`` is a snapshot (snapshots keep a count)."""
        job = self._settings().jobs_by_name.get(record.job)
        if job is None or job.keep is None or record.mode is not ExportMode.WINDOWS:
            return None
        return self._clock() - job.keep

    def deletes_waiting(self, record: ExportRecord) -> bool:
        """Whether ``record`` is a queued window its job's keep deletes: asked of AC,
        it would be exported only to be deleted at the next look."""
        edge = self._edge(record)
        return edge is not None and record.state is LedgerState.QUEUED and record.end <= edge

    def kept_from(self, record: ExportRecord) -> str:
        """``_edge`` as ledger text, for the lane's claim to refuse a queued window
        that ended by then (``Ledger.claim``); "" if none is."""
        edge = self._edge(record)
        return "" if edge is None else iso_ms(edge)

    def not_to_expire(self, records: list[ExportRecord]) -> list[ExportRecord]:
        """``records`` less the queued windows their job's keep deletes (resumed at a
        start, picked up later): the job's next look expires them."""
        return [r for r in records if not self.deletes_waiting(r)]

    async def expire(self, job: JobSettings) -> int:
        """Delete the files of the job's windows older than its ``keep``, in batches:
        the manifests first (a reader never sees a manifest whose file is gone; a crash
        between the two leaves files the next look deletes, as their rows are not yet
        expired), then the files; then mark them expired. At most _EXPIRED_PER_LOOK a
        look; a store that refuses is retried at the next look, never fatal to exports."""
        if job.keep is None or not job.window_types:
            return 0
        rows = await self._ledger.expirable(
            job.name, job.workspace, self._clock() - job.keep, _EXPIRED_PER_LOOK
        )
        return await self._delete(job, rows)

    async def expire_waiting(self, record: ExportRecord) -> bool:
        """A window that became older than its job's keep while it waited in its lane
        (its claim refused it) expired now, as the next look would: True if it was."""
        if not self.deletes_waiting(record):
            return False
        # As the ledger has it now: a coalesced request of the lane may have taken it
        # since it was handed over (its files are then not this check's to delete).
        current = await self._ledger.get(record.id)
        if current is None or not self.deletes_waiting(current):
            return False
        return await self._delete(self._settings().jobs_by_name[record.job], [current]) == 1

    async def _delete(self, job: JobSettings, rows: list[ExportRecord]) -> int:
        if not rows:
            return 0
        layout = OutputLayout.from_settings(self._settings().output)
        zone = self._settings().workspaces[job.workspace].zone
        deleted: list[int] = []
        try:
            for start in range(0, len(rows), _EXPIRED_PER_BATCH):
                batch = rows[start : start + _EXPIRED_PER_BATCH]
                keys = [
                    stored
                    for row in batch
                    for stored in {
                        layout.key_for(job.workspace, row.type, job.name, row.window(zone)),
                        *filter(None, [key_at(self._store, row.destination)]),
                    }
                ]
                await delete_stored(self._store, keys)
                deleted += [row.id for row in batch]
        except (StoreRejected, StoreUnavailable, OSError) as exc:
            # The batches deleted so far are expired; the rest are retried at the next look.
            log.warning("keep_delete_failed", job=job.name, error=str(exc), detail="retried")
        if not deleted:
            return 0
        expired = await self._ledger.mark_expired(deleted)
        log.info("windows_expired", job=job.name, count=expired, keep=str(job.keep))
        if self._on_expired is not None:
            self._on_expired(job.name, expired)
        return expired
