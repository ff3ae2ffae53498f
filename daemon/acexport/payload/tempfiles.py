"""acexport's temp files: named so they can be told apart, created never through a link,
each process's in a directory of its own that it holds while it lives.

Several processes may share ``<state_dir>/tmp``: the daemon, an ``acexport
export --config`` run beside it, containers sharing a volume. Each claims a
subdirectory holding an flock'd ``lock`` file (``claim_temp_dir``); whoever
starts removes the subdirectories whose lock nobody holds (``clean_abandoned``).
A lock says whether its owner lives, where a pid cannot (PID namespaces).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import IO

# Every temp file acexport makes is named so, and only such names are ever cleaned up.
# .parquet.part: a Parquet file being written; .engine: DuckDB's spill directory.
TEMP_NAME = re.compile(
    # ``.3.part``: the file of the fourth window of a split request (payload/split.py).
    r"acexport-(\d+)-[0-9a-f]{16}(?:\.\d+)?\.(part|spool|manifest|small|parquet\.part|engine)"
)
_OWN_DIR = re.compile(r"proc-[0-9a-f]{16}")
_LOCK = "lock"


def temp_stem() -> str:
    """A fresh temp-file stem: this pid (for cleanup) and 64 bits, never the same twice
    in a process: a random start, counted on (reading the kernel's randomness for each
    name cost 0.9 s of 6,000 exports, mostly on the event loop: bench/scale.py). Names
    need not be unguessable: the directory is the process's own, 0700, and files are
    created with O_EXCL|O_NOFOLLOW."""
    return f"acexport-{os.getpid()}-{next(_STEMS) & _STEM_MASK:016x}"


_STEM_MASK = (1 << 64) - 1
_STEMS = itertools.count(secrets.randbits(64))


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def create_new(path: Path, buffering: int = -1, dir_fd: int | None = None) -> IO[bytes]:
    """Open a file that must not exist yet, never through a symbolic link."""
    return os.fdopen(os.open(path, _NEW_FILE, 0o666, dir_fd=dir_fd), "wb", buffering=buffering)


def write_new(path: Path, data: bytes, sync: bool = True) -> None:
    """A small file that must not exist yet, written whole and synced (``sync``): in
    one C call without the GIL where built (``_newfile.c``), else ``create_new`` with
    no file object. Each system call a worker thread makes is a turn at the GIL: at
    a thousand lanes, the sink's threads waited for those turns more than they worked."""
    if _compiled is not None:
        _compiled.write_new(path, data, sync)
        return
    fd = os.open(path, _NEW_FILE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        path.unlink(missing_ok=True)  # no half file left behind, as in C
        raise
    finally:
        os.close(fd)


try:  # built at install where a C compiler is found (setup.py)
    from . import _newfile as _compiled
except ImportError:  # pragma: no cover - the same calls from Python, a GIL turn each
    _compiled = None  # type: ignore[assignment]

COMPILED = _compiled is not None


class TempDir:
    """This process's temp directory under a shared root, held by an flock."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path = path
        self._lock_fd = lock_fd

    def release(self) -> None:
        """At exit: what is left here is ours and unfinished; the directory goes."""
        _remove(self.path)
        os.close(self._lock_fd)


def claim_temp_dir(root: Path) -> TempDir:
    """A new subdirectory of ``root`` (created 0700), locked for this process's life."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = root / f"proc-{secrets.token_hex(8)}"
    path.mkdir(mode=0o700)
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new: nobody else can hold it
    return TempDir(path, fd)


def clean_abandoned(root: Path) -> int:
    """Remove the temp files of processes that are gone; how many files went.

    A subdirectory whose lock can be taken has no live owner. Loose temp files in
    ``root`` itself (acexport before per-process directories) go when their pid is
    not alive here.
    """
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in root.iterdir():
            if _OWN_DIR.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                removed += _take_over(entry)
            elif (match := TEMP_NAME.fullmatch(entry.name)) and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
    return removed


def _take_over(directory: Path) -> int:
    try:
        fd = os.open(directory / _LOCK, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None  # its owner died before locking, or while releasing
    except OSError:
        return 0
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return 0  # alive
                raise
        return _remove(directory)
    finally:
        if fd is not None:
            os.close(fd)


def _remove(directory: Path) -> int:
    """Our temp files in ``directory``, its lock, then the directory if that empties it."""
    removed = 0
    for entry in list(directory.iterdir()):
        if TEMP_NAME.fullmatch(entry.name) or entry.name == _LOCK:
            with contextlib.suppress(OSError):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += entry.name != _LOCK
    with contextlib.suppress(OSError):
        directory.rmdir()
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
