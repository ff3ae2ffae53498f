"""``acexport backfill``: every window of a job in a range, queued for the daemon or run here.

With a daemon holding the state directory, the windows are only recorded in
the ledger and the daemon exports them (one process talks to AC per
workspace). With none, they are exported in the foreground, with a progress
bar on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..config import JobSettings, Settings
from ..errors import StoreRejected, StoreUnavailable
from ..ledger import (
    ACTIVE,
    ExportRecord,
    Ledger,
    LedgerState,
    ledger_path,
    read_learned_retention,
    read_rows,
)
from ..lock import lock_holder
from ..ops.logging import configure_logging
from ..output.layout import OutputLayout
from ..output.open import open_store
from ..output.stored import prove, stored_files
from ..payload.split import MAX_WINDOWS
from ..planner import Look, Planner, ac_requests
from ..protocol import TIME_SERIES, ExportMode
from ..retention import effective_months, retention_start
from ..scheduler import utc_now
from ..windows import ExportWindow, aligned_windows, iso_ms, parse_bound
from . import ExitCode
from .check_config import duration_text
from .common import (
    UsageError,
    counted,
    exit_code_of,
    handle_signals,
    human_duration,
    interrupted,
    load,
    prepare,
    run_daemon_loop,
)
from .early import remember_early_signals

if TYPE_CHECKING:
    from ..daemon import Daemon


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        settings, path = load(args.config)
        exports_here = not (args.dry_run or args.cancel)
        if exports_here and lock_holder(settings.daemon.state_dir) is None:
            prepare(settings, path)  # exported here: the tokens are needed
        else:
            # A dry run, a cancel, or windows recorded for the running daemon (which holds
            # the tokens): none is read (on a systemd host they are the service's only).
            configure_logging(settings.daemon.log_format, settings.daemon.log_level)
        if args.cancel:
            return asyncio.run(_cancel(settings, path, args))
        job, windows = _windows(settings, path, args)
        if args.dry_run:
            return asyncio.run(_dry_run(settings, job, windows))
        if not _confirmed(job, windows, args.yes):
            print("nothing queued", file=sys.stderr)
            return ExitCode.OK
        return run_daemon_loop(_backfill(settings, path, job, windows))

    return exit_code_of("backfill", body)


# A backfill this large asks first on a terminal: at AC's pace (one export per
# workspace at a time, a worker tick of up to 5 minutes each) it is hours of AC's time.
CONFIRM_ABOVE = 100


def _job(settings: Settings, path: Path, name: str) -> JobSettings:
    job = settings.jobs_by_name.get(name)
    if job is None:
        known = ", ".join(j.name for j in settings.jobs) or "none"
        raise UsageError(f"no job {name!r} in {path} (known: {known})")
    return job


def _range(settings: Settings, job: JobSettings, args: argparse.Namespace) -> tuple[Any, Any]:
    if args.from_ is None or args.to is None:
        raise UsageError("give --from and --to (only --cancel may go without: all windows)")
    zone = settings.workspaces[job.workspace].zone
    try:
        start, end = parse_bound(args.from_, zone, end=False), parse_bound(args.to, zone, end=True)
    except ValueError as exc:
        raise UsageError(f"--from/--to: {exc}") from None
    if start >= end:
        raise UsageError(f"--from {args.from_} is after --to {args.to}")
    return start, end


def _windows(
    settings: Settings, path: Path, args: argparse.Namespace
) -> tuple[JobSettings, list[ExportWindow]]:
    return windows_of(settings, _job(settings, path, args.job), args)


def windows_of(
    settings: Settings, job: JobSettings, args: argparse.Namespace
) -> tuple[JobSettings, list[ExportWindow]]:
    """The job's windows in ``--from``/``--to`` (said and refused when there is none, or
    when the job's keep would delete them)."""
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
    start, end = _range(settings, job, args)
    windows = aligned_windows(settings.workspaces[job.workspace].zone, job.window, start, end)
    if not windows:
        raise UsageError("no whole window lies in that range")
    if job.keep is not None:
        # Exported only to be deleted by the next look: refused, saying why.
        edge = utc_now() - job.keep
        doomed = [w for w in windows if w.end <= edge]
        if doomed:
            raise UsageError(
                f"{counted(len(doomed), 'window')} of that range ended before the job's keep "
                f"({duration_text(job.keep)}: {edge.astimezone(doomed[0].zone).date()}): the "
                "next look would delete them again. Start --from later, or raise keep"
            )
    return job, windows


