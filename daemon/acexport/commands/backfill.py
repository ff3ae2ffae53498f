"""``acexport backfill``: every window of a job in a range, queued for the daemon or run here.

With a daemon holding the state directory, the windows are only recorded in
the ledger and the daemon exports them (one process talks to AC per
workspace). With none, they are exported in the foreground, with a progress
bar on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import JobSettings, Settings
from ..ledger import Ledger, ledger_path, read_rows
from ..ledger_schema import ACTIVE
from ..lock import lock_holder
from ..ops.logging import configure_logging
from ..output.open import open_store
from ..planner import Look, Planner
from ..scheduler import utc_now
from ..windows import ExportWindow, aligned_windows, parse_bound
from . import ExitCode
from .common import (
    UsageError,
    exit_code_of,
    handle_signals,
    interrupted,
    load,
    prepare,
    remember_early_signals,
)

if TYPE_CHECKING:
    from ..daemon import Daemon


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        settings, path = load(args.config)
        if lock_holder(settings.daemon.state_dir) is None:
            prepare(settings, path)  # exported here: the tokens are needed
        else:
            # Only recorded for the running daemon, which holds the tokens: none is read.
            configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        job, windows = _windows(settings, path, args)
        return asyncio.run(_backfill(settings, path, job, windows))

    return exit_code_of("backfill", body)


def _windows(
    settings: Settings, path: Path, args: argparse.Namespace
) -> tuple[JobSettings, list[ExportWindow]]:
    job = next((j for j in settings.jobs if j.name == args.job), None)
    if job is None:
        known = ", ".join(j.name for j in settings.jobs) or "none"
        raise UsageError(f"no job {args.job!r} in {path} (known: {known})")
    if not job.window_types:
        raise UsageError(
            f"job {job.name!r} exports only entity snapshots ({', '.join(job.types)}): each "
            "holds the whole table, so there is no range to backfill"
        )
    if job.snapshot_types:
        print(
            f"backfilling {', '.join(job.window_types)}; the snapshot types "
            f"({', '.join(job.snapshot_types)}) are exported whole at each look, not by range",
            file=sys.stderr,
        )
    zone = settings.workspaces[job.workspace].zone
    try:
        start = parse_bound(args.from_, zone, end=False)
        end = parse_bound(args.to, zone, end=True)
    except ValueError as exc:
        raise UsageError(f"--from/--to: {exc}") from None
    windows = aligned_windows(zone, job.window, start, end)
    if not windows:
        raise UsageError("no whole window lies in that range")
    return job, windows


async def _backfill(
    settings: Settings, path: Path, job: JobSettings, windows: list[ExportWindow]
) -> int:
    holder = lock_holder(settings.daemon.state_dir)
    if holder is not None:
        ledger = await Ledger.open(ledger_path(settings.daemon.state_dir))
        try:
            async with AsyncExitStack() as stack:
                # Only listed, never written: it needs no temp dir of its own.
                output = open_store(settings, settings.daemon.state_dir / "tmp")
                await output.start(stack)
                planner = Planner(ledger, output, lambda: settings, utc_now)
                look = await planner.plan(job, windows)
        finally:
            await ledger.close()
        _say_beyond_retention(look)
        print(
            f"queued {len(look.records)} exports of job {job.name}; the running daemon "
            f"(pid {holder}) will export them (see `acexport status`)"
        )
        return ExitCode.OK
    from ..daemon import Daemon

    started = time.monotonic()
    # Its own windows only: what else the state directory has queued waits for `run`.
    async with Daemon(settings, path, resume_queued=False) as daemon:
        handle_signals(daemon)
        look = await daemon.plan(job, windows)
        _say_beyond_retention(look)
        progress = asyncio.create_task(_show_progress(daemon, len(look.records)))
        ok = await daemon.drain()
        progress.cancel()
    tally = daemon.tally
    print(
        f"\n{tally.succeeded} exported, {tally.failed} failed in {time.monotonic() - started:.0f}s",
        file=sys.stderr,
    )
    mine = {r.id for r in look.records}
    others = [r for r in await read_rows(settings.daemon.state_dir) if r.state in ACTIVE]
    others = [r for r in others if r.id not in mine]
    if others:
        print(
            f"{len(others)} other exports are pending in {settings.daemon.state_dir}: "
            "the daemon (`acexport run`) exports them",
            file=sys.stderr,
        )
    if interrupted():
        left = [r for r in await read_rows(settings.daemon.state_dir) if r.id in mine]
        waiting = sum(r.state in ACTIVE for r in left)
        print(
            f"interrupted: {waiting} of this backfill's {len(mine)} exports stay queued; "
            "`acexport run` (or this backfill again) exports them",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    return ExitCode.OK if ok and daemon.fatal_error is None else ExitCode.FAILED


def _say_beyond_retention(look: Look) -> None:
    if look.beyond_retention:
        print(
            f"{look.beyond_retention} of {look.due} exports in that range start before AC's "
            "data retention: recorded as beyond retention, not asked for",
            file=sys.stderr,
        )


async def _show_progress(daemon: Daemon, total: int) -> None:
    if not sys.stderr.isatty():
        return
    started = time.monotonic()
    while True:
        done = daemon.tally.succeeded
        failed = daemon.tally.failed
        width = 30
        filled = int(width * (done + failed) / max(total, 1))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done"
            f"{f', {failed} failed' if failed else ''}  {time.monotonic() - started:5.0f}s"
        )
        sys.stderr.flush()
        await asyncio.sleep(0.5)
