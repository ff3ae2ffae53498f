"""``acexport run [--once]``: the daemon, until a signal stops it (or once, for cron)."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ..config import Settings
from . import ExitCode
from .common import (
    exit_code_of,
    handle_signals,
    interrupted_by_ctrl_c,
    load,
    prepare,
    run_daemon_loop,
)
from .early import remember_early_signals

if TYPE_CHECKING:
    from ..daemon.shard import WorkerSeat

log = structlog.get_logger("acexport.cli")


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        from ..daemon.shard import WorkerSeat, end_with_parent

        seat = WorkerSeat.from_env()  # a worker of another run (daemon.processes)
        if seat:
            end_with_parent(seat.parent_pid)
            structlog.contextvars.bind_contextvars(worker=seat.shard.index)
        settings, path = load(args.config)
        prepare(settings, path)
        return run_daemon_loop(run_daemon(settings, path, args.once, seat=seat, spread=True))

    return exit_code_of("run", body)


async def run_daemon(
    settings: Settings,
    path: Path,
    once: bool,
    reload_settings: Callable[[], Settings] | None = None,
    *,
    spread: bool = False,
    seat: WorkerSeat | None = None,
) -> int:
    """The daemon until stopped (or ``once``); ``reload_settings`` is what SIGHUP reads;
    ``spread``: its lanes over daemon.processes; ``seat``: a worker's."""
    from ..daemon import Daemon  # the daemon's imports (aiohttp, ...) only when it runs

    daemon = Daemon(
        settings, path, reload_settings=reload_settings, spread=spread, once=once, seat=seat
    )
    async with daemon:
        _collect_less()
        handle_signals(daemon)
        if daemon.health_url:
            log.info("status_page", url=f"{daemon.health_url}/")
        if once:
            ok = await daemon.run_once()
            failed = daemon.tally.failed
            done = daemon.tally.succeeded
            log.info("run_once_finished", exported=done, failed=failed)
            return ExitCode.OK if ok and daemon.fatal_error is None else ExitCode.FAILED
        await daemon.run_until_stopped()
    if daemon.fatal_error is not None:
        return ExitCode.FAILED
    # SIGTERM is a service's normal stop (0, as systemd expects); Ctrl-C at a terminal
    # ends as shells report it (130), nothing lost either way.
    return ExitCode.INTERRUPTED if interrupted_by_ctrl_c() else ExitCode.OK


def _collect_less() -> None:
    """Fewer, cheaper passes of the cycle collector, for a daemon that holds many objects.

    With a thousand lanes, the collector's full passes over every live export's
    objects stalled the event loop for 100 to 290 ms and took a tenth of the CPU
    (bench/scale.py). What start-up made lives as long as the process: frozen, it
    is never scanned again; and young objects are collected every 10,000
    allocations rather than 700 (exports make little cyclic garbage to wait for).
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
