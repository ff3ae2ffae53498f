"""``acexport check-config``: validate the config, show each job's next looks and due windows."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from ..config import JobSettings, Settings, resolve_tokens, secret_warnings
from ..formats import OutputFormat
from ..ledger import LedgerState, read_learned_retention, read_rows
from ..output import local
from ..output.open import open_store
from ..payload import linescan, tempfiles
from ..payload.parquet import require_engine
from ..planner import ac_requests, due_windows
from ..protocol import ExportMode
from ..retention import (
    LearnedRetention,
    describe_retention,
    effective_months,
    retention_start,
)
from ..triggers import next_looks
from . import ExitCode
from .common import exit_code_of, human_duration, load
from .online import online_problems


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        settings, path = load(args.config)
        if settings.output.format is OutputFormat.PARQUET:
            require_engine()  # DuckDB installed, or 78 here rather than at `run`
        if not args.offline:
            tokens = resolve_tokens(settings, str(path))  # the hooks' secrets, programs too
            # The output's credential files are read (a missing one is an error); no
            # request made but with --online.
            open_store(settings, settings.daemon.state_dir / "tmp")
        _report(settings, path)
        if args.offline:
            print("\n(offline: token files and output credentials were not read)")
        if args.online:
            print("\nonline:")
            problems = asyncio.run(online_problems(settings, tokens))
            for problem in problems:
                print(f"acexport check-config: {problem}", file=sys.stderr)
            return ExitCode.CONFIG if problems else ExitCode.OK
        return ExitCode.OK

    return exit_code_of("check-config", body)


def duration_text(span: timedelta) -> str:
    """A duration as the config spells one: ``1d``, ``6h``, ``15m``, ``90s``, ``200ms``."""
    ms = round(span.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _report_windows(
    settings: Settings,
    job: JobSettings,
    zone: ZoneInfo,
    now: datetime,
    learned: dict[str, LearnedRetention],
    done: set[tuple[str, str, str, str]],
) -> None:
    """What the job's catch-up would export now, and how many AC requests it takes."""
    windows = due_windows(job, zone, now)
    ws = settings.workspaces[job.workspace]
    months = effective_months(ws.retention, learned.get(job.workspace))
    earliest = retention_start(now, months, zone)
    beyond = [w for w in windows if w.start < earliest]
    windows = [w for w in windows if w.start >= earliest]
    if beyond:
        print(
            f"  {len(beyond)} window(s) of the catch-up start before AC's retention "
            f"({months} months: data from {earliest.date()} on): never asked for"
        )
    todo = [
        (t, w)
        for w in windows
        for t in job.window_types
        if (job.workspace, t, w.from_date, w.to_date) not in done
    ]
    requests = sum(
        ac_requests(job, str(t), [w for u, w in todo if u == t]) for t in job.window_types
    )
    print(f"  windows of {duration_text(job.window)} (lag {duration_text(job.lag)}, catch-up "
          f"{duration_text(job.catch_up)}): would export now {len(todo)} export(s) "
          f"in {len(windows)} window(s), {requests} AC request(s) "
          f"(at AC's 5-minute tick, {human_duration(300 * requests)} or more)")  # fmt: skip
    for window in windows[:10]:
        print(f"    {window.label}")
    if len(windows) > 10:
        print(f"    ... and {len(windows) - 10} more")
    if job.restate is not None:
        print(f"  each window exported once more when it is {duration_text(job.restate)} old")
    if job.keep is not None:
        edge = (now - job.keep).astimezone(zone)
        print(
            f"  keep {duration_text(job.keep)}: files of windows that ended before "
            f"{edge:%Y-%m-%d %H:%M} are deleted at each look"
        )


def _report(settings: Settings, path: Path) -> None:
    print(f"{path}: valid; {len(settings.workspaces)} workspace(s), {len(settings.jobs)} job(s)")
    for warning in secret_warnings(path, settings):
        print(f"warning: {warning}")
    if not settings.jobs:
        print("warning: no [[jobs]]: the daemon would start and export nothing")
    if not (linescan.COMPILED and local.COMPILED and tempfiles.COMPILED):
        print(
            "warning: acexport was installed without its compiled parts (no C compiler "
            "was found): exports work, but use about twice the CPU; reinstall with gcc and "
            "the Python headers present to build them"
        )
    for shared in settings.shared_snapshot_prefixes():
        print(f"warning: {shared}")
    # What is in force, wherever it was set (file, environment, a defaults file).
    print(f"  output:    {settings.output.url or settings.output_dir()}")
    print(f"  state dir: {settings.daemon.state_dir}")
    print(f"  listen:    {settings.daemon.listen or '(off)'}")
    done, learned = asyncio.run(_ledger_facts(settings))
    for name, ws in sorted(settings.workspaces.items()):
        print(f"  workspace {name}: {ws.base_url} ({ws.timezone})")
        print(f"    retention: {describe_retention(ws.retention, learned.get(name))}")
    for hook in settings.hooks:
        target = " ".join(hook.command) if hook.command else hook.url or hook.openlineage
        jobs = ", ".join(hook.jobs) if hook.jobs is not None else "every job"
        print(f"  hook {hook.name}: {hook.kind} {target}")
        print(
            f"    on {' and '.join(hook.on)} files of {jobs}; "
            f"retried for {duration_text(hook.max_age)}"
        )
    now = datetime.now(UTC)
    for job in settings.jobs:
        zone = settings.workspaces[job.workspace].zone
        looks = next_looks(job.trigger(zone), now, 3)
        print(f"\njob {job.name} of {job.workspace}, schedule {job.schedule!r} ({zone.key})")
        print("  next looks: " + ", ".join(look.isoformat() for look in looks))
        for type_ in job.types:
            print(f"  {type_:<11} {_why_mode(job, type_)}")
        if job.snapshot_types:
            print(f"  snapshots: the newest {job.keep_snapshots} kept of each type")
        if not job.window_types:
            continue
        _report_windows(settings, job, zone, now, learned, done)


def _why_mode(job: JobSettings, type_: str) -> str:
    mode = job.mode_of(type_)
    if type_ in job.modes:
        return f"{mode} (set by the job's modes)"
    if mode is ExportMode.WINDOWS:
        return "windows: a time series, AC filters it by eventDate"
    return "snapshot: an entity table AC filters by createDate; windows would miss updates"


async def _ledger_facts(
    settings: Settings,
) -> tuple[set[tuple[str, str, str, str]], dict[str, LearnedRetention]]:
    """The windows done, and the retention AC named per workspace (the daemon plans
    by the shorter of that and the configured one)."""
    state_dir = settings.daemon.state_dir
    rows = await read_rows(state_dir)
    done = {
        (r.workspace, r.type, r.window().from_date, r.window().to_date)
        for r in rows
        if r.state is LedgerState.DONE
    }
    return done, await read_learned_retention(state_dir, settings.workspaces)
