"""One daemon per state directory: an flock on ``<state_dir>/acexport.lock`` holding the pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from .errors import AcexportError


class StateDirLocked(AcexportError):
    """Another acexport process runs on this state directory."""


def lock_path(state_dir: Path) -> Path:
    return state_dir / "acexport.lock"


def lock_holder(state_dir: Path) -> int | None:
    """The pid holding the state directory's lock, or None if it is free."""
    path = lock_path(state_dir)
    try:
        handle = path.open("r+")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def take_lock(state_dir: Path) -> IO[str]:
    """Hold the state directory for this process; raises StateDirLocked naming the holder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = lock_path(state_dir).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StateDirLocked(f"another acexport (pid {holder}) is running on {state_dir}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
