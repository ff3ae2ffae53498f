"""Ports for a server a test starts later: below the kernel's ephemeral range.

A port found free can be taken before the server binds it. Drawn from the
ephemeral range (what binding port 0 gives), any outgoing connection of the
parallel tests may take it as its local port meanwhile (CI: SeaweedFS's "bind:
address already in use"); below it, only another listener could.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 10000


def free_port(twin_offset: int = 0) -> int:
    """A port free now; with ``twin_offset``, ``port + twin_offset`` is free too."""
    top = _ephemeral_start() - twin_offset - 1
    while True:
        port = random.randint(_LOWEST, top)
        if _free(port) and (not twin_offset or _free(port + twin_offset)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
