"""Signals that reach a daemon's command while it is still starting: noted, not fatal.

The CLI installs this before it imports the command's module, whose imports are most
of a start: a SIGHUP (a reload) or SIGTERM sent then ended the daemon by the signal
(the soak saw it every run). ``handle_signals`` acts on what was noted once the
daemon is up.
"""

from __future__ import annotations

import signal

noted: set[int] = set()


def remember_early_signals() -> None:
    """Until the daemon is up, note SIGTERM/SIGINT/SIGHUP instead of dying half-started."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _: noted.add(number))
