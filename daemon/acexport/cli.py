"""The command line: argument parsing and dispatch to ``commands/`` (one module each).

Only argparse is imported here; each command's module is imported when it
runs, so ``acexport --help`` stays fast. Exit codes: ``commands.ExitCode``.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .commands import ExitCode
from .commands.completion import script as completion_script
from .commands.early import remember_early_signals, starts_daemon
from .formats import Compression, OutputFormat
from .protocol import ExportType


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    *examples: str,
) -> argparse.ArgumentParser:
    """A subcommand whose --help opens with ``summary`` and ends with examples."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Its own usage for a flag it does not know (`status --jsn`), not the top level's.
    parser.set_defaults(command_parser=parser)
    return parser


def _add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level, -v and --log-format: above the config and the environment."""
    logging_flags = parser.add_argument_group("logging (default: the config's [daemon])")
    logging_flags.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    logging_flags.add_argument(
        "-v", "--verbose", action="store_true", help="the same as --log-level debug"
    )
    logging_flags.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        help="default: auto (console on a terminal, JSON lines otherwise)",
    )


def logging_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The environment variables the logging flags stand for (flags win over the config
    and the environment, as the settings read these variables above the file)."""
    level = "debug" if getattr(args, "verbose", False) else getattr(args, "log_level", None)
    overrides = {"ACEXPORT_DAEMON__LOG_LEVEL": level}
    overrides["ACEXPORT_DAEMON__LOG_FORMAT"] = getattr(args, "log_format", None)
    return {name: value for name, value in overrides.items() if value}


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
    parser.add_argument(
        "--type", required=True, choices=[t.value for t in ExportType], help="AC's export type"
    )
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
        help="data file, or - for stdout. Without it, into the config's output: only a "
        "range that is exactly one window of a job (its format and compression, not yet "
        "stored), written as that job would; anything else is refused, never a file "
        "overlapping the daemon's windows",
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

    run = _command(
        commands,
        "run",
        "run the daemon (or --once: export what is due, exit)",
        "acexport run --config /etc/acexport/config.toml",
        "acexport run --once -v      # cron, CI: exit 0 if every due export worked",
    )
    _add_config_argument(run)
    _add_logging_arguments(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="plan every job once, export all due windows, exit 0 if all worked",
    )

    demo = _command(
        commands,
        "demo",
        "run the daemon against an emulator it starts (no AC account needed)",
        "acexport demo              # exports land in ./exports, Ctrl-C stops",
        "acexport demo --once",
    )
    demo.add_argument("--config", help="default: the demo config shipped in the package")
    _add_logging_arguments(demo)
    demo.add_argument("--once", action="store_true", help="export what is due, then exit")

    backfill = _command(
        commands,
        "backfill",
        "export every window of a job in a range",
        "acexport backfill --job nightly --from 2026-01-01 --to 2026-03-31 --dry-run",
        "acexport backfill --job nightly --from 2026-01-01 --to 2026-03-31",
        "acexport backfill --job nightly --cancel    # drop what is still queued",
    )
    _add_config_argument(backfill)
    _add_logging_arguments(backfill)
    backfill.add_argument("--job", required=True, help="a [[jobs]] name of the config")
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

    reexport = _command(
        commands,
        "reexport",
        "ask AC again for a job's windows in a range and replace them as their next revision",
        "acexport reexport --job nightly --from 2026-11-01 --to 2026-11-03 --dry-run",
        "acexport reexport --job nightly --from 2026-11-01 --to 2026-11-03 --type page",
    )
    _add_config_argument(reexport)
    _add_logging_arguments(reexport)
    reexport.add_argument("--job", required=True, help="a [[jobs]] name of the config")
    reexport.add_argument(
        "--from", dest="from_", required=True, metavar="DATE", help="the range's first day"
    )
    reexport.add_argument("--to", required=True, metavar="DATE", help="inclusive for a date")
    reexport.add_argument(
        "--type",
        action="append",
        choices=["event", "page", "identity", "individual", "membership", "segment"],
        help="only this type (repeatable; default: the job's types exported in windows)",
    )
    reexport.add_argument(
        "--dry-run", action="store_true", help="say what would be asked again, queue nothing"
    )
    reexport.add_argument(
        "--yes", "-y", action="store_true", help="no question on a terminal for a large one"
    )

    verify = _command(
        commands,
        "verify",
        "check the output's files against their manifests (after a restore)",
        "acexport verify --config /etc/acexport/config.toml",
        "acexport verify --job nightly --from 2026-11-01 --to 2026-11-30",
    )
    _add_config_argument(verify)
    verify.add_argument("--job", help="only this job's files")
    verify.add_argument("--from", dest="from_", metavar="DATE", help="windows starting from")
    verify.add_argument("--to", metavar="DATE", help="... through (inclusive for a date)")

    status = _command(
        commands,
        "status",
        "what is exported, missing, retrying and failed (exit 1 if any failed or is behind)",
        "acexport status",
        "acexport status --json | jq '.jobs[].failed'",
    )
    _add_config_argument(status)
    status.add_argument("--json", action="store_true", help="for programs (default: for people)")

    health = _command(
        commands,
        "healthcheck",
        "exit 0 if the running daemon's /healthz says ok (for containers)",
        "acexport healthcheck    # a container's HEALTHCHECK",
    )
    _add_config_argument(health)

    check = _command(
        commands,
        "check-config",
        "validate the config; show next looks",
        "acexport check-config --config /etc/acexport/config.toml",
        "acexport check-config --offline    # in CI: secrets exist only where it runs",
        "acexport check-config --online     # on the host: tokens, store, engine",
    )
    _add_config_argument(check)
    reach = check.add_mutually_exclusive_group()
    reach.add_argument(
        "--offline",
        action="store_true",
        help="check all but the secrets (token files, S3 credentials: they may exist only "
        "where the service runs, e.g. /run/credentials): for CI and image builds",
    )
    reach.add_argument(
        "--online",
        action="store_true",
        help="also prove each token with one request AC answers without making an export, "
        "and write and delete a probe object in the output store",
    )
    export = _command(
        commands,
        "export",
        "export one ad-hoc range (polls, streams, verifies, commits)",
        "ACME_TOKEN=... acexport export --base-url https://analytics.liferay.com \\\n"
        "      --token-env ACME_TOKEN --type page --from 2026-11-01 --to 2026-11-07 \\\n"
        "      --output pages.jsonl.gz",
        "acexport export --workspace acme --type event --from 2026-11-01 --to 2026-11-01 \\\n"
        "      --output events.parquet",
    )
    _add_export_arguments(export)
    _add_logging_arguments(export)

    completion = _command(
        commands,
        "completion",
        "print a shell completion script (commands, options, choices, file names)",
        "acexport completion bash > /etc/bash_completion.d/acexport",
        "source <(acexport completion zsh)    # in ~/.zshrc",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete for")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if starts_daemon(argv):
        remember_early_signals()  # before the parser, a tenth of a second
    tune_malloc()
    parser = build_parser()
    _suggest_command(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if args.command == "backfill" and not args.cancel and None in (args.from_, args.to):
        parser.error("backfill needs --from and --to (only --cancel goes without: all windows)")
    os.environ.update(logging_overrides(args))
    if args.command in ("status", "check-config", "completion"):
        # Reports: `acexport status | head` should end quietly, as other Unix tools do.
        # (Not for run or export: a SIGPIPE from a socket must not kill a download.)
        previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            return _dispatch(args)
        finally:
            signal.signal(signal.SIGPIPE, previous)
    code = _dispatch(args)
    if code == ExitCode.INTERRUPTED:
        _die_of_sigint()
    return code


def _die_of_sigint() -> None:
    """After a clean stop on Ctrl-C, end by SIGINT itself: a parent (make, a shell
    script) then sees an interrupt and stops too, where exit 130 read as an error
    ("make: *** [demo] Error 130")."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _suggest_command(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """``acexport stauts``: say the command it resembles, as git and systemctl do."""
    first = next((a for a in argv if not a.startswith("-")), None)
    known = [*_COMMAND_MODULES, "emulator", "completion"]
    if first is None or first in known:
        return
    close = difflib.get_close_matches(first, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    parser.error(f"unknown command {first!r}{hint} (commands: {', '.join(sorted(known))})")


_COMMAND_MODULES = {
    "run": "run",
    "demo": "demo",
    "backfill": "backfill",
    "reexport": "reexport",
    "status": "status",
    "check-config": "check_config",
    "healthcheck": "healthcheck",
    "export": "export",
    "verify": "verify",
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "completion":
        print(completion_script(build_parser(), args.shell))
        return ExitCode.OK
    if args.command == "emulator":
        from .emulator.cli import main as emulator_main

        return emulator_main(args)
    module = importlib.import_module(f".commands.{_COMMAND_MODULES[args.command]}", __package__)
    code: int = module.main(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
