"""The command layer: one module per subcommand, each returning an ``ExitCode``.

``cli.py`` parses the arguments and calls ``main(args)`` of the command's
module. Everything a command shares with the others (finding and loading the
config, registering tokens for redaction, logging, signal handling, turning
errors into exit codes) is in ``common.py``. This package is the only place
that owns the process: signals, exit codes, stdout.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1  # an export failed, or the state (lock, ledger) is unusable
    USAGE = 2
    TEMPFAIL = 75  # sysexits EX_TEMPFAIL: busy now (the listen port in use); restart later
    CONFIG = 78  # sysexits EX_CONFIG: systemd's RestartPreventExitStatus= stops a restart loop
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
