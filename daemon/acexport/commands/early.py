"""Signals that reach a daemon's command before its daemon is up, or after its end.

Before: noted, not fatal. The entry point (``__main__``) notes them first, before
the CLI's imports and parser and the command's module: most of a start (0.15 s of
it came before the parser was built). A SIGHUP (a reload) or SIGTERM sent then ended
the daemon by the signal (the soak saw it every run). ``handle_signals`` acts on
what was noted once the daemon is up. Nothing heavier than ``signal`` is imported
before it. After: a SIGHUP is ignored (``ignore_reloads``).
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

# The commands that start a daemon (each also notes its signals itself, when called
# without the CLI); a report like `status` keeps the default: a signal ends it.
DAEMON_COMMANDS = frozenset({"run", "demo", "backfill", "reexport"})

# What a daemon listens for: a stop (SIGTERM, SIGINT) and a reload (SIGHUP).
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

noted: set[int] = set()


def starts_daemon(argv: Sequence[str]) -> bool:
    """Whether ``argv`` (without the program) runs a daemon's command.

    Only ``--version`` and ``--help`` come before the command: it is the first word."""
    return bool(argv[:1]) and argv[0] in DAEMON_COMMANDS


def ignore_reloads() -> None:
    """A daemon's command is ending: a SIGHUP (a reload) is ignored from now on.

    There is nothing left to reload, and an ignored signal stays ignored through the
    interpreter's exit, which gives every signal with a Python handler back its
    default action: to end the process. A reload sent then ended a daemon that was
    exiting 0, 1 or 78 (a config error, which systemd's RestartPreventExitStatus=78
    must see) by the signal instead (the soak's `had_exited_-1`)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def remember_early_signals() -> None:
    """Until the daemon is up, note SIGTERM/SIGINT/SIGHUP instead of dying half-started."""
    for sig in SIGNALS:
        signal.signal(sig, lambda number, _: noted.add(number))
