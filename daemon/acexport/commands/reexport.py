"""``acexport reexport``: a job's windows in a range asked of AC again and replaced.

Each done window is queued as its next revision (its manifest naming the file it
replaces, ``previous_sha256``), committed even when AC serves the same bytes
(``unchanged: true``: the operator asked, and a hook tells downstream); a window
not exported yet is exported as a backfill would; an entity table exported as
snapshots gets a new snapshot now. Queued for a running daemon, or run here with
backfill's progress, Ctrl-C and dry run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from ..config import JobSettings, Settings
from ..ledger import Ledger, ledger_path
from ..lock import lock_holder
from ..ops.logging import configure_logging
from ..planner import ac_requests
from ..scheduler import utc_now
from ..windows import ExportWindow
from . import ExitCode
from .backfill import (
    _backfill,
    _coalesced_note,
    _confirmed,
    _job,
    dry_run_counts,
    planner_beside,
    windows_of,
)
from .common import UsageError, counted, exit_code_of, load, prepare, run_daemon_loop
from .early import remember_early_signals


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        settings, path = load(args.config)
        if not args.dry_run and lock_holder(settings.daemon.state_dir) is None:
            prepare(settings, path)  # exported here: the tokens are needed
        else:
            configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        job = _of_types(_job(settings, path, args.job), args.type)
        snapshots = job.model_copy(update={"types": job.snapshot_types})
        code: int = ExitCode.OK
        if job.window_types:
            in_windows = job.model_copy(update={"types": job.window_types})
            done = _windows_again(settings, path, in_windows, args)
            if done is None:
                return ExitCode.OK  # declined: nothing queued, no snapshot either
            code = done
        if snapshots.types and not args.dry_run and code == ExitCode.OK:
            code = asyncio.run(_snapshot_now(settings, path, snapshots))
        elif snapshots.types:
            print(f"  and a new snapshot of {', '.join(snapshots.types)} now")
        return code

    return exit_code_of("reexport", body)


def _windows_again(
    settings: Settings, path: Path, job: JobSettings, args: argparse.Namespace
) -> int | None:
    """The windows in the range: done ones queued as their next revision, the rest as a
    backfill's; exported by the running daemon, or here. None: the operator said no."""
    job, windows = windows_of(settings, job, args)
    if args.dry_run:
        return asyncio.run(_dry_run(settings, job, windows))
    if not _confirmed(job, windows, args.yes):
        print("nothing queued", file=sys.stderr)
        return None
    again = asyncio.run(_requeue(settings, job, windows))
    print(f"{counted(again, 'done window')} queued as the next revision", file=sys.stderr)
    return run_daemon_loop(_backfill(settings, path, job, windows))


async def _snapshot_now(settings: Settings, path: Path, job: JobSettings) -> int:
    """A new snapshot of each of the job's snapshot types, taken now: queued for the
    running daemon, or taken here (the look finds it queued and exports it)."""
    from ..daemon import Daemon

    async with planner_beside(settings) as (ledger, planner):
        zone = settings.workspaces[job.workspace].zone
        window = ExportWindow(
            await planner.snapshot_start(job.workspace), utc_now().replace(microsecond=0), zone
        )
        by_type = await ledger.snapshots(job.name, job.workspace)
        for type_ in job.types:
            await ledger.plan_snapshot(
                job.name, job.workspace, type_, window, by_type.get(type_, [])
            )
    holder = lock_holder(settings.daemon.state_dir)
    if holder is not None:
        print(
            f"a new snapshot of {', '.join(job.types)} queued for the running daemon (pid {holder})"
        )
        return ExitCode.OK
    async with Daemon(settings, path, resume=False) as daemon:
        ok = await daemon.run_once([job])
    print(f"a new snapshot of {', '.join(job.types)} taken", file=sys.stderr)
    return ExitCode.OK if ok and daemon.fatal_error is None else ExitCode.FAILED


def _of_types(job: JobSettings, types: list[str] | None) -> JobSettings:
    """The job, narrowed to ``--type``."""
    if not types:
        return job
    stray = sorted(set(types) - {str(t) for t in job.types})
    if stray:
        raise UsageError(
            f"--type {', '.join(stray)}: job {job.name!r} exports {', '.join(job.types)}"
        )
    return job.model_copy(update={"types": [t for t in job.types if str(t) in types]})


async def _requeue(settings: Settings, job: JobSettings, windows: list[ExportWindow]) -> int:
    ledger = await Ledger.open(ledger_path(settings.daemon.state_dir))
    try:
        rows = await ledger.reexport(
            job.name, job.workspace, job.window_types, windows[0].start, windows[-1].end
        )
    finally:
        await ledger.close()
    return len(rows)


async def _dry_run(settings: Settings, job: JobSettings, windows: list[ExportWindow]) -> int:
    """What the re-export would ask of AC, without queuing it."""
    counts, new, done, earliest, _ = await dry_run_counts(settings, job, windows)
    # Done and new windows are claimed together: consecutive ones share a request.
    asked = {type_: sorted(done[type_] + new[type_]) for type_ in new}
    requests = sum(ac_requests(job, type_, found) for type_, found in asked.items())
    exports = len(windows) * len(job.window_types)
    print(
        f"reexport {job.name} would cover {counted(exports, 'export')} "
        f"({counted(len(windows), 'window')} x {counted(len(job.window_types), 'type')}: "
        f"{', '.join(job.window_types)}):"
    )
    print(f"  {counts['done']} done: asked again, replaced as their next revision (unchanged too)")
    print(f"  {counts['new']} not exported yet: asked for as new")
    print(f"  {counts['pending']} already queued or in flight: left as they are")
    print(f"  {counts['beyond']} before AC's data retention ({earliest.date()}): not asked for")
    if requests:
        print(
            f"  {counted(requests, 'AC request')}{_coalesced_note(job)}: at AC's 5-minute "
            f"worker tick, {requests * 5} minutes or more"
        )
    print("nothing was queued (--dry-run)")
    return ExitCode.OK
