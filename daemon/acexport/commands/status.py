"""``acexport status``: what is exported, missing, retrying and failed, from the ledger.

It reads while a daemon writes (SQLite WAL); live figures are on /metrics. The
windows of the catch-up horizon are counted by the view the status page and
the ``acexport_windows`` metric use, so the three never disagree; failed and
retrying windows are listed wherever they lie (a backfill's too).

Exit 0 when nothing failed and no job is behind; 1 otherwise (for cron, Nagios,
a CI step); ``--json`` for programs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..config import JobSettings, Settings
from ..config.hooks import counted_since
from ..ledger import (
    ACTIVE,
    ExportRecord,
    HookBacklog,
    LedgerState,
    read_hook_backlogs,
    read_learned_retention,
    read_rows,
)
from ..lock import lock_holder
from ..ops.statusview import JobView, build_view, counted_state, failure_text
from ..planner import due_windows
from ..protocol import ExportMode
from ..retention import describe_retention, effective_months
from ..triggers import next_looks, schedule_period
from . import ExitCode
from .common import exit_code_of, human_duration, load


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        settings, _ = load(args.config)
        if not settings.daemon.state_dir.is_dir():
            # Not an empty, healthy-looking report: this config's daemon never ran here.
            print(
                f"no state directory at {settings.daemon.state_dir}: no daemon has run with "
                "this config here (or daemon.state_dir points elsewhere)",
                file=sys.stderr,
            )
            return ExitCode.FAILED
        report = asyncio.run(_status_report(settings))
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print(report)
        troubled = any(
            job["failed"] or job["retrying"] or job["behind_s"] for job in report["jobs"]
        ) or any(hook["failed"] for hook in report["hooks"])
        return ExitCode.FAILED if troubled else ExitCode.OK

    return exit_code_of("status", body)


def _print(report: dict[str, Any]) -> None:
    holder = report["daemon_pid"]
    if holder:
        print(f"daemon: running, pid {holder}")
    else:
        print("daemon: not running (nothing is exported until `acexport run` starts)")
    for job in report["jobs"]:
        _print_job(job, bool(holder))
    print("\nlanes:")
    for lane in report["lanes"]:
        flights = ", ".join(
            f"{f['type']} {f['window']}"
            + (f" ({f['windows']} windows in one AC request)" if f["windows"] > 1 else "")
            + f" {f['state']}"
            for f in lane["in_flight"]
        )
        print(
            f"  {lane['workspace']}: {lane['queued']} queued, {len(lane['in_flight'])} in flight"
            + (f" ({flights})" if flights else "")
        )
        print(f"    retention: {lane['retention']}")
    for hook in report["hooks"]:
        _print_hook(hook)


def _print_job(job: dict[str, Any], holder: bool) -> None:
    print(f"\njob {job['name']} ({job['workspace']}, {job['schedule']})")
    if job["window_types"]:
        print(f"  last exported window: {job['last_exported'] or 'none yet'}")
        counts = ", ".join(
            f"{n} {state.replace('_', ' ')}" for state, n in job["horizon"].items() if n
        )
        print(f"  catch-up horizon:     {counts or 'no windows due yet'}")
    for type_, as_of in job["snapshots"].items():
        print(f"  {type_} snapshot as of:{' ' * max(1, 8 - len(type_))}{as_of or 'none yet'}")
    if job["behind_s"]:
        print(f"  BEHIND by {human_duration(job['behind_s'])}: the oldest due window is not done")
    if holder:
        print(f"  next look:            {job['next_look'] or 'never (the schedule ends)'}")
    if job["pending_elsewhere"]:
        print(f"  queued outside the horizon (backfills): {job['pending_elsewhere']}")
    if job["beyond_retention"]:
        print(f"  before AC's data retention (never asked for): {job['beyond_retention']}")
    if job["expired"]:
        print(
            f"  expired (deleted by keep): {job['expired']}; oldest kept: "
            f"{job['oldest_kept'] or 'none'}"
        )
    for row in job["restatements_kept"][:10]:
        print(f"  KEPT     {row['type']} {row['window']}: {row['detail']}")
    for row in (job["retrying"] + job["failed"])[:10]:
        label = "retrying" if row in job["retrying"] else "FAILED"
        print(f"  {label:<8} {row['type']} {row['window']}: {row['detail']}")
    hidden = len(job["retrying"]) + len(job["failed"]) - 10
    if hidden > 0:
        print(f"  ... and {hidden} more (acexport status --json lists them all)")


def _print_hook(hook: dict[str, Any]) -> None:
    print(f"\nhook {hook['name']} ({hook['kind']}): {hook['pending']} pending", end="")
    if hook["oldest_pending_s"] is not None:
        print(f", the oldest for {human_duration(hook['oldest_pending_s'])}", end="")
    print(f"; {hook['delivered']} delivered, {hook['failed']} failed (within max_age)")
    if hook["last_error"] and (hook["pending"] or hook["failed"]):
        print(f"  last error: {hook['last_error']}")


def _in_flight(rows: list[ExportRecord], zone: Any) -> list[dict[str, Any]]:
    """The lane's exports at AC or downloading: one per AC request, so a coalesced
    request shows as what it is (its first and last window, how many)."""
    requests: dict[tuple[str, Any, Any], list[ExportRecord]] = {}
    for r in rows:
        if r.state in (LedgerState.SUBMITTED, LedgerState.READY):
            key = (r.type, r.request_start or r.start, r.request_end or r.end)
            requests.setdefault(key, []).append(r)
    flights = []
    for (type_, _, _), members in requests.items():
        members.sort(key=lambda r: r.start)
        window = members[0].label(zone)
        if len(members) > 1:
            window += f" to {members[-1].label(zone)}"
        flights.append(
            {
                "type": type_,
                "window": window,
                "state": str(members[0].state),
                "windows": len(members),
            }
        )
    return flights


def _row(record: ExportRecord, zone: Any) -> dict[str, Any]:
    return {
        "type": record.type,
        "window": record.label(zone),  # as the text report names it
        # For programs, with the offset (issue 38 item 10: a label names no zone).
        "start": record.start.astimezone(zone).isoformat(timespec="seconds"),
        "end": record.end.astimezone(zone).isoformat(timespec="seconds"),
        "failures": record.failures,
        "last_error": record.last_error or record.reason,
        "detail": failure_text(record),
        "reason": record.reason,
        "attempts": record.attempts,
    }


def _job_report(
    job: JobSettings,
    settings: Settings,
    rows: list[ExportRecord],
    job_view: JobView,
    now: datetime,
) -> dict[str, Any]:
    """One job's part of the status report."""
    zone = settings.workspaces[job.workspace].zone
    mine = [r for r in rows if r.job == job.name]
    done = [r for r in mine if r.state is LedgerState.DONE]
    windows_done = [r for r in done if r.mode is ExportMode.WINDOWS]
    looks = next_looks(job.trigger(zone), now, 1)
    cells = [cell for row in job_view.rows.values() for cell in row]
    # Counted as the page and acexport_windows count them; keys in snake_case (the
    # text report spaces them), as every key of the JSON report.
    horizon = Counter(counted_state(c.state) for c in cells)
    horizon_starts = {w.start for w in due_windows(job, zone, now)}
    return {
        "name": job.name,
        "workspace": job.workspace,
        "schedule": job.schedule,
        "window_types": [str(t) for t in job.window_types],
        "last_exported": (
            max(windows_done, key=lambda r: r.end).label(zone) if windows_done else None
        ),
        "snapshots": _newest_snapshots(job, done, zone),
        "next_look": looks[0].isoformat() if looks else None,
        "horizon": {
            state: horizon[state]
            for state in ("done", "missing", "in_flight", "retrying", "failed")
        },
        "behind_s": _behind_s(job, zone, job_view.oldest_waiting_end, now),
        "done": len(done),
        "pending": sum(r.state in ACTIVE for r in mine),
        "pending_elsewhere": sum(
            r.state is LedgerState.QUEUED
            and r.mode is ExportMode.WINDOWS
            and r.start not in horizon_starts
            for r in mine
        ),
        **_past_the_edges(mine, windows_done, zone),
        "retrying": [_row(r, zone) for r in mine if r.retrying],
        # Done, with the previous revision kept: a restatement served far fewer records.
        "restatements_kept": [_row(r, zone) for r in done if _kept(r)],
        "failed": [_row(r, zone) for r in mine if r.state is LedgerState.FAILED],
    }


