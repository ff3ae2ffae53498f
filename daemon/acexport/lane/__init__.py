"""A lane: one per access token, a FIFO of exports and AC's single processing slot.

AC processes one export at a time per workspace, so a lane never has more than
one export submitted-but-not-ready: it takes the slot before submitting and
gives it back the moment the data is ready, so the next export is submitted
while the previous one downloads. Lanes run independently: a rejected token
stalls only its own lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from pydantic import SecretStr

from ..ac.client import ExportClient, TokenTrust
from ..config import Settings
from ..errors import (
    AcexportError,
    AuthError,
    BeyondRetention,
    RestatementShrank,
    StateError,
    StoreRejected,
)
from ..events import ExportEnded
from ..export import (
    ExportOutcome,
    ExportSpec,
    ready_lifetime_s,
    run_export,
)
from ..ledger import ExportRecord, LedgerState
from ..ops.logging import remote_text
from ..protocol import ExportMode
from ..windows import iso_ms
from .context import LaneContext, hooks_for, timing_for
from .requests import coalesce, request_of
from .restatement import drop_replaced_file, guarded, keep_previous_revision
from .retention import before_retention, refused_as_beyond_retention
from .slot import SlotHold, SlotKeeper, in_slot_order, still_downloadable
from .snapshots import prune_snapshots_after

__all__ = ["Lane", "LaneContext"]

log = structlog.get_logger("acexport.lane")


class Lane:
    """Exports for one token, submitted one at a time, downloaded as they become ready."""

    def __init__(
        self, key: str, token: SecretStr, ctx: LaneContext, max_in_flight: int = 3
    ) -> None:
        self.key = key
        self.ctx = ctx
        self.use_token(token)
        self._queue: asyncio.Queue[ExportRecord | None] = asyncio.Queue()
        self._queued_ids: set[int] = set()
        self._slot = asyncio.Semaphore(1)
        self._capacity = asyncio.Semaphore(max_in_flight)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._sleeping: set[int] = set()  # exports waiting between two requests to AC
        # Windows a coalesced request running now serves: skipped if dequeued or enqueued.
        self._grouped: set[int] = set()
        # The coalesced AC requests being exported now: (job, type, start, end).
        self._requests: set[tuple[str, str, datetime, datetime]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._worker: asyncio.Task[None] | None = None
        self.auth_failure: str | None = None

    # -- feeding ---------------------------------------------------------------
    def enqueue(self, records: list[ExportRecord]) -> int:
        """Add records not already queued or running here; returns how many were new."""
        added = 0
        for record in in_slot_order(records, self._download_window_s()):
            taken = record.id in self._queued_ids or record.id in self._tasks
            if taken or record.id in self._grouped or self._stopping:
                continue
            self._queued_ids.add(record.id)
            self._queue.put_nowait(record)
            added += 1
        if added:
            self._idle.clear()
        return added

    @property
    def token(self) -> SecretStr:
        return self._token

    def use_token(self, token: SecretStr) -> None:
        """Export with ``token`` from now on; AC has yet to accept it (see ``TokenTrust``)."""
        self._token = token
        self.trust = TokenTrust()
        self.auth_failure = None

    def clear_auth_failure(self) -> None:
        self.auth_failure = None

    @property
    def depth(self) -> int:
        return len(self._queued_ids)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name=f"lane-{self.key}")

    async def _run(self) -> None:
        while True:
            record = await self._queue.get()
            if record is None or self._stopping:
                return
            await self._capacity.acquire()
            needs_slot = not still_downloadable(record, self._download_window_s())
            if needs_slot:
                await self._slot.acquire()
            self._queued_ids.discard(record.id)
            self._tasks[record.id] = asyncio.create_task(
                self._execute(record, needs_slot), name=f"export-{record.id}"
            )

    def _download_window_s(self) -> float:
        return self.ctx.settings().http.download_window.total_seconds()

    async def _execute(self, record: ExportRecord, holds_slot: bool) -> None:
        hold = SlotHold(self._slot, holds_slot)
        names: tuple[str, ...] = ()
        try:
            # Every event about this export names it (design section 7); a snapshot by its
            # as-of time. The task's context is its own (create_task copied it): nothing to
            # restore after, which structlog's bound_contextvars reads the whole context for.
            snapshot = {"as_of": iso_ms(record.end)} if record.mode is ExportMode.SNAPSHOT else {}
            names = tuple(  # the names only: their tokens would live as long as the export
                structlog.contextvars.bind_contextvars(
                    job=record.job,
                    lane=self.key,
                    workspace=record.workspace,
                    type=record.type,
                    window=iso_ms(record.start),
                    when=self._when(record),
                    **snapshot,
                )
            )
            try:
                await self._export(record, hold)
            except StateError:
                raise
            except Exception as exc:
                # A bug or an input nobody foresaw: still a recorded, visible failure.
                log.exception("export_crashed", kind=type(exc).__name__)
                await self._failed([record], f"unexpected {type(exc).__name__}: {exc}")
        except Exception as exc:  # the ledger, or recording a failure failed: it stops
            self.ctx.fatal(exc)
        finally:
            structlog.contextvars.unbind_contextvars(*names)
            hold.give_back()
            self._capacity.release()
            self._tasks.pop(record.id, None)
            if not self._tasks and not self._queued_ids and not self._idle.is_set():
                self._idle.set()
                log.info("lane_caught_up", lane=self.key, detail="nothing left to export")

    def _when(self, record: ExportRecord) -> str:
        """The window as people name it, in the workspace's zone as its file name is."""
        ws = self.ctx.settings().workspaces.get(record.workspace)
        return record.label(ws.zone if ws else UTC)

    async def _export(self, record: ExportRecord, hold: SlotHold) -> None:
        # A resumed row names the coalesced AC request it is served by: one task serves
        # that request, held across the claim (a second task that claimed first and
        # looked later saw its first had failed, and downloaded it again: test_model.py).
        request = request_of(record)
        if record.id in self._grouped or (request is not None and request in self._requests):
            return  # a coalesced request running now serves this window
        if request is not None:
            self._requests.add(request)  # before the next await: no other task passes
        try:
            await self._claim_and_export(record, hold)
        finally:
            self._requests.discard(request)

    async def _claim_and_export(self, record: ExportRecord, hold: SlotHold) -> None:
        settings, keep = self.ctx.settings(), self.ctx.keep
        # Still active, not past its keep, and submitted unless its ready data is still
        # downloadable: one statement (the ledger's round trips were an export's CPU).
        ready_since = time.time() - ready_lifetime_s(self._download_window_s())
        kept_from = keep.kept_from(record) if keep else ""
        current = await self.ctx.ledger.claim(record.id, ready_since, kept_from)
        if current is None and kept_from and keep and not await keep.expire_waiting(record):
            # Past its keep, not expired (the store refused the delete): exported, as a
            # later look expires it (never a drain spinning on it); or finished meanwhile.
            current = await self.ctx.ledger.claim(record.id, ready_since)
        if current is None:
            # Finished by this process just as it was picked up, or expired here.
            return
        was_queued = record.state is LedgerState.QUEUED
        if current.id in self._grouped or request_of(current) not in (None, request_of(record)):
            return  # another task's coalesced request took it meanwhile
        await self._export_claimed(current, was_queued, settings, hold)

    async def _export_claimed(
        self, record: ExportRecord, was_queued: bool, settings: Settings, hold: SlotHold
    ) -> None:
        if self.auth_failure:
            await self._failed([record], self.auth_failure)
            return
        ws = settings.workspaces.get(record.workspace)
        if ws is None:
            await self._failed([record], "the workspace is no longer configured")
            return
        if await before_retention(self.ctx, record):
            return
        group = await coalesce(self.ctx, record, was_queued, settings)
        members = {member.id for member in group} - {record.id}
        self._grouped |= members
        try:
            outcome = await self._export_group(group, ws.zone, settings, hold)
        finally:
            self._grouped -= members
        if outcome is not None and record.mode is ExportMode.SNAPSHOT:
            await prune_snapshots_after(self.ctx, record, ws.zone, outcome.files[0])

    async def _export_group(
        self, group: list[ExportRecord], zone: ZoneInfo, settings: Settings, hold: SlotHold
    ) -> ExportOutcome | None:
        """Run the export serving ``group`` (one window, or a coalesced request's) and
        record its end on every window of it; what it wrote, if it wrote."""
        leader = group[0]
        if leader.request_start is not None:
            spec = ExportSpec.coalesced(group, zone, settings.output)
        else:
            spec = guarded(ExportSpec.of(leader, zone, settings.output), leader, settings)
        await self.ctx.ledger.stage_events((r, hooks_for(settings, r)) for r in group)
        try:
            outcome = await self._run_export(group, spec, settings, hold)
        except StateError:
            raise
        except BeyondRetention as exc:
            configured = settings.workspaces[leader.workspace].retention
            if not await refused_as_beyond_retention(self.ctx, leader, exc, configured):
                await self._failed(group, f"RemoteRejected: {exc}")
                return None
            # The rest of a coalesced request lies after it: asked again, on their own.
            await asyncio.shield(self.ctx.ledger.release([m.id for m in group[1:]]))
            return None
        except RestatementShrank as exc:
            await self._kept_previous(leader, exc)  # no new file: nothing to prune
            return None
        except AuthError as exc:
            self.auth_failure = remote_text(f"AuthError: {exc}")
            log.error("lane_token_rejected", workspace=leader.workspace, error=str(exc))
            await self._failed(group, self.auth_failure, token_rejected=True)
            return None
        except AcexportError as exc:
            log.error("export_failed", error=str(exc), kind=type(exc).__name__)
            rejected = isinstance(exc, StoreRejected)
            await self._failed(group, f"{type(exc).__name__}: {exc}", store_rejected=rejected)
            return None
        except Exception as exc:
            # A bug or an input nobody foresaw: a recorded, visible failure of every
            # window the request serves (the others stayed "ready" for ever).
            log.exception("export_crashed", kind=type(exc).__name__)
            await self._failed(group, f"unexpected {type(exc).__name__}: {exc}")
            return None
        await self._succeeded(group, outcome)
        return outcome

    async def _run_export(
        self,
        group: list[ExportRecord],
        spec: ExportSpec,
        settings: Settings,
        hold: SlotHold,
    ) -> ExportOutcome:
        record = group[0]
        observer = self.ctx.observer
        client = ExportClient(
            self.ctx.session,
            settings.workspaces[record.workspace].base_url,
            self.token,
            on_response=lambda code: observer.answered(record.workspace, code),
            server_clock=self.ctx.server_clock,
            trust=self.trust,
            max_inflate_ratio=settings.http.max_inflate_ratio,
        )
        timing = await timing_for(self.ctx, record)

        async def record_ready(created_date: str | None, processing_s: float) -> None:
            # Durable before the slot goes to the next export: after a crash, the
            # ledger must not show two exports waiting on AC at once.
            for member in group:
                await asyncio.shield(
                    self.ctx.ledger.mark_ready(member.id, created_date, processing_s)
                )

        keeper, stores = SlotKeeper(record.created_date, hold, record_ready), self.ctx.stores.held
        sleep, asks = partial(self._sleep, record.id), partial(self._seat, record.id)
        return await run_export(
            spec, client, self.ctx.sink, timing, keeper, sleep=sleep, seat=asks, store_seat=stores
        )

    @contextlib.contextmanager
    def _between_requests(self, export_id: int) -> Iterator[None]:
        """A wait between two requests to AC, which a stop ends at once: nothing is lost
        (the ledger resumes the export), and the grace is left to downloads and commits."""
        if self._stopping:
            raise asyncio.CancelledError
        self._sleeping.add(export_id)
        try:
            yield
        finally:
            self._sleeping.discard(export_id)

    async def _sleep(self, export_id: int, delay_s: float) -> None:
        with self._between_requests(export_id):
            await asyncio.sleep(delay_s)

    @contextlib.asynccontextmanager
    async def _seat(self, export_id: int, submission: bool) -> AsyncIterator[None]:
        """One of the seats every lane shares to ask AC (``LaneContext.seats``)."""
        with self._between_requests(export_id):
            await self.ctx.seats.take(submission)
        try:
            yield
        finally:
            self.ctx.seats.give_back()

    async def _succeeded(self, group: list[ExportRecord], outcome: ExportOutcome) -> None:
        """Each window done with its file; the request's cost (requests, bytes, time)
        counted once, on the first."""
        files = {stored.window.start: stored for stored in outcome.files}
        for index, record in enumerate(group):
            stored = files[record.start]
            manifest = stored.manifest
            first = index == 0
            if stored.kept and record.revision > 1:  # no new file: nothing to announce
                await asyncio.shield(self.ctx.ledger.unstage_events(record.id, record.revision))
            location = self.ctx.sink.store.location(stored.key)
            await asyncio.shield(
                self.ctx.ledger.mark_done(
                    record.id,
                    destination=location,
                    records=manifest.records,
                    payload_bytes=manifest.payload_bytes,
                    payload_sha256=manifest.payload_sha256,
                    requests=outcome.requests if first else 0,
                    created_date=manifest.createdDate,
                    file_bytes=manifest.file_bytes,
                    file_sha256=manifest.file_sha256,
                )
            )
            if record.destination is not None and not stored.kept:  # no task otherwise
                await asyncio.shield(drop_replaced_file(self.ctx, record, location))
            if stored.kept and record.revision > 1:
                # The stored file and its manifest stay those of the previous revision:
                # so does the row (it said revision 2 of a revision-1 file: found by
                # tests/test_model.py).
                reason = f"restated unchanged: revision {record.revision - 1} kept"
                await asyncio.shield(self.ctx.ledger.keep_previous_revision(record.id, reason))
            self._publish(
                record,
                ok=True,
                payload_bytes=manifest.payload_bytes if first else 0,
                requests=outcome.requests if first else 0,
                processing_s=outcome.processing_s if first else None,
                download_s=outcome.download_s if first else None,
                new_columns=tuple(manifest.new_columns or ()),
                unparsed_values=manifest.unparsed_values or 0,
                windows_served=len(group) if first else 0,
            )

    async def _failed(
        self,
        group: list[ExportRecord],
        reason: str,
        *,
        token_rejected: bool = False,
        store_rejected: bool = False,
    ) -> None:
        # Reasons carry server text: redacted and capped before the ledger, status and
        # the unauthenticated /healthz see them.
        reason = remote_text(reason)
        cap = None
        if len(group) > 1:
            # Never the same request again: its windows are asked for in halves, down
            # to one each, so those that can succeed do (one bad record poisoned 31).
            cap = len(group) // 2
            reason += f" (in an AC request of {len(group)} windows; next at most {cap} in one)"
            log.warning("coalesced_request_split", windows=len(group), next_at_most=cap)
        for record in group:
            await asyncio.shield(self.ctx.ledger.mark_failed(record.id, reason, max_windows=cap))
            self._publish(
                record,
                ok=False,
                reason=reason,
                token_rejected=token_rejected,
                store_rejected=store_rejected,
            )

    async def _kept_previous(self, record: ExportRecord, exc: RestatementShrank) -> None:
        await keep_previous_revision(self.ctx, record, exc)
        self._publish(record, ok=True, restatement_kept=True)

    def _publish(self, record: ExportRecord, **outcome: Any) -> None:
        event = ExportEnded(self.key, record.workspace, record.type, record.job, **outcome)
        self.ctx.observer.export_ended(event)

    # -- stopping --------------------------------------------------------------
    async def wait_idle(self) -> None:
        await self._idle.wait()

    def stop_taking_work(self) -> None:
        self._stopping = True
        self._queue.put_nowait(None)

    async def stop(self, grace_s: float) -> None:
        """Stop submitting; cancel the exports waiting between requests at once, give
        the others (downloading, committing) ``grace_s`` to finish, then cancel them.

        A cancelled export keeps its ledger row (submitted or ready), so the next
        start resumes it instead of submitting it again.
        """
        self.stop_taking_work()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for export_id in list(self._sleeping):  # between requests: nothing to finish
            self._tasks[export_id].cancel()
        running = list(self._tasks.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
