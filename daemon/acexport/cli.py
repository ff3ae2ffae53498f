"""The command line: argument parsing, signal handling and exit codes.

Subcommands import their implementation lazily so ``acexport --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus= stops a restart loop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acexport",
        description="Keep a local directory filled with Liferay Analytics Cloud exports.",
    )
    parser.add_argument("--version", action="version", version=f"acexport {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .commands import add_config_argument
    from .emulator.cli import add_arguments as add_emulator_arguments

    run = commands.add_parser("run", help="run the daemon (or --once: export what is due, exit)")
    add_config_argument(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="plan every job once, export all due windows, exit 0 if all worked",
    )

    backfill = commands.add_parser("backfill", help="export every window of a job in a range")
    add_config_argument(backfill)
    backfill.add_argument("--job", required=True)
    backfill.add_argument("--from", dest="from_", required=True, metavar="DATE")
    backfill.add_argument("--to", required=True, metavar="DATE", help="inclusive for a date")

    status = commands.add_parser("status", help="what is exported, pending and failed")
    add_config_argument(status)
    status.add_argument("--json", action="store_true")

    check = commands.add_parser("check-config", help="validate the config; show next looks")
    add_config_argument(check)
    from .oneshot import add_arguments as add_export_arguments

    export = commands.add_parser(
        "export", help="export one ad-hoc range (polls, streams, verifies, commits)"
    )
    add_export_arguments(export)

    emulator = commands.add_parser(
        "emulator", help="run an emulated Analytics Cloud export API on loopback"
    )
    add_emulator_arguments(emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "backfill", "status", "check-config"):
        from . import commands as daemon_commands

        handler = {
            "run": daemon_commands.run,
            "backfill": daemon_commands.backfill,
            "status": daemon_commands.status,
            "check-config": daemon_commands.check_config,
        }[args.command]
        return handler(args)
    if args.command == "export":
        from .oneshot import main as export_main

        return export_main(args)
    if args.command == "emulator":
        from .emulator.cli import main as emulator_main

        return emulator_main(args)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
