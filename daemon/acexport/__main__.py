"""``acexport`` and ``python -m acexport``: the CLI, with a daemon command's signals
noted before its imports and ignored after its end (see commands/early.py)."""

import sys

from .commands.early import ignore_reloads, remember_early_signals, starts_daemon


def main() -> int:
    daemon = starts_daemon(sys.argv[1:])
    if daemon:
        remember_early_signals()
    from .cli import main as cli_main  # most of a start: after the signals are noted

    try:
        return cli_main()
    finally:
        if daemon:
            ignore_reloads()


if __name__ == "__main__":
    sys.exit(main())
