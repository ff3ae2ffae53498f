"""``acexport`` and ``python -m acexport``: the CLI, with a daemon command's signals
noted before its imports and ignored after its end (see commands/early.py)."""

import contextlib
import os
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
        _flush_or_drop_the_log()


def _flush_or_drop_the_log() -> None:
    """A log nobody reads any more (ops/logging.py: DroppedLines) still holds what it
    refused; flushed as the interpreter ends, it failed again, and a run whose exports
    all worked exited 120. It goes to /dev/null instead."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
