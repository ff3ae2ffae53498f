"""acexport's temp files: named so they can be told apart, created never through a link."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import IO

# Every temp file acexport makes is named so, and only such names are ever cleaned up.
TEMP_NAME = re.compile(r"acexport-(\d+)-[0-9a-f]{16}\.(part|spool|manifest)")


def temp_stem() -> str:
    """A fresh temp-file stem: this pid (for cleanup) and 64 unguessable bits."""
    return f"acexport-{os.getpid()}-{secrets.token_hex(8)}"


def create_new(path: Path, buffering: int = -1, dir_fd: int | None = None) -> IO[bytes]:
    """Open a file that must not exist yet, never through a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o666, dir_fd=dir_fd), "wb", buffering=buffering)
