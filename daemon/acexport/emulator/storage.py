"""Where the emulator keeps rendered payloads, as AC keeps export files in storage.

A payload is rendered once, when its job is created, by a single worker thread.
One up to ``IN_MEMORY_BYTES`` stays in memory; a larger one goes to a file in the
storage directory, from which it is served with ``sendfile`` (``--range``) or
read chunk by chunk. At a thousand workspaces of small exports, a file each
(created, written, read back for its hash, stat'ed and opened per download) was
half of the emulator's CPU, and the emulator shares its cores with the daemon
that ``bench/scale.py`` measures (issue 35).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .data import ZIP_MEMBER, PayloadSpec, Rendered, iter_blocks

IN_MEMORY_BYTES = 1 << 20


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

    def render(
        self, job_id: str, spec: PayloadSpec, on_done: Callable[[], None]
    ) -> Future[Artifact]:
        future = self._executor.submit(self._render, job_id, spec)
        future.add_done_callback(lambda _: on_done())
        return future

    def _render(self, job_id: str, spec: PayloadSpec) -> Artifact:
        counted = Rendered()
        if spec.format == "zip":
            out = _Spill(self.directory / f"{job_id}.zip")
            # Written as a stream (as Java's ZipOutputStream writes AC's): no seeking
            # back, so the member's CRC-32 and sizes follow its data in a data descriptor.
            with (
                zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
                archive.open(ZIP_MEMBER, "w", force_zip64=True) as member,
            ):
                for block in iter_blocks(spec, counted):
                    member.write(block)
            return Artifact(out.finish(), None, out.size, out.sha256(), counted.records)  # no gzip
        out = _Spill(self.directory / f"{job_id}.json")
        gz = _Spill(self.directory / f"{job_id}.json.gz") if self._gzip else None
        # Level 1: AC's storage gzip is not what we measure, rendering speed is.
        compressor = gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=1) if gz else None
        for block in iter_blocks(spec, counted):
            out.write(block)
            if compressor:
                compressor.write(block)
        if compressor:
            compressor.close()
        gzipped = gz.finish() if gz else None
        return Artifact(out.finish(), gzipped, out.size, out.sha256(), counted.records)

    def discard(self, artifact: Artifact) -> None:
        artifact.stored.discard()
        if artifact.gzipped is not None:
            artifact.gzipped.discard()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


class _Spill(io.RawIOBase):
    """A write-only stream, like an HTTP response body, hashed as it is written: in
    memory up to ``IN_MEMORY_BYTES``, then in ``path`` (what memory held first)."""

    def __init__(self, path: Path) -> None:
        self._path = path
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
        if self._memory is not None and self.size > IN_MEMORY_BYTES:
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
