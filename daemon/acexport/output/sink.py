"""From a payload to a verified temp file, handed to the output store to commit.

The bytes' work (hashing, conversion, compression, writing; see payload/)
runs in worker threads, one batch behind the network read, so disk and CPU
overlap the download instead of adding to it. Nothing reaches the output
store until the file is complete and synced; the store writes the manifest
last (see store.py). Temp files live in the process's own temp directory
(payload/tempfiles.py); those of crashed runs are cleaned on the next start.

Thread hops, not bytes, are what a small export costs (GIL hand-offs): its
last batch, finishing and a local commit run in one hop, and for a small
payload that is the only one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from ..formats import Compression, OutputFormat
from ..limits import PayloadLimits
from ..payload.parquet import require_engine
from ..payload.split import SplitPlan
from ..payload.writer import PayloadSummary, PayloadWriter
from .local import disk_error
from .manifest import Manifest, manifest_key
from .store import OutputStore

log = structlog.get_logger("acexport.sink")

_BATCH_BYTES = 1024 * 1024
_SMALL_BATCH_BYTES = 256 * 1024
_THREADS = 4


@dataclass(frozen=True)
class Finished:
    """A verified temp file, its manifest, and where it was committed (None: not yet)."""

    summary: PayloadSummary
    manifest: Manifest
    location: str | None
    kept: bool = False  # the stored file was already these bytes: it was left as it is


class Sink:
    """Writes payloads through temp files in ``temp_dir``, then into ``store``."""

    def __init__(
        self,
        temp_dir: Path,
        compression: Compression,
        store: OutputStore,
        limits: PayloadLimits | None = None,
        output_format: OutputFormat = OutputFormat.NDJSON,
    ) -> None:
        self.temp_dir = temp_dir
        self.store = store
        self.compression = compression
        self.format = output_format
        if output_format is OutputFormat.PARQUET:
            require_engine()
        self.limits = limits or PayloadLimits()
        # Several threads so one lane's fsync does not hold up another lane's download;
        # one writer's batches still run one after another (``receive`` awaits each).
        self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="acexport-sink")
        # Hashing runs beside converting and writing: both release the GIL.
        self._hasher = ThreadPoolExecutor(_THREADS, thread_name_prefix="acexport-hash")

    async def start(self, stack: AsyncExitStack) -> None:
        stack.callback(self.close)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._hasher.shutdown(wait=True)

    def new_writer(self, type_: str, split: SplitPlan | None = None) -> PayloadWriter:
        """A writer for records of ``type_`` (one file per window of ``split``, if
        given), whose temp files are created in a worker thread once past 128 KiB, or
        written whole at the end (payload/outfile.py)."""
        typed_as = type_ if self.format is OutputFormat.PARQUET else None
        return PayloadWriter(
            self.temp_dir, self.compression, self.limits, typed_as=typed_as, split=split
        )

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def _feed(self, writer: PayloadWriter, data: list[bytes], size: int) -> None:
        loop = asyncio.get_running_loop()
        if size < _SMALL_BATCH_BYTES:
            # Two thread hops cost more than hashing a small batch beside converting it.
            await loop.run_in_executor(self._executor, writer.feed_many, data)
            return
        await asyncio.gather(
            loop.run_in_executor(self._hasher, writer.digest, data),
            loop.run_in_executor(self._executor, writer.convert, data),
        )

    async def receive(self, writer: PayloadWriter, chunks: AsyncIterable[bytes]) -> None:
        """Feed ``chunks`` to ``writer`` in the worker thread, overlapping the network.

        While the thread works on one batch, the loop gathers the next (up to
        ``_BATCH_BYTES``), so a fast network hands over few large batches and
        memory stays bounded by two batches. No batch goes alone below
        ``_SMALL_BATCH_BYTES``, and the last one is fed by ``finish``.
        """
        pending: asyncio.Future[Any] | None = None
        batch: list[bytes] = []
        size = 0
        try:
            async for chunk in chunks:
                batch.append(chunk)
                size += len(chunk)
                if size < _SMALL_BATCH_BYTES:
                    continue
                if pending is not None and not pending.done() and size < _BATCH_BYTES:
                    continue
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(self._feed(writer, batch, size))
                batch, size = [], 0
            if pending is not None:
                await pending
                pending = None
            writer.defer(batch)
            batch = []
        except OSError as exc:
            raise disk_error("writing", self.temp_dir, exc) from None
        finally:
            if pending is not None:
                # Let the thread finish the batch it holds before anyone touches the writer.
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
            # A cut download keeps what arrived: resuming asks for the bytes after it.
            if batch:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._feed(writer, batch, size))

    async def finish(
        self,
        writer: PayloadWriter,
        key: PurePosixPath,
        manifest_for: Callable[[PayloadSummary], Manifest],
        stored_sha256: str | None = None,
    ) -> Finished:
        """Verify and close the temp file; a store that can commits it in the same hop.

        Otherwise (``location`` None) the caller commits with ``commit``, retrying
        while the store is unavailable. A file of the same bytes as the stored one
        (``stored_sha256``: a restatement that changed nothing) is not written again.
        """
        (finished,) = await self.finish_parts(
            writer, [key], lambda _, summary: manifest_for(summary), stored_sha256
        )
        return finished

    async def finish_parts(
        self,
        writer: PayloadWriter,
        keys: list[PurePosixPath],
        manifest_for: Callable[[int, PayloadSummary], Manifest],
        stored_sha256: str | None = None,
    ) -> list[Finished]:
        """``finish`` for a split writer: a file per window, committed in order (each
        with its manifest last, so a crash between two leaves whole windows only)."""
        try:
            finished: list[Finished] = await self._run(
                self._finish, writer, keys, manifest_for, stored_sha256
            )
        except OSError as exc:
            raise disk_error("finishing", self.temp_dir, exc) from None
        return finished

    def _finish(
        self,
        writer: PayloadWriter,
        keys: list[PurePosixPath],
        manifest_for: Callable[[int, PayloadSummary], Manifest],
        stored_sha256: str | None,
    ) -> list[Finished]:
        summaries = writer.finish_parts()
        done = []
        for index, (summary, key) in enumerate(zip(summaries, keys, strict=True)):
            manifest = manifest_for(index, summary)
            if stored_sha256 is not None and summary.file_sha256 == stored_sha256:
                summary.path.unlink(missing_ok=True)
                stored = self.store.location(manifest_key(key))
                done.append(Finished(summary, manifest, stored, kept=True))
                continue
            done.append(
                Finished(summary, manifest, self.store.commit_here(summary.path, key, manifest))
            )
        return done

    async def discard(self, writer: PayloadWriter) -> None:
        await self._run(writer.discard)

    async def commit(self, summary: PayloadSummary, key: PurePosixPath, manifest: Manifest) -> str:
        """Hand the finished temp file to the output store; returns the manifest's location."""
        return await self.store.commit(summary.path, key, manifest)