@contextlib.asynccontextmanager
async def planner_beside(settings: Settings) -> AsyncIterator[tuple[Ledger, Planner]]:
    """The ledger and a planner over the output store, for a command that records work
    without running a daemon (a running one may hold the state directory)."""
    ledger = await Ledger.open(ledger_path(settings.daemon.state_dir))
    try:
        async with AsyncExitStack() as stack:
            # Only listed, never written: it needs no temp dir of its own.
            output = open_store(settings, settings.daemon.state_dir / "tmp")
            await output.start(stack)
            yield ledger, Planner(ledger, output, lambda: settings, utc_now)
    finally:
        await ledger.close()


async def _queue_for_daemon(
    settings: Settings, job: JobSettings, windows: list[ExportWindow], holder: int
) -> int:
    """A daemon holds the state directory: the windows are recorded for it to export."""
    async with planner_beside(settings) as (_, planner):
        look = await planner.plan(job, windows)
    _say_beyond_retention(look)
    print(
        f"queued {counted(len(look.records), 'export')} of job {job.name}; the running daemon "
        f"(pid {holder}) will export them (see `acexport status`)"
    )
    return ExitCode.OK


async def _backfill(
    settings: Settings, path: Path, job: JobSettings, windows: list[ExportWindow]
) -> int:
    holder = lock_holder(settings.daemon.state_dir)
    if holder is not None:
        return await _queue_for_daemon(settings, job, windows, holder)
    from ..daemon import Daemon

    started = time.monotonic()
    # Its own windows only: what else the state directory has queued waits for `run`.
    async with Daemon(settings, path, resume=False) as daemon:
        handle_signals(daemon)
        look = await daemon.plan(job, windows)
        _say_beyond_retention(look)
        progress = asyncio.create_task(_show_progress(daemon, len(look.records)))
        ok = await daemon.drain()
        progress.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await progress
        # The hooks are told of what it committed, as by `run --once`: a re-export's
        # event is how a downstream loader learns its windows were replaced.
        assert daemon.hooks is not None  # only a worker of run's has none
        untold = await daemon.hooks.settle(settings.daemon.stop_grace.total_seconds())
    tally = daemon.tally
    print(
        f"\n{tally.succeeded} exported, {tally.failed} failed in {time.monotonic() - started:.0f}s",
        file=sys.stderr,
    )
    if untold:
        print(
            f"{counted(untold, 'hook event')} not delivered within daemon.stop_grace: "
            "kept in the state directory, told by the next run (`acexport status` shows them)",
            file=sys.stderr,
        )
    mine = {r.id for r in look.records}
    if await _say_what_is_left(settings, mine):
        return ExitCode.INTERRUPTED
    return ExitCode.OK if ok and daemon.fatal_error is None else ExitCode.FAILED


async def _say_what_is_left(settings: Settings, mine: set[int]) -> bool:
    """Say what stays pending after a foreground backfill; True if it was interrupted."""
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
            f"interrupted: {waiting} of this backfill's {counted(len(mine), 'export')} stay "
            "queued; `acexport run` (or this backfill again) exports them",
            file=sys.stderr,
        )
        return True
    return False


