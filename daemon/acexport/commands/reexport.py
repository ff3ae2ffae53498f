"""``acexport reexport``: a job's windows in a range asked of AC again and replaced.

Each done window is queued as its next revision (its manifest naming the file it
replaces, ``previous_sha256``), committed even when AC serves the same bytes
(``unchanged: true``: the operator asked, and a hook tells downstream); a window
not exported yet is exported as a backfill would. Queued for a running daemon, or
run here with backfill's progress, Ctrl-C and dry run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from ..config import JobSettings, Settings
from ..ledger import Ledger, ledger_path
from ..lock import lock_holder
from ..ops.logging import configure_logging
from ..planner import ac_requests
from ..windows import ExportWindow
from . import ExitCode
from .backfill import _backfill, _confirmed, _windows, dry_run_counts
from .common import UsageError, counted, exit_code_of, load, prepare, remember_early_signals


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        settings, path = load(args.config)
        if not args.dry_run and lock_holder(settings.daemon.state_dir) is None:
            prepare(settings, path)  # exported here: the tokens are needed
        else:
            configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        job, windows = _windows(settings, path, args)
        job = _of_types(job, args.type)
        if args.dry_run:
            return asyncio.run(_dry_run(settings, job, windows))
        if not _confirmed(job, windows, args.yes):
            print("nothing queued", file=sys.stderr)
            return ExitCode.OK
        again = asyncio.run(_requeue(settings, job, windows))
        print(f"{counted(again, 'done window')} queued as the next revision", file=sys.stderr)
        return asyncio.run(_backfill(settings, path, job, windows))

    return exit_code_of("reexport", body)


def _of_types(job: JobSettings, types: list[str] | None) -> JobSettings:
    """The job, narrowed to ``--type`` (of its windowed types)."""
    if not types:
        return job
    stray = sorted(set(types) - {str(t) for t in job.window_types})
    if stray:
        raise UsageError(
            f"--type {', '.join(stray)}: job {job.name!r} exports in windows only "
            f"{', '.join(job.window_types)}"
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
    counts, new, earliest, _ = await dry_run_counts(settings, job, windows)
    requests = sum(ac_requests(job, type_, found) for type_, found in new.items())
    exports = len(windows) * len(job.window_types)
    print(
        f"reexport {job.name} would cover {counted(exports, 'export')} "
        f"({counted(len(windows), 'window')} x {counted(len(job.window_types), 'type')}: "
        f"{', '.join(job.window_types)}):"
    )
    print(
        f"  {counts['done']} done: asked again, one AC request each, replaced as their next "
        "revision (unchanged bytes too)"
    )
    print(f"  {counts['new']} not exported yet: asked for in {counted(requests, 'AC request')}")
    print(f"  {counts['pending']} already queued or in flight: left as they are")
    print(f"  {counts['beyond']} before AC's data retention ({earliest.date()}): not asked for")
    total = counts["done"] + requests
    if total:
        print(
            f"  {counted(total, 'AC request')}: at AC's 5-minute worker tick, "
            f"{total * 5} minutes or more"
        )
    print("nothing was queued (--dry-run)")
    return ExitCode.OK
