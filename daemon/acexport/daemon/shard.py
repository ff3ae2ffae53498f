"""Lanes over several processes (``daemon.processes``): which process owns a lane,
and what a worker process tells the daemon that started it.

The daemon that was started (process 0) keeps what one process must do alone: the
state lock, the output's claim, the ops endpoint, the hooks, systemd. Each worker
is a daemon of its own over the lanes it owns, sharing the ledger (SQLite in WAL
mode) and the output. It tells process 0 what its lanes did over a pipe, so that
/metrics, /healthz, the status page and ``run --once``'s count see every lane.

Why processes: at a thousand lanes one process is bound by its GIL, the work it
does in series (bench/README.md, issue 35); two processes use both cores.

A lane belongs to one process by its name's hash: the same in every process and
after a restart, so no workspace is ever exported from two processes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..events import ExportEnded, LaneObserver
from ..ops.statusview import LaneView

log = structlog.get_logger("acexport.service")

# Set by process 0 for its workers only: "index/count/events_fd/parent_pid".
WORKER_ENV = "ACEXPORT_WORKER"
# A worker's messages wait this long to go in one write (dozens of exports' events).
FLUSH_S = 0.05
FRAME = struct.Struct("!I")  # each write: its length, then a JSON list of messages


@dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``: the lanes it runs."""

    index: int = 0
    count: int = 1

    def owns(self, lane: str) -> bool:
        return owner_of(lane, self.count) == self.index

    @property
    def is_worker(self) -> bool:
        return self.index > 0


def owner_of(lane: str, count: int) -> int:
    return 0 if count == 1 else zlib.crc32(lane.encode()) % count


def moved_workspaces(count: int, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Workspaces (-> lane name, before and after a reload) whose lane would move to
    another process: their old lane may still be exporting in the first."""
    return sorted(
        name
        for name, lane in after.items()
        if name in before and owner_of(before[name], count) != owner_of(lane, count)
    )


@dataclass(frozen=True)
class WorkerSeat:
    """What process 0 tells a worker it starts: which shard, where to write, whose."""

    shard: Shard
    events_fd: int
    parent_pid: int

    def to_env(self) -> str:
        return f"{self.shard.index}/{self.shard.count}/{self.events_fd}/{self.parent_pid}"

    @classmethod
    def from_env(cls) -> WorkerSeat | None:
        text = os.environ.pop(WORKER_ENV, None)  # not passed on to what it starts
        if text is None:
            return None
        index, count, fd, parent = (int(part) for part in text.split("/"))
        return cls(Shard(index, count), fd, parent)


def end_with_parent(parent_pid: int) -> None:
    """End this worker as process 0 ends, however it ends: a worker left running would
    export beside the next daemon's. Killed, as process 0 was (its stop, by a signal,
    stops the worker first): the ledger resumes both, and the next daemon starts at once
    (a worker holds the state lock with process 0). Linux only; elsewhere the lock keeps
    the next daemon out until the worker is done."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:  # it ended before the line above
        os.kill(os.getpid(), signal.SIGKILL)


def pin_to_one_cpu(shard: Shard) -> None:
    """``daemon.pin_cpus``: every thread of this process on one CPU of those it may
    use, process k on the k-th; threads made later inherit it. Logged either way.

    Process 0 pins itself once its workers are started (they inherit its CPUs as
    it had them), each worker as it starts. Why: a small export hands the GIL between
    the event loop's thread and the sink's and ledger's threads many times; on one
    core each hand-off is a switch, across cores it wakes another CPU (on a VM, an
    exit to the hypervisor). At a thousand workspaces one process used a quarter less
    CPU an export (issue 35, bench/README.md). The price: a big payload's inflating,
    hashing and writing no longer run side by side."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[shard.index % len(cpus)]
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), {cpu})
    except (AttributeError, OSError) as exc:  # not Linux; a cpuset changed meanwhile
        log.warning("process_not_pinned", error=str(exc) or type(exc).__name__)
        return
    log.info("process_pinned", cpu=cpu)


class WorkerLink(LaneObserver):
    """A worker's side of the pipe: its lanes' events and state, sent in batches."""

    def __init__(self, fd: int, broken: Callable[[BaseException], None]) -> None:
        self._fd = fd
        self._broken = broken
        self._pending: list[tuple[Any, ...]] = []
        self._answered: Counter[tuple[str, int]] = Counter()  # a few requests an export
        self._flush_at: asyncio.TimerHandle | None = None

    def export_ended(self, event: ExportEnded) -> None:
        self._send(("ended", vars(event)))

    def answered(self, workspace: str, code: int) -> None:
        self._answered[workspace, code] += 1
        self._send(None)

    def expired(self, job: str, count: int) -> None:
        self._send(("expired", job, count))

    def lanes(self, views: list[LaneView], lag_s: float) -> None:
        self._send(("lanes", [(v.key, v.queued, v.in_flight) for v in views], lag_s))

    def ready(self) -> None:
        self._send(("ready",))
        self.flush()

    def _send(self, message: tuple[Any, ...] | None) -> None:
        if message is not None:
            self._pending.append(message)
        if self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Write what waits (blocking: a few kB, which process 0 reads at once)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        self._pending += [("answered", *kind, n) for kind, n in self._answered.items()]
        self._answered.clear()
        if not self._pending or self._fd < 0:
            return
        body = json.dumps(self._pending, separators=(",", ":")).encode()
        self._pending = []
        data = memoryview(FRAME.pack(len(body)) + body)
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:  # process 0 is gone: end_with_parent stops this one
            self._fd = -1
            self._broken(exc)


class LinkReader(asyncio.Protocol):
    """Process 0's side of one worker's pipe: each message handed to ``take``; a frame
    that is not JSON to ``broken`` (asyncio only logged it and closed the pipe)."""

    def __init__(
        self, take: Callable[[list[Any]], None], broken: Callable[[Exception], None]
    ) -> None:
        self._take = take
        self._broken = broken
        self._buffer = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= FRAME.size:
            (size,) = FRAME.unpack_from(self._buffer)
            if len(self._buffer) < FRAME.size + size:
                return
            body = bytes(self._buffer[FRAME.size : FRAME.size + size])
            del self._buffer[: FRAME.size + size]
            try:
                messages = json.loads(body)
            except ValueError as exc:
                self._broken(exc)
                return
            for message in messages:
                self._take(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
