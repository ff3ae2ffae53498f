"""The daemon: composes the state lock, ledger, output store, sink, HTTP session,
health server, lanes, scheduler and background loops.

    async with Daemon(settings, config_path) as daemon:
        await daemon.run_until_stopped()

Each component starts itself and registers its cleanup on one AsyncExitStack, so
they stop in reverse order; background loops run in a task group and are awaited.
Lanes publish events to the metrics, health and a tally (``run``'s workers, shard.py,
to this process's). Signals are the command layer's business: it calls
``request_stop`` and ``request_reload``; the daemon is embeddable and testable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from types import TracebackType
from zoneinfo import ZoneInfo

import aiohttp
import structlog

from ..ac.client import new_session
from ..ac.serverclock import ServerClock, ask_ac_the_time
from ..config import JobSettings, Settings, load_settings, resolve_tokens
from ..errors import StateError
from ..events import Observers, Tally
from ..export import Timing
from ..hooks import HookDispatcher
from ..lane import Lane, LaneContext
from ..ledger import Ledger, ledger_path
from ..lock import release_lock, take_lock
from ..ops.health import Health
from ..ops.logging import register_secrets
from ..ops.metrics import Metrics
from ..ops.notify import SystemdNotifier
from ..ops.server import HealthServer
from ..ops.statuspage import PageInput, StatusPage
from ..ops.statusview import LaneView
from ..output.open import open_store
from ..output.owner import OutputClaim
from ..output.sink import Sink
from ..output.store import OutputStore
from ..planner import Look, Planner
from ..scheduler import Scheduler, utc_now
from ..windows import ExportWindow
from .lanes import Lanes
from .loops import all_idle, measure_loop_lag, ping_watchdog, report_lanes, status_line
from .reload import changed_workspaces, forget_failures, read_new_config
from .shard import Shard, WorkerLink, WorkerSeat, pin_to_one_cpu
from .startup import abort_stale_uploads, claim_output, claim_temp_dir, lane_keys
from .views import page_input, refresh_backlog
from .workers import Heard, Workers

__all__ = ["Daemon", "lane_keys"]

log = structlog.get_logger("acexport.service")


class Daemon:
    def __init__(
        self,
        settings: Settings,
        config_path: Path | None,
        clock: Callable[[], datetime] = utc_now,
        reload_settings: Callable[[], Settings] | None = None,
        *,
        resume: bool = True,
        spread: bool = False,
        once: bool = False,
        seat: WorkerSeat | None = None,
    ) -> None:
        self._settings = settings
        # False (a foreground backfill): none of the ledger's leftovers is resumed, only
        # what its own plan queues (its windows' rows at AC too): the rest waits for run.
        self._resume, self._config_path = resume, config_path
        # ``run``'s lanes go over daemon.processes (shard.py); a worker has its seat.
        self._shard = seat.shard if seat else Shard(0, settings.daemon.processes if spread else 1)
        self._once = once
        self._workers: Workers | None = None
        self._link = WorkerLink(seat.events_fd, self.fail) if seat else None
        # What SIGHUP reads: the config file again, unless the command layer says otherwise.
        self._reload_settings = reload_settings or (lambda: load_settings(config_path))
        self._clock = clock
        self._tokens = resolve_tokens(settings, str(config_path or "environment"))
        # Embedders need not remember to.
        register_secrets(token.get_secret_value() for token in self._tokens.values())
        self._stack = AsyncExitStack()
        self._lanes = Lanes(self._shard)
        self._stop, self._reload = asyncio.Event(), asyncio.Event()
        self._wake = asyncio.Event()  # a stop or a reload was asked for
        self._ledger: Ledger
        self._output: OutputStore
        self._claim: OutputClaim | None = None
        self.hooks: HookDispatcher | None = None  # process 0's: a worker's go there
        self._planner: Planner
        self._ctx: LaneContext
        self._scheduler = Scheduler(self._look, clock)
        # Windows are planned by AC's time when the local clock runs ahead of it.
        self._server_clock = ServerClock(clock)
        self.metrics = Metrics()
        self.metrics.watch_lanes(self._all_lanes)
        self.health = Health()
        self.tally = Tally()  # exports finished and failed since start
        self._notifier = SystemdNotifier()
        self.health_url: str | None = None
        self.fatal_error: BaseException | None = None
        self.loop_lag_max_s = 0.0
        # Rendered anew whenever the ledger changed, whoever changed it.
        self._status_page = StatusPage(self._page_input, version=lambda: self._ledger.changes)

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def lanes(self) -> dict[str, Lane]:
        return self._lanes.by_key

    # -- lifecycle -------------------------------------------------------------
    async def __aenter__(self) -> Daemon:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _start(self) -> None:
        """Start each component in order; each registers its own cleanup on the stack."""
        daemon, stack = self._settings.daemon, self._stack
        temp_dir = await self._start_storage(stack)
        await self._start_workers(stack)  # they start as this one does
        if daemon.pin_cpus:
            pin_to_one_cpu(self._shard)
        self._planner = Planner(
            self._ledger, self._output, lambda: self._settings, self._server_clock.now,
            self._expired,
        )  # fmt: skip
        session = await self._start_lane_context(stack, temp_dir)
        if self._workers:  # what they said waited for these
            self._workers.listen(Heard(self._observers, self._expired, self._lagged))
        base_urls = {ws.base_url for ws in self._settings.workspaces.values()}
        await ask_ac_the_time(session, base_urls, self._server_clock)
        if daemon.listen and not self._shard.is_worker:
            server = HealthServer(
                self.health, self.metrics, daemon.listen, self.status_page, self._refresh_backlog
            )
            self.health_url = await server.start(stack)
        grace = daemon.stop_grace.total_seconds()
        stack.push_async_callback(self._lanes.stop, grace)
        self._scheduler.start(stack)  # stopped before the lanes: no look after that
        self._apply_lanes()
        for job in self._owned_jobs():  # before resuming: what is stored needs no export
            await self._planner.adopt(job, self._planner.due(job))
        await self._resume_leftovers()
        await self._start_loops(stack)
        if self._link:
            self._link.ready()
        if self._workers:
            await self._workers.ready()
        self._notifier.notify(ready=1, status=self._status_line())
        log.info(
            "daemon_started",
            state_dir=str(daemon.state_dir),
            # What is in force, wherever it was set (file, environment, a defaults file).
            output=self._output.describe(),
            listen=None if self._shard.is_worker else daemon.listen or None,
            pid=os.getpid(),
            jobs=[job.name for job in self._owned_jobs()],
            lanes=sorted(self._lanes.by_key),
        )

    async def _start_lane_context(
        self, stack: AsyncExitStack, temp_dir: Path
    ) -> aiohttp.ClientSession:
        """The sink and the HTTP session, and what every lane shares; returns the session."""
        sink = Sink(
            temp_dir,
            self._settings.output.file_compression,
            self._output,
            self._settings.http.payload_limits(),
            self._settings.output.format,
        )
        await sink.start(stack)
        session = await stack.enter_async_context(
            new_session(self._settings.http.timeout.total_seconds())
        )
        if self._link:  # its lanes' events go to process 0, which tells the hooks
            stack.callback(self._link.flush)
            observer = Observers(self._link, self.tally)
        else:
            hooks = self.hooks = HookDispatcher(
                self._ledger, lambda: self._settings, session, self.metrics, self.health,
                self._output,
            )  # fmt: skip
            await hooks.start(stack)
            observer = self._observers = Observers(self.metrics, self.health, self.tally, hooks)
        self._ctx = LaneContext(
            session=session,
            ledger=self._ledger,
            sink=sink,
            settings=lambda: self._settings,
            timing=lambda: Timing.from_settings(self._settings.http),
            observer=observer,
            fatal=self.fail,
            server_clock=self._server_clock,
            retention_start=self._planner.retention_start,
            keep=self._planner.keep,
            snapshots=self._planner.snapshots,
        )
        return session

    async def _start_storage(self, stack: AsyncExitStack) -> Path:
        """The state lock, the ledger, this process's temp dir and the output store,
        claimed as this daemon's; returns the temp dir."""
        state_dir, worker = self._settings.daemon.state_dir, self._shard.is_worker
        if not worker:  # a worker's process 0 holds it, the worker its descriptor too
            self._lock = take_lock(state_dir)
            stack.callback(release_lock, self._lock)
        self._ledger = await Ledger.start(ledger_path(state_dir), stack)
        temp_dir = await claim_temp_dir(self._settings, stack)
        self._output = open_store(self._settings, temp_dir)
        await self._output.start(stack)
        if not worker:
            self._claim = await claim_output(self._settings, self._ledger, self._output, stack)
            await abort_stale_uploads(self._settings, self._output, self._clock())
        return temp_dir

    async def _start_workers(self, stack: AsyncExitStack) -> None:
        """Process 0 of several starts the others, once the state is its own."""
        if self._shard.count > 1 and not self._shard.is_worker:
            grace = self._settings.daemon.stop_grace.total_seconds()
            path, count = self._config_path, self._shard.count
            self._workers = Workers(count, path, self._once, grace, self.fail)
            await self._workers.start(stack, self._lock)

    async def _resume_leftovers(self) -> None:
        resumed = await self._ledger.active() if self._resume else []
        resumed = self._planner.keep.not_to_expire(resumed)  # the first look expires those
        if count := self._lanes.enqueue(resumed):  # this process's (daemon.processes)
            log.info("exports_resumed", count=count)

    async def _start_loops(self, stack: AsyncExitStack) -> None:
        """Background loops live in a task group: cancelled, then awaited, on stop."""
        loops = await stack.enter_async_context(asyncio.TaskGroup())
        tasks = [loops.create_task(measure_loop_lag(self._lagged), name="loop-lag")]
        if self._claim:
            tasks.append(loops.create_task(self._claim.keep(self.fail), name="output-owner"))
        if self._link:
            report = report_lanes(self._link, self._lanes.views, lambda: self.loop_lag_max_s)
            tasks.append(loops.create_task(report, name="lanes-to-process-0"))
        if self._notifier.watchdog_interval_s:
            watchdog = ping_watchdog(self._notifier, self._notifier.watchdog_interval_s)
            tasks.append(loops.create_task(watchdog, name="watchdog"))
        stack.callback(lambda: [task.cancel() for task in tasks])  # runs before the group exits

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        log.info("daemon_stopped", loop_lag_max_ms=round(1000 * self.loop_lag_max_s, 1))

    def request_stop(self) -> None:
        """Stop taking work; ``run_until_stopped`` returns after the grace period."""
        self.health.stopping = True
        self._notifier.notify(stopping=1, status="stopping: finishing running downloads")
        self._stop.set()
        self._wake.set()
        if self._workers:
            self._workers.signal(signal.SIGTERM)

    def request_reload(self) -> None:
        self._reload.set()
        self._wake.set()
        if self._workers:
            self._workers.signal(signal.SIGHUP)

    def fail(self, exc: BaseException) -> None:
        """Something the daemon cannot work around (the ledger failed): stop, exit 1."""
        if self.fatal_error is None:
            self.fatal_error = exc
            log.error("daemon_failing", error=str(exc), kind=type(exc).__name__)
        self.request_stop()

    # -- lanes -----------------------------------------------------------------
    def _apply_lanes(self) -> None:
        if not self._link:  # a worker's metrics are process 0's
            self.metrics.expect((j.workspace, t) for j in self._settings.jobs for t in j.types)
        self._lanes.apply(self._settings, self._tokens, self._ctx)

    # -- planning --------------------------------------------------------------
    async def _look(self, job: JobSettings) -> None:
        try:
            look = await self._planner.look(job)
        except StateError as exc:
            self.fail(exc)
            return
        self._queue(job, look)

    async def plan(self, job: JobSettings, windows: list[ExportWindow]) -> Look:
        """Queue ``windows`` of ``job`` (those the output store lacks)."""
        look = await self._planner.plan(job, windows)
        self._queue(job, look)
        return look

    def _queue(self, job: JobSettings, look: Look) -> None:
        self._lanes.queue(job, look)

    # -- running ---------------------------------------------------------------
    def _owned_jobs(self) -> list[JobSettings]:
        return self._lanes.owned_jobs(self._settings)

    def _scheduled_jobs(self) -> list[tuple[JobSettings, ZoneInfo]]:
        return [(job, self._settings.workspaces[job.workspace].zone) for job in self._owned_jobs()]

    async def run_until_stopped(self) -> None:
        self._scheduler.set_jobs(self._scheduled_jobs())
        pickup = self._settings.daemon.pickup_interval.total_seconds()
        while not self._stop.is_set():
            # Woken by a stop or a reload, or after pickup_interval: one wait, no extra tasks.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pickup):
                    await self._wake.wait()
            self._wake.clear()
            if self._reload.is_set():
                self._reload.clear()
                fixed = self._apply_reload()
                await self._retry_now(fixed)
            if not self._stop.is_set():
                try:
                    # Rows queued by someone else (``acexport backfill``).
                    self._lanes.enqueue(
                        self._planner.keep.not_to_expire(await self._ledger.active())
                    )
                    if self.hooks:  # process 0 shows every process's backlog
                        await self._refresh_backlog()
                        await self.hooks.refresh()
                except StateError as exc:
                    self.fail(exc)
                self._notifier.notify(status=self._status_line())
        log.info("daemon_stopping", grace_s=self._settings.daemon.stop_grace.total_seconds())

    def _apply_reload(self) -> set[str]:
        """The new config in force (or the old one kept); the workspaces it changed."""
        self._notifier.notify(reloading=1, monotonic_usec=time.monotonic_ns() // 1000)
        try:
            return self._load_new_config()
        finally:
            self._notifier.notify(ready=1, status=self._status_line())

    def _load_new_config(self) -> set[str]:
        source, key_of = str(self._config_path or "environment"), self._lanes.key_of
        new = read_new_config(
            self._reload_settings, source, self._settings, key_of, self._shard.count
        )
        if new is None:
            return set()
        settings, tokens = new
        changed = changed_workspaces(self._settings, self._tokens, settings, tokens)
        self._settings, self._tokens = settings, tokens
        self._apply_lanes()
        if self.hooks:
            self.hooks.apply()
        self._scheduler.set_jobs(self._scheduled_jobs())
        log.info("config_reloaded", jobs=[job.name for job in settings.jobs])
        return changed

    async def _retry_now(self, workspaces: set[str]) -> None:
        """A reload that changed a workspace's token or settings: its failed windows are
        retried at once (reload.py says why)."""
        jobs = forget_failures(self._lanes, self.health, workspaces, self._settings)
        await asyncio.gather(*(self._look(job) for job in jobs))

    # -- health, systemd ---------------------------------------------------------
    def _lagged(self, lag: float) -> None:
        if lag > self.loop_lag_max_s:
            self.loop_lag_max_s = lag
            self.metrics.loop_lag_max.set(lag)

    def _status_line(self) -> str:
        return status_line(self._settings, self._all_lanes())

    def _all_lanes(self) -> list[LaneView]:
        """This process's lanes and, in process 0, its workers' as they last said."""
        return self._lanes.views() + (self._workers.lanes if self._workers else [])

    def _expired(self, job: str, count: int) -> None:
        if self._link:
            self._link.expired(job, count)
        else:
            self.metrics.windows_expired.labels(job).inc(count)

    async def _refresh_backlog(self) -> None:
        await refresh_backlog(self._settings, self._ledger, self.metrics, self._clock())

    async def status_page(self) -> str:
        """The status page (cached for a few seconds, rendered off the loop)."""
        return await self._status_page.html()

    async def _page_input(self) -> PageInput:
        lanes, hooks = self._all_lanes(), self.hooks
        assert hooks is not None  # served by process 0 only
        return await page_input(
            self._settings, self._ledger, lanes, self.health, hooks, self._clock()
        )

    async def run_once(self, jobs: list[JobSettings] | None = None) -> bool:
        """Plan every job once (catch-up included), export all that is due, tell the hooks
        within the stop grace; True if all exports worked."""
        # All at once, as the scheduler looks at start: one after another, the last of
        # a thousand jobs waited 10 s behind the exports of the first ones.
        todo = jobs if jobs is not None else self._owned_jobs()
        await asyncio.gather(*(self._look(job) for job in todo))
        ok = await self.drain()
        if self._workers:  # theirs told, as they ended, before the hooks settle
            ok = await self._workers.finished() and ok
        if self.hooks:
            await self.hooks.settle(
                self._settings.daemon.stop_grace.total_seconds()
            )  # the rest waits
        return ok and self.tally.failed == 0

    async def drain(self) -> bool:
        """Wait until every lane is idle and nothing this process took on is left
        active in the ledger; True if nothing failed.

        A row can be re-queued while a lane still holds it (a look re-plans the failed
        windows of a coalesced request before its task has let go of them): the lane
        skips it then, so it is enqueued again here (it was left queued after run
        --once: found by tests/test_model.py)."""
        while True:
            if not await all_idle(self._lanes.by_key.values(), self._stop):
                return False
            stranded = [r for r in await self._ledger.active() if r.id in self._lanes.taken_on]
            if not stranded or not self._lanes.enqueue(stranded):
                return self.tally.failed == 0
