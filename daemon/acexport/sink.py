"""From a payload in a temp file to a committed file: fsync -> rename -> manifest.

The bytes' work (hashing, conversion, compression, writing; see payload.py)
runs in worker threads, one batch behind the network read, so disk and CPU
overlap the download instead of adding to it. Nothing appears in the output
tree until the file is complete and synced; the manifest, written last, marks
completion. Temp files of crashed runs are cleaned on the next start.

Files are only ever created new (``O_EXCL|O_NOFOLLOW``, unguessable names),
and directories below the output root are walked by file descriptor without
following links, so a link planted in the output tree cannot redirect a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import AsyncIterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from .errors import SinkError
from .payload import (
    TEMP_NAME,
    Compression,
    PayloadLimits,
    PayloadSummary,
    PayloadWriter,
    create_new,
    temp_stem,
)

log = structlog.get_logger("acexport.sink")

_BATCH_BYTES = 2 * 1024 * 1024
_THREADS = 4


@dataclass(frozen=True)
class Manifest:
    """The completion marker written beside each data file (design section 5).

    Its camelCase field names are AC's, and the contract with readers of the output.
    """

    workspace: str
    type: str
    fromDate: str
    toDate: str
    createdDate: str | None
    downloadedAt: str
    file: str
    records: int
    payload_bytes: int
    payload_sha256: str
    format: str
    compression: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def _sink_error(action: str, path: Path, exc: OSError) -> SinkError:
    hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
    return SinkError(f"{action} {path} failed: {exc.strerror or exc}{hint}")


class Sink:
    """Writes payloads through temp files in ``temp_dir`` into their final place."""

    def __init__(
        self, temp_dir: Path, compression: Compression, limits: PayloadLimits | None = None
    ) -> None:
        self.temp_dir = temp_dir
        self.compression = compression
        self.limits = limits or PayloadLimits()
        # Several threads so one lane's fsync does not hold up another lane's download;
        # one writer's batches still run one after another (``receive`` awaits each).
        self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="acexport-sink")
        # Hashing runs beside converting and writing: both release the GIL.
        self._hasher = ThreadPoolExecutor(_THREADS, thread_name_prefix="acexport-hash")

    async def start(self, stack: AsyncExitStack) -> None:
        """Clean temp files of crashed runs (the caller holds the state dir's lock)."""
        stack.callback(self.close)
        removed = await asyncio.to_thread(self.clean_stale, everything=True)
        if removed:
            log.info("stale_temp_files_removed", count=removed)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._hasher.shutdown(wait=True)

    def prepare(self) -> None:
        try:
            self.temp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _sink_error("creating", self.temp_dir, exc) from None

    def new_writer(self) -> PayloadWriter:
        self.prepare()
        try:
            return PayloadWriter(self.temp_dir, self.compression, self.limits)
        except OSError as exc:
            raise _sink_error("creating a temp file in", self.temp_dir, exc) from None

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _feed(self, writer: PayloadWriter, data: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            loop.run_in_executor(self._hasher, writer.digest, data),
            loop.run_in_executor(self._executor, writer.convert, data),
        )

    async def receive(self, writer: PayloadWriter, chunks: AsyncIterable[bytes]) -> None:
        """Feed ``chunks`` to ``writer`` in the worker thread, overlapping the network.

        While the thread works on one batch, the loop gathers the next (up to
        ``_BATCH_BYTES``), so a fast network hands over few large batches and
        memory stays bounded by two batches.
        """
        pending: asyncio.Future[Any] | None = None
        batch: list[bytes] = []
        size = 0
        try:
            async for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if pending is not None and not pending.done() and size < _BATCH_BYTES:
                    continue
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(self._feed(writer, batch))
                batch, size = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                data, batch = batch, []
                await self._feed(writer, data)
        except OSError as exc:
            raise _sink_error("writing", self.temp_dir, exc) from None
        finally:
            if pending is not None:
                # Let the thread finish the batch it holds before anyone touches the writer.
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            # A cut download keeps what arrived: resuming asks for the bytes after it.
            if batch:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._feed(writer, batch))

    async def finish(self, writer: PayloadWriter) -> PayloadSummary:
        try:
            summary: PayloadSummary = await self._run(writer.finish)
        except OSError as exc:
            raise _sink_error("finishing", self.temp_dir, exc) from None
        return summary

    async def discard(self, writer: PayloadWriter) -> None:
        await self._run(writer.discard)

    async def commit(
        self, summary: PayloadSummary, root: Path, destination: Path, manifest: Manifest
    ) -> Path:
        """Move the data into place under ``root``, then write its manifest.

        Returns the manifest path. ``root`` may itself be a link; nothing below it is.
        """
        path: Path = await self._run(
            _commit, summary.path, root, destination, manifest, self.temp_dir
        )
        return path

    def clean_stale(self, *, everything: bool) -> int:
        """Remove acexport's temp files of crashed runs: all (lock holder) or of dead pids."""
        removed = 0
        if not self.temp_dir.is_dir():
            return 0
        for path in self.temp_dir.iterdir():
            match = TEMP_NAME.fullmatch(path.name)
            if match is None or (not everything and _alive(int(match.group(1)))):
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                removed += 1
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


class _LinkInOutputTree(OSError):
    """A symbolic link (or non-directory) where the output tree needs a directory."""


def _open_directory(root: Path, directory: Path) -> int:
    """A descriptor of ``directory``, created as needed, reached from ``root`` without links."""
    try:
        relative = directory.relative_to(root)
    except ValueError:
        raise _LinkInOutputTree(errno.EXDEV, f"{directory} is outside {root}") from None
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise _LinkInOutputTree(
                    exc.errno, f"refusing {part!r} in the output tree: a link or not a directory"
                ) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def _commit(data: Path, root: Path, destination: Path, manifest: Manifest, temp_dir: Path) -> Path:
    manifest_path = destination.with_name(destination.name + ".manifest.json")
    staged = temp_dir / f"{temp_stem()}.manifest"
    dir_fd: int | None = None
    try:
        dir_fd = _open_directory(root, destination.parent)
        _place(data, destination.name, dir_fd)
        os.fsync(dir_fd)  # the data's name is durable before a manifest claims it
        with create_new(staged) as handle:
            handle.write(manifest.to_json().encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        _place(staged, manifest_path.name, dir_fd)
        os.fsync(dir_fd)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise _sink_error("committing", destination, exc) from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return manifest_path
