"""Where the emulator keeps rendered payloads, as AC keeps export files in storage.

A payload is rendered once, when its job is created, by a single worker thread.
One up to ``IN_MEMORY_BYTES`` stays in memory while all those held there stay
under ``MEMORY_BUDGET_BYTES`` (AC keeps every export until its range is asked
again: an emulator left running for days must not grow without bound); the rest
go to files in the storage directory, served with ``sendfile`` (``--range``) or
read chunk by chunk. At a thousand workspaces of small exports, a file each
(created, written, read back for its hash, stat'ed and opened per download) was
a quarter of the emulator's CPU, and the emulator shares its cores with the
daemon that ``bench/scale.py`` measures (issue 35).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .data import ZIP_MEMBER, PayloadSpec, Rendered, iter_blocks

IN_MEMORY_BYTES = 1 << 20
MEMORY_BUDGET_BYTES = 64 << 20


@dataclass(frozen=True)
class Stored:
    """One payload's bytes: in memory, or in a file (``path``)."""

    path: Path | None = None
    body: bytes | None = None

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.body or b"")

    def read(self) -> IO[bytes]:
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.body or b"")

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Artifact:
    """A rendered payload in storage, and its gzip copy when the emulator keeps one."""

    stored: Stored
    gzipped: Stored | None
    bytes: int
    sha256: str
    records: int


class Storage:
    """Renders payloads, one at a time, off the event loop."""

    def __init__(self, directory: Path | None, gzip_copies: bool) -> None:
        self._owned = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="acexport-emulator-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._gzip = gzip_copies
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="emulator-render")
        # The budget is taken in the render thread and given back in the loop's.
        self._lock = threading.Lock()
        self._memory_left = MEMORY_BUDGET_BYTES

    def render(
        self, job_id: str, spec: PayloadSpec, on_done: Callable[[], None]
    ) -> Future[Artifact]:
        future = self._executor.submit(self._render, job_id, spec)
        future.add_done_callback(lambda _: on_done())
        return future

    def _render(self, job_id: str, spec: PayloadSpec) -> Artifact:
        counted = Rendered()
        if spec.format == "zip":
            out = self._spill(f"{job_id}.zip")
            # Written as a stream (as Java's ZipOutputStream writes AC's): no seeking
            # back, so the member's CRC-32 and sizes follow its data in a data descriptor.
            with (
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
                archive.open(ZIP_MEMBER, "w", force_zip64=True) as member,
            ):
                for block in iter_blocks(spec, counted):
                    member.write(block)
            return Artifact(self._kept(out), None, out.size, out.sha256(), counted.records)
        out = self._spill(f"{job_id}.json")
        gz = self._spill(f"{job_id}.json.gz") if self._gzip else None
        # Level 1: AC's storage gzip is not what we measure, rendering speed is.
        compressor = gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=1) if gz else None
        for block in iter_blocks(spec, counted):
            out.write(block)
            if compressor:
                compressor.write(block)
        if compressor:
            compressor.close()
        gzipped = self._kept(gz) if gz else None
        return Artifact(self._kept(out), gzipped, out.size, out.sha256(), counted.records)

    def _spill(self, name: str) -> _Spill:
        with self._lock:
            room = min(IN_MEMORY_BYTES, self._memory_left)
        return _Spill(self.directory / name, room)

    def _kept(self, out: _Spill) -> Stored:
        stored = out.finish()
        if stored.body is not None:
            with self._lock:
                self._memory_left -= len(stored.body)
        return stored

    def discard(self, artifact: Artifact) -> None:
        for stored in filter(None, (artifact.stored, artifact.gzipped)):
            stored.discard()
            if stored.body is not None:
                with self._lock:
                    self._memory_left += len(stored.body)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


class _Spill(io.RawIOBase):
    """A write-only stream, like an HTTP response body, hashed as it is written: in
    memory up to ``room`` bytes, then in ``path`` (what memory held first)."""

    def __init__(self, path: Path, room: int) -> None:
        self._path = path
        self._room = room
        self._memory: io.BytesIO | None = io.BytesIO()
        self._file: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._digest.update(view)
        self.size += len(view)
        if self._memory is not None and self.size > self._room:
            self._file = self._path.open("wb")
            self._file.write(self._memory.getbuffer())
            self._memory = None
        if self._file is not None:
            self._file.write(view)
        else:
            assert self._memory is not None
            self._memory.write(view)
        return len(view)

    def sha256(self) -> str:
        return self._digest.hexdigest()

    def finish(self) -> Stored:
        if self._file is not None:
            self._file.close()
            return Stored(path=self._path)
        assert self._memory is not None
        return Stored(body=self._memory.getvalue())