def _past_the_edges(
    mine: list[ExportRecord], windows_done: list[ExportRecord], zone: ZoneInfo
) -> dict[str, Any]:
    """Windows before AC's retention, those deleted by the job's keep (not missing, not
    failed), and the oldest still kept."""
    return {
        "beyond_retention": sum(r.state is LedgerState.BEYOND_RETENTION for r in mine),
        "expired": sum(r.state is LedgerState.EXPIRED for r in mine),
        "oldest_kept": (
            min(windows_done, key=lambda r: r.start).label(zone) if windows_done else None
        ),
    }


def _newest_snapshots(
    job: JobSettings, done: list[ExportRecord], zone: ZoneInfo
) -> dict[str, str | None]:
    """Per snapshot type, the as-of time of the newest done snapshot."""
    newest = {
        str(t): max((r.end for r in done if r.type == t and r.mode is ExportMode.SNAPSHOT),
                    default=None)
        for t in job.snapshot_types
    }  # fmt: skip
    # With its offset: "2026-12-05 20:00" named no zone (issue 38 item 10).
    return {
        t: end.astimezone(zone).isoformat(timespec="minutes") if end else None
        for t, end in newest.items()
    }


async def _status_report(settings: Settings) -> dict[str, Any]:
    rows = await read_rows(settings.daemon.state_dir)
    now = datetime.now(UTC)
    view = {job.name: job for job in build_view(settings, rows, [], now).jobs}
    jobs = [_job_report(job, settings, rows, view[job.name], now) for job in settings.jobs]
    learned = await read_learned_retention(settings.daemon.state_dir, settings.workspaces)
    lanes = [
        {
            "workspace": name,
            "retention_months": effective_months(
                settings.workspaces[name].retention, learned.get(name)
            ),
            "retention": describe_retention(settings.workspaces[name].retention, learned.get(name)),
            "queued": sum(r.workspace == name and r.state is LedgerState.QUEUED for r in rows),
            "in_flight": _in_flight(
                [r for r in rows if r.workspace == name], settings.workspaces[name].zone
            ),
        }
        for name in sorted(settings.workspaces)
    ]
    return {
        "daemon_pid": lock_holder(settings.daemon.state_dir),
        "jobs": jobs,
        "lanes": lanes,
        "hooks": await _hooks_report(settings, now),
    }


