"""Process 0's workers (``daemon.processes``, shard.py says why): started after the
state lock and the ledger, told its stop and reload signals, heard over a pipe each
until it exits. A worker that exits on its own while process 0 runs is a failure of
the daemon: it stops, exits 1, and its supervisor starts it again (nothing is lost:
the ledger resumes what was running)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import structlog

from ..errors import ConfigError, StateError
from ..events import ExportEnded, LaneObserver
from ..ops.statusview import LaneView
from .shard import WORKER_ENV, LinkReader, Shard, WorkerSeat

log = structlog.get_logger("acexport.service")

# After the stop grace, how long a worker gets to write its last lines and exit.
EXIT_MARGIN_S = 10.0


@dataclass(frozen=True)
class Heard:
    """Where process 0 puts what its workers say (shard.WorkerLink)."""

    observer: LaneObserver  # their lanes' events are process 0's
    expired: Callable[[str, int], None]  # windows expired, by job
    lagged: Callable[[float], None]  # a worker's event-loop lag


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: LinkReader
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lanes: list[LaneView] = field(default_factory=list)
    exit_code: int | None = None


class Workers:
    """Workers 1 to count-1 of a ``run`` (``once``: each exits when its lanes are done)."""

    def __init__(
        self,
        count: int,
        config_path: Path | None,
        once: bool,
        stop_grace_s: float,
        fail: Callable[[BaseException], None],
    ) -> None:
        if config_path is None:
            raise ConfigError("daemon.processes > 1 needs a config file, which workers read")
        self._count = count
        self._once = once
        self._stop_within_s = stop_grace_s + EXIT_MARGIN_S
        self._argv = [sys.executable, "-m", "acexport", "run", "--config", str(config_path)]
        self._argv += ["--once"] if once else []
        self._fail = fail  # a worker ended while it should run
        # Where what they say goes, once process 0 has it: said before, it waits here.
        self._heard: Heard | None = None
        self._unheard: list[tuple[Worker, list[Any]]] = []
        self._workers: list[Worker] = []
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self, stack: AsyncExitStack, lock: IO[str]) -> None:
        """Start every worker; stopped (SIGTERM, then waited for) when ``stack`` closes."""
        stack.push_async_callback(self._stop_all)
        for index in range(1, self._count):  # each watched at once: a later one may fail
            worker = await self._spawn(index, lock)
            self._workers.append(worker)
            self._watchers.append(
                asyncio.create_task(self._watch(worker), name=f"worker-{worker.index}")
            )

    async def _spawn(self, index: int, lock: IO[str]) -> Worker:
        read_fd, write_fd = os.pipe()
        seat = WorkerSeat(Shard(index, self._count), write_fd, os.getpid())
        loop = asyncio.get_running_loop()
        try:
            # The lock's descriptor goes along: the state stays locked while any
            # process of this daemon lives (a worker is killed with process 0, on
            # Linux: elsewhere it may outlive it).
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=(write_fd, lock.fileno()),
                env={**_without_systemd(os.environ), WORKER_ENV: seat.to_env()},
            )
        finally:
            os.close(write_fd)
        reader = LinkReader(
            lambda message: self._hear(worker, message),
            lambda exc: self._fail(StateError(f"worker process {index} sent no message: {exc}")),
        )
        worker = Worker(index, process, reader)
        await loop.connect_read_pipe(lambda: worker.reader, os.fdopen(read_fd, "rb", buffering=0))
        log.info("worker_started", worker=index, pid=process.pid)
        return worker

    def listen(self, heard: Heard) -> None:
        """What workers say goes to ``heard`` from now on (what they said, at once)."""
        self._heard = heard
        for worker, message in self._unheard:
            self._hear(worker, message)
        self._unheard.clear()

    def _hear(self, worker: Worker, message: list[Any]) -> None:
        """A message that cannot be taken (a bug: both sides are this acexport) is a
        failure of the daemon, not an error asyncio logs and the pipe goes on after."""
        try:
            self._take(worker, message)
        except Exception as exc:
            self._fail(StateError(f"worker process {worker.index} said {message!r:.200}: {exc}"))

    def _take(self, worker: Worker, message: list[Any]) -> None:
        heard = self._heard
        if message[0] == "ready":
            worker.ready.set()
            return
        if heard is None:
            self._unheard.append((worker, message))
            return
        match message:
            case ["ended", fields]:
                fields["new_columns"] = tuple(fields["new_columns"])
                heard.observer.export_ended(ExportEnded(**fields))
            case ["answered", workspace, code, count]:
                for _ in range(count):
                    heard.observer.answered(workspace, code)
            case ["expired", job, count]:
                heard.expired(job, count)
            case ["lanes", views, lag_s]:
                worker.lanes = [LaneView(*view) for view in views]
                heard.lagged(lag_s)
            case _:
                raise ValueError("not a message this acexport sends")

    async def ready(self) -> None:
        """Every worker started its lanes; a StateError if one exited first."""
        for worker in self._workers:
            ended = asyncio.ensure_future(worker.process.wait())
            started = asyncio.ensure_future(worker.ready.wait())
            await asyncio.wait([ended, started], return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if not worker.ready.is_set():
                raise StateError(
                    f"worker process {worker.index} exited with {worker.process.returncode}"
                    " as it started (its error is logged above)"
                )
            ended.cancel()

    @property
    def lanes(self) -> list[LaneView]:
        return [view for worker in self._workers for view in worker.lanes]

    def signal(self, number: int) -> None:
        if number != signal.SIGHUP:
            self._stopping = True
        for worker in self._workers:
            if worker.process.returncode is None:
                worker.process.send_signal(number)

    async def finished(self) -> bool:
        """``run --once``: every worker exited, all their events read; True if all
        exited 0."""
        await asyncio.gather(*self._watchers, return_exceptions=True)
        return all(worker.exit_code == 0 for worker in self._workers)

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        await worker.reader.closed  # its last events read
        worker.exit_code = code
        if self._stopping or self._once:
            log.info("worker_exited", worker=worker.index, exit_code=code)
            return
        self._fail(StateError(f"worker process {worker.index} exited with {code}"))

    async def _stop_all(self) -> None:
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self._stop_within_s):
                await asyncio.gather(*self._watchers, return_exceptions=True)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await asyncio.gather(*self._watchers, return_exceptions=True)


def _without_systemd(env: Mapping[str, str]) -> dict[str, str]:
    """A worker does not speak to systemd: process 0 is the service's main process, and
    systemd logs a warning for each message from another."""
    return {
        k: v for k, v in env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    }