def _confirmed(job: JobSettings, windows: list[ExportWindow], yes: bool) -> bool:
    exports = len(windows) * len(job.window_types)
    if yes or exports <= CONFIRM_ABOVE or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return True
    sys.stderr.write(
        f"queue {counted(exports, 'export')} of job {job.name} ({counted(len(windows), 'window')}"
        f" x {counted(len(job.window_types), 'type')})? `--dry-run` says more. [y/N] "
    )
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _coalesced_note(job: JobSettings) -> str:
    if not any(t in TIME_SERIES for t in job.window_types):
        return ""
    most = job.windows_per_request(MAX_WINDOWS)
    if most == 1:
        return " (coalesce_max = 0: one per window)"
    return f" (up to {most} consecutive windows of event or page in one, coalesce_max)"


async def _in_store(
    settings: Settings,
    job: JobSettings,
    windows: list[ExportWindow],
    by_key: dict[tuple[str, datetime], ExportRecord],
) -> set[tuple[str, datetime]] | None:
    """The (type, window start)s the output store holds, as the real run's look finds
    them: a file recorded done that is present, or one its manifest proves whole."""
    layout = OutputLayout.from_settings(settings.output)
    with tempfile.TemporaryDirectory(prefix="acexport-dry-run-") as temp:
        store = open_store(settings, Path(temp))
        try:
            async with AsyncExitStack() as stack:
                await store.start(stack)
                done = {key for key, row in by_key.items() if row.state is LedgerState.DONE}
                starts = {window.start: window for window in windows}
                recorded = {
                    (type_, starts[start]): by_key[(type_, start)].destination
                    for type_, start in done
                    if start in starts
                }
                files = await stored_files(
                    store, layout, job.workspace, job.name, job.window_types, windows, recorded
                )
                proven, _ = await prove(
                    store, job.workspace, [f for f in files if (f.type, f.window.start) not in done]
                )
        except (StoreUnavailable, StoreRejected) as exc:
            print(f"  (the output store was not listed: {exc}; done is the state's word)")
            return None
    return {(f.type, f.window.start) for f in files if (f.type, f.window.start) in done} | {
        (f.type, f.window.start) for f in proven
    }


class DryRun(NamedTuple):
    """What a dry run says of a range: each (type, window) counted as beyond retention,
    done, pending or new (``counts``); the new and the done windows by type; AC's
    retention edge; the workspace's ledger rows."""

    counts: Counter[str]
    new: dict[str, list[ExportWindow]]
    done: dict[str, list[ExportWindow]]
    earliest: datetime
    rows: list[ExportRecord]


def _classify(
    job: JobSettings,
    windows: list[ExportWindow],
    by_key: dict[tuple[str, datetime], ExportRecord],
    earliest: datetime,
    stored: set[tuple[str, datetime]] | None,
) -> tuple[Counter[str], dict[str, list[ExportWindow]], dict[str, list[ExportWindow]]]:
    """Each (type, window) counted as beyond retention, done, pending or new; the new
    and the done ones by type. Done is what the output store holds (``stored``), as the
    real run judges it; None: the store could not be listed, the ledger is believed."""
    counts: Counter[str] = Counter()
    new: dict[str, list[ExportWindow]] = {str(t): [] for t in job.window_types}
    done: dict[str, list[ExportWindow]] = {str(t): [] for t in job.window_types}
    for window in windows:
        for type_ in job.window_types:
            row = by_key.get((str(type_), window.start))
            held = stored is None or (str(type_), window.start) in stored
            if window.start < earliest:
                counts["beyond"] += 1
            elif (row is not None and row.state is LedgerState.DONE and held) or (
                (row is None or row.state is not LedgerState.DONE) and stored and held
            ):  # done, or found in the store: adopted, not asked for
                counts["done"] += 1
                done[str(type_)].append(window)
            elif row is not None and row.state in ACTIVE:
                counts["pending"] += 1
            else:
                counts["new"] += 1
                new[str(type_)].append(window)
    return counts, new, done


