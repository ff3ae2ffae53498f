"""The daemon's commands: ``run``, ``backfill``, ``status`` and ``check-config``.

Each takes parsed arguments and returns an exit code; signal handlers are
installed here, the only place that owns the process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .config import Settings, find_config, load_settings, resolve_tokens, token_warnings
from .errors import AcexportError, ConfigError
from .lock import lock_holder
from .observability import configure_logging, register_secret
from .planner import due_windows

if TYPE_CHECKING:
    from .service import Daemon
from .state import StateStore, ledger_path, read_rows
from .triggers import next_looks
from .windows import aligned_windows, parse_bound

log = structlog.get_logger("acexport.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


def _load(args: argparse.Namespace) -> tuple[Settings, Path]:
    path = find_config(args.config)
    if path is None:
        raise ConfigError(
            "no config file given or found ($ACEXPORT_CONFIG, ./acexport.toml, "
            "/etc/acexport/config.toml)"
        )
    return load_settings(path), path


def _prepare(args: argparse.Namespace) -> tuple[Settings, Path]:
    """Settings loaded, tokens checked and registered for redaction, logging set up."""
    settings, path = _load(args)
    for token in resolve_tokens(settings, str(path)).values():
        register_secret(token.get_secret_value())
    configure_logging(settings.daemon.log_format, settings.daemon.log_level)
    for warning in token_warnings(path, settings):
        log.warning("config_token_readable", detail=warning)
    # A file-size limit must surface as an error we can report, not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return settings, path


def _config_error(exc: ConfigError) -> int:
    print(f"acexport: configuration error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


# -- run ----------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    _remember_early_signals()
    try:
        settings, path = _prepare(args)
    except ConfigError as exc:
        return _config_error(exc)
    try:
        return asyncio.run(_run(settings, path, args.once))
    except ConfigError as exc:
        return _config_error(exc)
    except AcexportError as exc:  # another daemon holds the directory, the ledger failed
        print(f"acexport: {exc}", file=sys.stderr)
        return EXIT_FAILED


_early_signals: set[int] = set()


def _remember_early_signals() -> None:
    """Until the daemon is up, note SIGTERM/SIGINT/SIGHUP instead of dying half-started."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _: _early_signals.add(number))


