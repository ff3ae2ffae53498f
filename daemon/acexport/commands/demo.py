"""``acexport demo``: the daemon against an emulator started here, with no AC account.

The emulator is the test double of the remote service, so the daemon never
hears of it: this command starts it on loopback, then hands the daemon
ordinary workspaces whose ``base_url`` and token point there. A reload
(SIGHUP) reads the config again and points it there again.
"""

from __future__ import annotations

import argparse
import secrets
import shlex
import sys
from pathlib import Path

import structlog
from pydantic import SecretStr

from ..config import Settings, WorkspaceSettings, load_settings
from .common import exit_code_of, load, prepare, run_daemon_loop
from .early import remember_early_signals
from .run import run_daemon

log = structlog.get_logger("acexport.cli")

# Shipped in the package: `acexport demo` works from any directory, in the image too.
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "demo.toml"


def main(args: argparse.Namespace) -> int:
    remember_early_signals()

    def body() -> int:
        settings, path = load(args.config or str(SHIPPED_CONFIG))
        if args.config is None:
            settings = _in_working_directory(settings)
        return run_daemon_loop(_demo(settings, path, args.once))

    return exit_code_of("demo", body)


def _in_working_directory(settings: Settings) -> Settings:
    """The shipped config's state and exports under the working directory (./state/demo,
    ./exports), not beside the config inside the installed package."""
    here = Path.cwd()
    places = {"state_dir": here / "state" / "demo", "output_dir": here / "exports"}
    # What the environment (or a defaults file) set stays: it is the operator's.
    unset = {k: v for k, v in places.items() if k not in settings.daemon.model_fields_set}
    return settings.model_copy(update={"daemon": settings.daemon.model_copy(update=unset)})


def _pointed_at(settings: Settings, url: str, tokens: dict[str, str]) -> Settings:
    """``settings`` with every workspace served by the emulator at ``url``."""
    workspaces = {
        name: WorkspaceSettings(base_url=url, token=SecretStr(tokens[name]), timezone=ws.timezone)
        for name, ws in settings.workspaces.items()
    }
    return settings.model_copy(update={"workspaces": workspaces})


def _say_how_to_watch(settings: Settings, path: Path) -> None:
    """The command lines that address this demo's state from another terminal (its
    config alone names no state directory a shell would find)."""
    state = shlex.quote(str(settings.daemon.state_dir.absolute()))
    config = shlex.quote(str(path.absolute()))
    where = f"ACEXPORT_DAEMON__STATE_DIR={state} acexport"
    job = settings.jobs[0].name if settings.jobs else "JOB"
    print(
        "demo: watch it from another terminal with\n"
        f"  {where} status --config {config}\n"
        f"  {where} backfill --config {config} --job {job} --from 2026-01-01 --to 2026-01-07 "
        "--dry-run",
        file=sys.stderr,
        flush=True,
    )


async def _demo(settings: Settings, path: Path, once: bool) -> int:
    def reread() -> Settings:  # what SIGHUP reads: the file again, placed as at start
        fresh = load_settings(path)
        return _in_working_directory(fresh) if path == SHIPPED_CONFIG else fresh

    from aiohttp import web

    from ..emulator import EmulatorSettings, QueueSettings, make_app

    tokens = {name: secrets.token_urlsafe(16) for name in settings.workspaces}
    # AC's real protocol (chunked ZIP, ERROR, 500 on a bad token), time made small.
    emulator = EmulatorSettings(
        tokens=tokens, queue=QueueSettings(processing_s=1.0, records=500, expiry_s=3600.0)
    )
    runner = web.AppRunner(make_app(emulator), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        demo = _pointed_at(settings, url, tokens)
        prepare(demo, None)
        log.info("demo_emulator_started", url=url, workspaces=sorted(tokens))
        _say_how_to_watch(settings, path)
        return await run_daemon(demo, path, once, lambda: _pointed_at(reread(), url, tokens))
    finally:
        await runner.cleanup()
