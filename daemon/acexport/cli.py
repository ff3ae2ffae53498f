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

    from .emulator.cli import add_arguments as add_emulator_arguments
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
    if args.command == "export":
        from .oneshot import main as export_main

        return export_main(args)
    if args.command == "emulator":
        from .emulator.cli import main as emulator_main

        return emulator_main(args)
    return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
