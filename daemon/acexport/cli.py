"""The command line: argument parsing and dispatch to ``commands/`` (one module each).

Only argparse is imported here; each command's module is imported when it
runs, so ``acexport --help`` stays fast. Exit codes: ``commands.ExitCode``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .formats import Compression, OutputFormat
from .protocol import ExportType


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        help="config file (default: $ACEXPORT_CONFIG, ./acexport.toml, /etc/acexport/config.toml)",
    )


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_config_argument(parser)
    source = parser.add_argument_group("workspace (from the config, or given here)")
    source.add_argument("--workspace", help="a workspace of the config file")
    source.add_argument("--base-url", help="AC base URL, without a config file")
    source.add_argument("--token-env", metavar="VAR", help="environment variable holding the token")
    source.add_argument("--token-file", type=Path, metavar="FILE", help="file holding the token")
    source.add_argument("--timezone", help="zone for bare dates (default: workspace's, or UTC)")
    parser.add_argument("--type", required=True, choices=[t.value for t in ExportType])
    parser.add_argument(
        "--from",
        dest="from_",
        required=True,
        metavar="ISO",
        help="start: a date (its midnight) or a datetime",
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="ISO",
        help="end: a date (through that whole day) or an exclusive datetime",
    )
    parser.add_argument(
        "--output",
        metavar="PATH|-",
        help="data file, or - for stdout (default: the config's output layout)",
    )
    parser.add_argument(
        "--compression",
        choices=[c.value for c in Compression],
        help="default: by PATH's suffix (.gz, .zst), else the config's, none for -",
    )
    parser.add_argument(
        "--format",
        choices=[f.value for f in OutputFormat],
        help="default: parquet for a PATH ending .parquet, else the config's, ndjson for -",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace --output PATH if it exists (else refused)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress display")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acexport",
        description="Keep a local directory filled with Liferay Analytics Cloud exports.",
    )
    parser.add_argument("--version", action="version", version=f"acexport {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .emulator.cli import add_arguments as add_emulator_arguments

    run = commands.add_parser("run", help="run the daemon (or --once: export what is due, exit)")
    _add_config_argument(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="plan every job once, export all due windows, exit 0 if all worked",
    )

    demo = commands.add_parser(
        "demo", help="run the daemon against an emulator it starts (no AC account needed)"
    )
    demo.add_argument("--config", help="default: config/demo.toml")
    demo.add_argument("--once", action="store_true", help="export what is due, then exit")

    backfill = commands.add_parser("backfill", help="export every window of a job in a range")
    _add_config_argument(backfill)
    backfill.add_argument("--job", required=True)
    backfill.add_argument("--from", dest="from_", metavar="DATE", help="required, but for --cancel")
    backfill.add_argument("--to", metavar="DATE", help="inclusive for a date")
    what = backfill.add_mutually_exclusive_group()
    what.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be queued (and how long it may take) without queuing it",
    )
    what.add_argument(
        "--cancel",
        action="store_true",
        help="drop the job's queued and failed windows (in --from/--to, or all)",
    )
    backfill.add_argument(
        "--yes", "-y", action="store_true", help="no question on a terminal for a large backfill"
    )

    verify = commands.add_parser(
        "verify", help="check the output's files against their manifests (after a restore)"
    )
    _add_config_argument(verify)
    verify.add_argument("--job", help="only this job's files")
    verify.add_argument("--from", dest="from_", metavar="DATE", help="windows starting from")
    verify.add_argument("--to", metavar="DATE", help="... through (inclusive for a date)")

    status = commands.add_parser("status", help="what is exported, pending and failed")
    _add_config_argument(status)
    status.add_argument("--json", action="store_true")

    health = commands.add_parser(
        "healthcheck", help="exit 0 if the running daemon's /healthz says ok (for containers)"
    )
    _add_config_argument(health)

    check = commands.add_parser("check-config", help="validate the config; show next looks")
    _add_config_argument(check)
    check.add_argument(
        "--offline",
        action="store_true",
        help="check all but the secrets (token files, S3 credentials: they may exist only "
        "where the service runs, e.g. /run/credentials): for CI and image builds",
    )
    export = commands.add_parser(
        "export", help="export one ad-hoc range (polls, streams, verifies, commits)"
    )
    _add_export_arguments(export)

    emulator = commands.add_parser(
        "emulator", help="run an emulated Analytics Cloud export API on loopback"
    )
    add_emulator_arguments(emulator)
    return parser


def tune_malloc() -> None:
    """glibc's allocator, set for streaming big payloads through a few threads.

    - Two arenas instead of one per thread (8 per core): each thread's arena kept
      the memory it once held, so peak RSS grew with the thread count (84 MB
      against 76 MB for a gzip export, bench/README.md).
    - Buffers up to 4 MiB from the heap, and its top kept up to 64 MiB: by default
      each inflated or downloaded megabyte was a fresh mmap (or the heap grown and
      trimmed again), zero-filled page by page and unmapped when freed. That churn
      cost more than inflating: a 1 GiB ZIP to NDJSON took 2.1-2.4 s and 2.8 s of
      CPU, now 1.4-1.5 s and 1.8 s (bench/real_format.py).

    Each is the same as its ``MALLOC_*_`` environment variable, which an operator's
    environment still overrides.
    """
    try:
        libc = ctypes.CDLL(None)
        for variable, option, value in _MALLOC_OPTIONS:
            if variable not in os.environ:
                libc.mallopt(option, value)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


# glibc's malloc.h options, with the environment variable each stands for.
_MALLOC_OPTIONS = (
    ("MALLOC_ARENA_MAX", -8, 2),
    ("MALLOC_MMAP_THRESHOLD_", -3, 4 << 20),
    ("MALLOC_TRIM_THRESHOLD_", -1, 64 << 20),
)


def main(argv: Sequence[str] | None = None) -> int:
    tune_malloc()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "backfill" and not args.cancel and None in (args.from_, args.to):
        parser.error("backfill needs --from and --to (only --cancel goes without: all windows)")
    if args.command in ("status", "check-config"):
        # Reports: `acexport status | head` should end quietly, as other Unix tools do.
        # (Not for run or export: a SIGPIPE from a socket must not kill a download.)
        previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            return _dispatch(args)
        finally:
            signal.signal(signal.SIGPIPE, previous)
    return _dispatch(args)


_COMMAND_MODULES = {
    "run": "run",
    "demo": "demo",
    "backfill": "backfill",
    "status": "status",
    "check-config": "check_config",
    "healthcheck": "healthcheck",
    "export": "export",
    "verify": "verify",
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "emulator":
        from .emulator.cli import main as emulator_main

        return emulator_main(args)
    module = importlib.import_module(f".commands.{_COMMAND_MODULES[args.command]}", __package__)
    code: int = module.main(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
