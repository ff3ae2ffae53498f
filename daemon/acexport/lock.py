"""One daemon per state directory: an flock on ``<state_dir>/acexport.lock`` holding the pid."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import IO

from .errors import AcexportError, StateError

# How long a lock whose daemon is gone is waited for: the time its workers take to end.
ENDING_WORKER_S = 5.0


def make_state_dir(state_dir: Path) -> None:
    """Create the state directory private to this user (0700), whatever the umask."""
    try:
        if not state_dir.is_dir():
            state_dir.mkdir(parents=True, mode=0o700)
            state_dir.chmod(0o700)  # exactly, whatever the umask: it holds in-flight data
    except OSError as exc:
        raise StateError(
            f"cannot use the state directory {state_dir}: {exc.strerror or exc}"
        ) from None


class StateDirLocked(AcexportError):
    """Another acexport process runs on this state directory."""


def lock_path(state_dir: Path) -> Path:
    return state_dir / "acexport.lock"


def _open_lock(path: Path, flags: int) -> IO[str]:
    """The lock file, never through a symbolic link (which would be truncated)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; refusing to use it as the lock") from None
        raise
    return os.fdopen(fd, "r+" if flags & (os.O_RDWR | os.O_WRONLY) else "r")


def lock_holder(state_dir: Path) -> int | None:
    """The pid holding the state directory's lock, or None if it is free.

    Opened read-only (flock needs no more): ``status`` may run as a user who can read
    the state directory but not write it."""
    path = lock_path(state_dir)
    try:
        handle = _open_lock(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the lock file {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None


def take_lock(state_dir: Path) -> IO[str]:
    """Hold the state directory for this process; raises StateDirLocked naming the holder
    (one that is gone is waited for first, up to ``ENDING_WORKER_S``)."""
    make_state_dir(state_dir)
    path = lock_path(state_dir)
    try:
        handle = _open_lock(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise StateError(f"cannot open the lock file {path}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + ENDING_WORKER_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            # Held, its daemon gone: by a worker (daemon.processes) killed with it,
            # which lets go as it ends. A supervisor restarting at once waits for it.
            if _ended(holder) and time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            handle.close()
            raise StateDirLocked(
                f"another acexport (pid {holder}) is running on {state_dir}"
            ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _ended(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, PermissionError):
        return False  # not a pid, or another user's process: it runs
    except ProcessLookupError:
        return True
    return False


def release_lock(handle: IO[str]) -> None:
    """Let the state directory go. Unlocked before it is closed: a child forked for a
    hook's command shares the lock until it runs its program (its copy of the
    descriptor closes then), and a daemon started meanwhile found the directory held."""
    try:
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
