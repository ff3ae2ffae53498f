"""When to look: one task per job, firing the job's trigger in its workspace's zone.

A look only plans (the planner decides what is due), so there is no "missed
run" to replay: every job looks once at start, which covers whatever the
daemon missed while it was down, and then follows its schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from .config import JobSettings

log = structlog.get_logger("acexport.scheduler")

Look = Callable[[JobSettings], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Runs ``look(job)`` at start and at each of the job's scheduled times."""

    def __init__(
        self,
        look: Look,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._look = look
        self._clock = clock
        self._sleep = sleep  # with ``clock``, what tests replace to drive time
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, tuple[JobSettings, ZoneInfo]] = {}

    def start(self, stack: AsyncExitStack) -> None:
        """Jobs are given with ``set_jobs``; their tasks are stopped when ``stack`` closes."""
        stack.push_async_callback(self.stop)

    def set_jobs(self, jobs: list[tuple[JobSettings, ZoneInfo]]) -> None:
        """Start new or changed jobs, stop removed ones; unchanged ones keep their timing."""
        wanted = {job.name: (job, zone) for job, zone in jobs}
        for name in list(self._tasks):
            if name not in wanted or wanted[name] != self._jobs[name]:
                self._tasks.pop(name).cancel()
                self._jobs.pop(name)
                log.info("job_stopped", job=name)
        for name, (job, zone) in wanted.items():
            if name not in self._tasks:
                self._jobs[name] = (job, zone)
                self._tasks[name] = asyncio.create_task(self._run(job, zone), name=f"job-{name}")
                log.info("job_started", job=name, schedule=job.schedule)

    async def _run(self, job: JobSettings, zone: ZoneInfo) -> None:
        trigger = job.trigger(zone)
        previous: datetime | None = None
        await self._safe_look(job)
        while True:
            fire = trigger.get_next_fire_time(previous, self._clock())
            if fire is None:
                return
            await self._sleep(max(0.0, (fire - self._clock()).total_seconds()))
            previous = fire
            await self._safe_look(job)

    async def _safe_look(self, job: JobSettings) -> None:
        try:
            await self._look(job)
        except Exception:  # a failed look must not end the job's schedule
            log.exception("look_failed", job=job.name)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._jobs.clear()