def _handle_signals(daemon: Daemon) -> None:
    """SIGTERM/SIGINT stop taking work and end within the grace; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, daemon.request_stop)
    loop.add_signal_handler(signal.SIGINT, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    if _early_signals & {signal.SIGTERM, signal.SIGINT}:
        daemon.request_stop()
    elif signal.SIGHUP in _early_signals:
        daemon.request_reload()
    _early_signals.clear()


async def _run(settings: Settings, path: Path, once: bool) -> int:
    from .service import Daemon  # the daemon's imports (aiohttp, ...) only when it runs

    async with Daemon(settings, path) as daemon:
        _handle_signals(daemon)
        if once:
            ok = await daemon.run_once()
            failed = sum(lane.failed for lane in daemon.lanes.values())
            done = sum(lane.succeeded for lane in daemon.lanes.values())
            log.info("run_once_finished", exported=done, failed=failed)
            return EXIT_OK if ok and daemon.fatal_error is None else EXIT_FAILED
        await daemon.run_until_stopped()
    return EXIT_OK if daemon.fatal_error is None else EXIT_FAILED


# -- backfill -----------------------------------------------------------------
def backfill(args: argparse.Namespace) -> int:
    _remember_early_signals()
    try:
        settings, path = _prepare(args)
    except ConfigError as exc:
        return _config_error(exc)
    job = next((j for j in settings.jobs if j.name == args.job), None)
    if job is None:
        known = ", ".join(j.name for j in settings.jobs) or "none"
        print(f"acexport backfill: no job {args.job!r} in {path} (known: {known})", file=sys.stderr)
        return EXIT_USAGE
    zone = settings.workspaces[job.workspace].zone
    try:
        start = parse_bound(args.from_, zone, end=False)
        end = parse_bound(args.to, zone, end=True)
    except ValueError as exc:
        print(f"acexport backfill: --from/--to: {exc}", file=sys.stderr)
        return EXIT_USAGE
    windows = aligned_windows(zone, job.window, start, end)
    if not windows:
        print("acexport backfill: no whole window lies in that range", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_backfill(settings, path, job.name, windows))
    except AcexportError as exc:
        print(f"acexport: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _backfill(settings: Settings, path: Path, job_name: str, windows: list[Any]) -> int:
    job = next(j for j in settings.jobs if j.name == job_name)
    holder = lock_holder(settings.daemon.state_dir)
    if holder is not None:
        store = await StateStore.open(ledger_path(settings.daemon.state_dir))
        try:
            records = await store.plan(job.name, job.workspace, job.types, windows)
        finally:
            await store.close()
        print(
            f"queued {len(records)} exports of job {job.name}; the running daemon "
            f"(pid {holder}) will export them (see `acexport status`)"
        )
        return EXIT_OK
    from .service import Daemon

    async with Daemon(settings, path) as daemon:
        _handle_signals(daemon)
        records = await daemon.plan(job, windows)
        progress = asyncio.create_task(_show_progress(daemon, len(records)))
        ok = await daemon.drain()
        progress.cancel()
    return EXIT_OK if ok and daemon.fatal_error is None else EXIT_FAILED


async def _show_progress(daemon: Daemon, total: int) -> None:
    if not sys.stderr.isatty():
        return
    started = time.monotonic()
    while True:
        done = sum(lane.succeeded for lane in daemon.lanes.values())
        failed = sum(lane.failed for lane in daemon.lanes.values())
        width = 30
        filled = int(width * (done + failed) / max(total, 1))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} done"
            f"{f', {failed} failed' if failed else ''}  {time.monotonic() - started:5.0f}s"
        )
        sys.stderr.flush()
        await asyncio.sleep(0.5)


# -- status -------------------------------------------------------------------
def status(args: argparse.Namespace) -> int:
    try:
        settings, _ = _load(args)
    except ConfigError as exc:
        return _config_error(exc)
    try:
        report = asyncio.run(_status_report(settings))
    except AcexportError as exc:
        print(f"acexport: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    holder = report["daemon_pid"]
    print(f"daemon: {'running, pid ' + str(holder) if holder else 'not running'}")
    for job in report["jobs"]:
        print(f"\njob {job['name']} ({job['workspace']}, {job['schedule']})")
        print(f"  last exported window: {job['last_exported'] or 'none yet'}")
        print(f"  next look:            {job['next_look'] or '-'}")
        print(f"  done {job['done']}, pending {job['pending']}, failed {len(job['failed'])}")
        for failure in job["failed"][:10]:
            print(f"    {failure['type']} {failure['window']}: {failure['reason']}")
    print("\nlanes:")
    for lane in report["lanes"]:
        print(f"  {lane['workspace']}: queued {lane['queued']}, in flight {lane['in_flight']}")
    return EXIT_OK


async def _status_report(settings: Settings) -> dict[str, Any]:
    rows = await read_rows(settings.daemon.state_dir)
    now = datetime.now(UTC)
    jobs = []
    for job in settings.jobs:
        zone = settings.workspaces[job.workspace].zone
        mine = [r for r in rows if r.job == job.name]
        done = [r for r in mine if r.state == "done"]
        looks = next_looks(job.trigger(zone), now, 1)
        jobs.append(
            {
                "name": job.name,
                "workspace": job.workspace,
                "schedule": job.schedule,
                "last_exported": str(max(done, key=lambda r: r.end).window(zone)) if done else None,
                "next_look": looks[0].isoformat() if looks else None,
                "done": len(done),
                "pending": sum(r.state in ("queued", "submitted", "ready") for r in mine),
                "failed": [
                    {
                        "type": r.type,
                        "window": str(r.window(zone)),
                        "reason": r.reason,
                        "attempts": r.attempts,
                    }
                    for r in mine
                    if r.state == "failed"
                ],
            }
        )
    lanes = [
        {
            "workspace": name,
            "queued": sum(r.workspace == name and r.state == "queued" for r in rows),
            "in_flight": [
                {"type": r.type, "window": r.window().from_date, "state": r.state}
                for r in rows
                if r.workspace == name and r.state in ("submitted", "ready")
            ],
        }
        for name in sorted(settings.workspaces)
    ]
    return {
        "daemon_pid": lock_holder(settings.daemon.state_dir),
        "jobs": jobs,
        "lanes": lanes,
    }


# -- check-config -------------------------------------------------------------
def check_config(args: argparse.Namespace) -> int:
    try:
        settings, path = _load(args)
        resolve_tokens(settings, str(path))
    except ConfigError as exc:
        return _config_error(exc)
    print(f"{path}: valid; {len(settings.workspaces)} workspace(s), {len(settings.jobs)} job(s)")
    for warning in token_warnings(path, settings):
        print(f"warning: {warning}")
    done = asyncio.run(_done_keys(settings))
    now = datetime.now(UTC)
    for job in settings.jobs:
        zone = settings.workspaces[job.workspace].zone
        looks = next_looks(job.trigger(zone), now, 3)
        windows = due_windows(job, zone, now)
        todo = [
            (t, w)
            for w in windows
            for t in job.types
            if (job.workspace, t, w.from_date, w.to_date) not in done
        ]
        print(
            f"\njob {job.name}: {', '.join(job.types)} of {job.workspace}, "
            f"every window of {job.window}, schedule {job.schedule!r} ({zone.key})"
        )
        print("  next looks: " + ", ".join(look.isoformat() for look in looks))
        print(f"  would export now: {len(todo)} export(s) in {len(windows)} window(s)")
        for window in windows[:10]:
            print(f"    {window}")
        if len(windows) > 10:
            print(f"    ... and {len(windows) - 10} more")
    return EXIT_OK


async def _done_keys(settings: Settings) -> set[tuple[str, str, str, str]]:
    rows = await read_rows(settings.daemon.state_dir)
    return {
        (r.workspace, r.type, r.window().from_date, r.window().to_date)
        for r in rows
        if r.state == "done"
    }