async def dry_run_counts(
    settings: Settings, job: JobSettings, windows: list[ExportWindow]
) -> DryRun:
    """What a dry run says of ``windows``."""
    ws = settings.workspaces[job.workspace]
    state_dir = settings.daemon.state_dir
    learned = (await read_learned_retention(state_dir, [job.workspace])).get(job.workspace)
    earliest = retention_start(utc_now(), effective_months(ws.retention, learned), ws.zone)
    rows = [r for r in await read_rows(state_dir) if r.workspace == job.workspace]
    by_key = {(r.type, r.start): r for r in rows if r.mode is ExportMode.WINDOWS}
    stored = await _in_store(settings, job, windows, by_key)
    counts, new, done = _classify(job, windows, by_key, earliest, stored)
    return DryRun(counts, new, done, earliest, rows)


async def _dry_run(settings: Settings, job: JobSettings, windows: list[ExportWindow]) -> int:
    """What the backfill would queue, without queuing it: how many exports, how many
    before AC's retention or done already, and roughly how long at the times seen."""
    counts, new, _, earliest, rows = await dry_run_counts(settings, job, windows)
    requests = sum(ac_requests(job, type_, found) for type_, found in new.items())
    spans = sorted(
        r.ready_at - r.submitted_at
        for r in rows
        if r.ready_at is not None and r.submitted_at is not None and r.attempts == 1
    )
    exports = len(windows) * len(job.window_types)
    print(
        f"backfill {job.name} would cover {counted(exports, 'export')} "
        f"({counted(len(windows), 'window')} x {counted(len(job.window_types), 'type')}: "
        f"{', '.join(job.window_types)}):"
    )
    asks = counted(requests, "AC request")
    print(f"  {counts['new']} to ask AC for, in {asks}{_coalesced_note(job)}")
    print(f"  {counts['pending']} already queued or in flight")
    print(f"  {counts['done']} already done (held by the output store: not asked again)")
    print(f"  {counts['beyond']} before AC's data retention ({earliest.date()}): not asked for")
    if spans and requests:
        median = spans[len(spans) // 2]
        print(
            f"  roughly {human_duration(median * requests)} of AC's time at the "
            f"{human_duration(median)} per export seen in this workspace (one at a time)"
        )
    elif requests:
        print(
            "  no processing time seen yet in this workspace; AC's worker starts one export "
            f"per 5-minute tick: {human_duration(300 * requests)} or more"
        )
    print("nothing was queued (--dry-run)")
    return ExitCode.OK


async def _cancel(settings: Settings, path: Path, args: argparse.Namespace) -> int:
    job = _job(settings, path, args.job)
    if args.from_ is None and args.to is None:
        first, last = "", "~"  # every window: ISO strings sort between these
    else:
        start, end = _range(settings, job, args)
        first, last = iso_ms(start), iso_ms(end)
    ledger = await Ledger.open(ledger_path(settings.daemon.state_dir))
    try:
        dropped, running = await ledger.cancel(job.name, first, last)
    finally:
        await ledger.close()
    print(f"dropped {dropped} queued or failed exports of job {job.name}")
    if running:
        print(f"{running} in flight at AC are left to finish (cancelling cannot stop AC)")
    if dropped:
        print("windows inside the job's catch-up horizon are planned again at its next look")
    return ExitCode.OK


def _say_beyond_retention(look: Look) -> None:
    if look.beyond_retention:
        print(
            f"{look.beyond_retention} of {counted(look.due, 'export')} in that range start "
            "before AC's data retention: recorded as beyond retention, not asked for",
            file=sys.stderr,
        )


async def _show_progress(daemon: Daemon, total: int) -> None:
    if not sys.stderr.isatty():
        return
    started = time.monotonic()
    try:
        while True:
            _draw_bar(daemon, total, started)
            await asyncio.sleep(0.5)
    finally:
        _draw_bar(daemon, total, started)  # its last state: N/N when all went through


def _draw_bar(daemon: Daemon, total: int, started: float) -> None:
    done = daemon.tally.succeeded
    failed = daemon.tally.failed
    width = 30
    filled = int(width * (done + failed) / max(total, 1))
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done"
        f"{f', {failed} failed' if failed else ''}  {time.monotonic() - started:5.0f}s"
    )
    sys.stderr.flush()
