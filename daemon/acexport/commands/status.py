"""``acexport status``: what is exported, pending and failed, read from the ledger.

It reads while a daemon writes (SQLite WAL); live figures are on /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..ledger import read_rows
from ..ledger_schema import ACTIVE, LedgerState
from ..lock import lock_holder
from ..protocol import ExportMode
from ..triggers import next_looks
from . import ExitCode
from .common import exit_code_of, load


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        settings, _ = load(args.config)
        report = asyncio.run(_status_report(settings))
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print(report)
        return ExitCode.OK

    return exit_code_of("status", body)


def _print(report: dict[str, Any]) -> None:
    holder = report["daemon_pid"]
    print(f"daemon: {'running, pid ' + str(holder) if holder else 'not running'}")
    for job in report["jobs"]:
        print(f"\njob {job['name']} ({job['workspace']}, {job['schedule']})")
        if job["window_types"]:
            print(f"  last exported window: {job['last_exported'] or 'none yet'}")
        for type_, as_of in job["snapshots"].items():
            print(f"  {type_} snapshot as of:{' ' * max(1, 8 - len(type_))}{as_of or 'none yet'}")
        print(f"  next look:            {job['next_look'] or '-'}")
        print(f"  done {job['done']}, pending {job['pending']}, failed {len(job['failed'])}")
        if job["beyond_retention"]:
            print(f"  before AC's data retention (never asked for): {job['beyond_retention']}")
        for failure in job["failed"][:10]:
            print(f"    {failure['type']} {failure['window']}: {failure['reason']}")
    print("\nlanes:")
    for lane in report["lanes"]:
        print(f"  {lane['workspace']}: queued {lane['queued']}, in flight {lane['in_flight']}")


async def _status_report(settings: Settings) -> dict[str, Any]:
    rows = await read_rows(settings.daemon.state_dir)
    now = datetime.now(UTC)
    jobs = []
    for job in settings.jobs:
        zone = settings.workspaces[job.workspace].zone
        mine = [r for r in rows if r.job == job.name]
        done = [r for r in mine if r.state is LedgerState.DONE]
        windows_done = [r for r in done if r.mode is ExportMode.WINDOWS]
        looks = next_looks(job.trigger(zone), now, 1)
        newest = {
            str(t): max((r.end for r in done if r.type == t and r.mode is ExportMode.SNAPSHOT),
                        default=None)
            for t in job.snapshot_types
        }  # fmt: skip
        jobs.append(
            {
                "name": job.name,
                "workspace": job.workspace,
                "schedule": job.schedule,
                "window_types": [str(t) for t in job.window_types],
                "last_exported": (
                    str(max(windows_done, key=lambda r: r.end).window(zone))
                    if windows_done
                    else None
                ),
                "snapshots": {
                    t: end.astimezone(zone).isoformat() if end else None
                    for t, end in newest.items()
                },
                "next_look": looks[0].isoformat() if looks else None,
                "done": len(done),
                "pending": sum(r.state in ACTIVE for r in mine),
                "beyond_retention": sum(r.state is LedgerState.BEYOND_RETENTION for r in mine),
                "failed": [
                    {
                        "type": r.type,
                        "window": str(r.window(zone)),
                        "reason": r.reason,
                        "attempts": r.attempts,
                    }
                    for r in mine
                    if r.state is LedgerState.FAILED
                ],
            }
        )
    lanes = [
        {
            "workspace": name,
            "queued": sum(r.workspace == name and r.state is LedgerState.QUEUED for r in rows),
            "in_flight": [
                {"type": r.type, "window": r.window().from_date, "state": r.state}
                for r in rows
                if r.workspace == name and r.state in (LedgerState.SUBMITTED, LedgerState.READY)
            ],
        }
        for name in sorted(settings.workspaces)
    ]
    return {
        "daemon_pid": lock_holder(settings.daemon.state_dir),
        "jobs": jobs,
        "lanes": lanes,
    }