async def _hooks_report(settings: Settings, now: datetime) -> list[dict[str, Any]]:
    """Each hook's queue: pending (and how old the oldest is), delivered and failed
    within the hooks' longest max_age (``counted_since``), the newest error."""
    since = counted_since(settings.hooks, now.timestamp())
    backlogs = await read_hook_backlogs(settings.daemon.state_dir, since)
    report = []
    for hook in settings.hooks:
        backlog = backlogs.get(hook.name, HookBacklog())
        oldest = backlog.oldest_pending_at
        report.append(
            {
                "name": hook.name,
                "kind": hook.kind,
                "pending": backlog.pending,
                "oldest_pending_s": None if oldest is None else round(now.timestamp() - oldest),
                "delivered": backlog.delivered,
                "failed": backlog.failed,
                "last_error": backlog.last_error,
            }
        )
    return report


def _kept(record: ExportRecord) -> bool:
    return (record.reason or "").startswith("restatement kept")


def _behind_s(
    job: JobSettings, zone: ZoneInfo, oldest_waiting_end: datetime | None, now: datetime
) -> float:
    """How long the job's oldest due window not done (as the page shows it) has been
    due, beyond the one period of its schedule the daemon has to export it (0: not
    behind)."""
    if oldest_waiting_end is None:
        return 0.0
    period = schedule_period(job.trigger(zone), now) or timedelta(0)
    late = (now - oldest_waiting_end - job.lag - period).total_seconds()
    return late if late > 0 else 0.0
