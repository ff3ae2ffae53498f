"""The local output store: a directory, written by rename and fsync.

Files are only ever created new (``O_EXCL|O_NOFOLLOW``, unguessable names),
and directories below the output root are walked by file descriptor without
following links, so a link planted in the output tree cannot redirect a write.
The data file's name is durable before its manifest is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path, PurePosixPath

from ..errors import SinkError
from ..payload.tempfiles import create_new, temp_stem, write_new
from .manifest import Manifest, manifest_key
from .store import SMALL_MAX, with_manifests


def disk_error(action: str, path: Path, exc: OSError) -> SinkError:
    hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
    return SinkError(f"{action} {path} failed: {exc.strerror or exc}{hint}")


class LocalStore:
    """Data files under ``root``; manifests staged in ``temp_dir`` then renamed beside them.

    ``root`` may itself be a link; nothing below it is followed.
    """

    def __init__(self, root: Path, temp_dir: Path) -> None:
        self.root = root.absolute()
        self.temp_dir = temp_dir
        # ``location`` by text: a joined Path is ~5 us, asked several times an export.
        self._prefix = str(self.root).rstrip("/") + "/"

    def path_of(self, key: PurePosixPath) -> Path:
        return self.root / key

    def location(self, key: PurePosixPath) -> str:
        return self._prefix + str(key)

    def describe(self) -> str:
        return str(self.root)

    async def start(self, stack: AsyncExitStack) -> None:
        """Nothing to connect to; a missing root is created on the first commit."""

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        return await asyncio.to_thread(self._commit, data, key, manifest)

    def commit_here(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        """A local commit is file work: done in the worker thread that finished the file."""
        return self._commit(data, key, manifest)

    def _commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        return str(_commit(data, self.root, key, manifest, self.temp_dir))

    async def abort_stale_uploads(
        self, is_ours: Callable[[str], bool], initiated_before: datetime
    ) -> int:
        """A directory has no uploads in flight: temp files live in the state dir."""
        return 0

    async def stored_under(self, prefix: str) -> dict[PurePosixPath, int]:
        return with_manifests(await self.listed_under(prefix), prefix)

    async def listed_under(self, prefix: str) -> dict[str, int]:
        return await asyncio.to_thread(self._listed_under, prefix)

    async def listed_under_each(self, prefixes: Sequence[str]) -> list[dict[str, int]]:
        return await asyncio.to_thread(lambda: [self._listed_under(p) for p in prefixes])

    def _listed_under(self, prefix: str) -> dict[str, int]:
        # Only the directories that can hold a name starting with ``prefix`` are read,
        # by ``scandir``: no ``Path`` per file, no extra ``lstat`` per directory (each
        # system call of this thread was a turn at the GIL the event loop waited for:
        # a job's look and every snapshot's prune list, ten listings a job).
        sizes: dict[str, int] = {}
        top = prefix.rpartition("/")[0]
        if top and {"", ".", ".."} & set(top.split("/")):
            # No key is absolute, climbs, or has an empty or "." part (``render_path``
            # refuses or normalises each): scanning "./" listed "./a" (hypothesis).
            return sizes
        pending = [top]
        while pending:
            relative = pending.pop()
            try:
                with os.scandir(self.root / relative) as scan:
                    entries = list(scan)
            except OSError:  # not made yet, or gone meanwhile
                continue
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir():  # a link to a directory too: neither followed nor listed
                    inner = name + "/"
                    if not entry.is_symlink() and (
                        inner.startswith(prefix) or prefix.startswith(inner)
                    ):
                        pending.append(name)
                elif name.startswith(prefix):
                    with contextlib.suppress(OSError):  # gone meanwhile
                        sizes[name] = entry.stat(follow_symlinks=False).st_size
        return sizes

    async def read_small(self, key: PurePosixPath) -> bytes | None:
        return await asyncio.to_thread(self._read_small, key)

    def _read_small(self, key: PurePosixPath) -> bytes | None:
        try:
            fd = os.open(self.path_of(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise disk_error("reading", self.path_of(key), exc) from None
        with os.fdopen(fd, "rb") as handle:
            return handle.read(SMALL_MAX + 1)

    @contextlib.asynccontextmanager
    async def local_copy(self, key: PurePosixPath) -> AsyncIterator[Path | None]:
        path = self.path_of(key)
        yield path if path.is_file() and not path.is_symlink() else None

    async def write_small(self, key: PurePosixPath, data: bytes) -> None:
        await asyncio.to_thread(self._write_small, key, data)

    def _write_small(self, key: PurePosixPath, data: bytes) -> None:
        staged = self.temp_dir / f"{temp_stem()}.small"
        dir_fd: int | None = None
        try:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
            dir_fd = _open_directory(self.root, key.parent)
            write_new(staged, data)
            _place(staged, key.name, dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise disk_error("writing", self.path_of(key), exc) from None
        finally:
            if dir_fd is not None:
                os.close(dir_fd)

    async def delete(self, key: PurePosixPath) -> None:
        await asyncio.to_thread(self._delete, key)

    async def delete_many(self, keys: Sequence[PurePosixPath]) -> None:
        def delete_all() -> None:  # in one thread hop, not one a file
            for key in keys:
                self._delete(key)

        await asyncio.to_thread(delete_all)

    def _delete(self, key: PurePosixPath) -> None:
        path = self.path_of(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise disk_error("deleting", path, exc) from None
        for parent in key.parents:
            if parent == PurePosixPath():
                break
            try:
                (self.root / parent).rmdir()  # only if empty
            except OSError:
                break


class _LinkInOutputTree(OSError):
    """A symbolic link (or non-directory) where the output tree needs a directory."""


def _open_directory(root: Path, relative: PurePosixPath) -> int:
    """A descriptor of ``root/relative``, created as needed, reached without links.

    Each directory is opened first and made only if missing: it exists for all but
    the first file of a day, and each system call is a turn at the GIL."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(root, flags)
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, flags)
    try:
        for part in relative.parts:
            try:
                child = _open_child(part, fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # made meanwhile: as good
                    os.mkdir(part, 0o777, dir_fd=fd)
                child = _open_child(part, fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child(part: str, dir_fd: int) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(part, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _NOT_A_DIRECTORY:
            raise
        raise _link_refused(exc.errno, part) from None


_NOT_A_DIRECTORY = (errno.ELOOP, errno.ENOTDIR)  # opened with O_NOFOLLOW|O_DIRECTORY


def _link_refused(err: int, part: str) -> _LinkInOutputTree:
    return _LinkInOutputTree(
        err, f"refusing {part!r} in the output tree: a link or not a directory"
    )


def _place(source: Path, name: str, dir_fd: int) -> None:
    """Rename ``source`` to ``name`` in ``dir_fd``; across filesystems, copy beside it first."""
    try:
        os.replace(source, name, dst_dir_fd=dir_fd)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    staging = f".{name}.{secrets.token_hex(8)}.tmp"
    try:
        with source.open("rb") as src, create_new(Path(staging), dir_fd=dir_fd) as dst:
            shutil.copyfileobj(src, dst, 4 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(staging, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging, dir_fd=dir_fd)
    source.unlink(missing_ok=True)


def _commit(data: Path, root: Path, key: PurePosixPath, manifest: Manifest, temp_dir: Path) -> Path:
    destination = root / key
    staged = temp_dir / f"{temp_stem()}.manifest"
    try:
        if _compiled is None or not _commit_in_one_call(data, root, key, manifest, staged):
            _commit_step_by_step(data, root, key, manifest, staged)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise disk_error("committing", destination, exc) from None
    return root / manifest_key(key)


def _commit_step_by_step(
    data: Path, root: Path, key: PurePosixPath, manifest: Manifest, staged: Path
) -> None:
    dir_fd = _open_directory(root, key.parent)
    try:
        _place(data, key.name, dir_fd)
        os.fsync(dir_fd)  # the data's name is durable before a manifest claims it
        write_new(staged, manifest.to_json())
        _place(staged, manifest_key(key).name, dir_fd)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _commit_in_one_call(
    data: Path, root: Path, key: PurePosixPath, manifest: Manifest, staged: Path
) -> bool:
    """``_commit_step_by_step`` in C, with the GIL released once (``_localcommit.c``);
    False where only the Python steps can (a root to make, another filesystem)."""
    assert _compiled is not None
    parts = key.parent.parts
    failed = _compiled.commit(
        root, parts, data, key.name, staged, manifest.to_json(), manifest_key(key).name
    )
    if failed is None:
        return True
    err, step, index = failed
    if step == _compiled.STEP_ROOT and err == errno.ENOENT:
        return False  # made by the steps in Python, as exist_ok as ever
    if step == _compiled.STEP_PLACE and err == errno.EXDEV:
        return False  # copied beside it by the steps in Python
    if step == _compiled.STEP_PART and err in _NOT_A_DIRECTORY:
        raise _link_refused(err, parts[index])
    raise OSError(err, os.strerror(err))


try:  # built at install where a C compiler is found (setup.py)
    from . import _localcommit as _compiled
except ImportError:  # pragma: no cover - the Python steps do the same, GIL turn by turn
    _compiled = None  # type: ignore[assignment]

COMPILED = _compiled is not None
