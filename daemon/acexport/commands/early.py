"""Signals that reach a daemon's command while it is still starting: noted, not fatal.

The entry point (``__main__``) installs this first, before the CLI's imports and
parser and the command's module: most of a start (0.15 s of it came before the
parser was built). A SIGHUP (a reload) or SIGTERM sent then ended the daemon by the
signal (the soak saw it every run). ``handle_signals`` acts on what was noted once
the daemon is up. Nothing heavier than ``signal`` is imported before it.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

# The commands that start a daemon (each also notes its signals itself, when called
# without the CLI); a report like `status` keeps the default: a signal ends it.
DAEMON_COMMANDS = frozenset({"run", "demo", "backfill", "reexport"})

noted: set[int] = set()


def remember_early_signals_of(argv: Sequence[str]) -> None:
    """``remember_early_signals`` if ``argv`` (without the program) starts a daemon.

    Only ``--version`` and ``--help`` come before the command: it is the first word."""
    if argv[:1] and argv[0] in DAEMON_COMMANDS:
        remember_early_signals()


def remember_early_signals() -> None:
    """Until the daemon is up, note SIGTERM/SIGINT/SIGHUP instead of dying half-started."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _: noted.add(number))
