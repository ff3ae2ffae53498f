"""``acexport`` and ``python -m acexport``: the CLI, with a starting daemon's signals
noted before its imports (see commands/early.py)."""

import sys

from .commands.early import remember_early_signals_of


def main() -> int:
    remember_early_signals_of(sys.argv[1:])
    from .cli import main as cli_main  # most of a start: after the signals are noted

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
