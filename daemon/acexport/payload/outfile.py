"""The output temp file: compressed or not, written by a stage of its own (stage.py)."""

from __future__ import annotations

import ctypes
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar, cast

from ..formats import Compression
from . import codec
from .records import Utf8Check
from .stage import HANDOFF_BYTES, THREAD_AFTER_BYTES, Chunk, Handoff, Stage
from .tempfiles import create_new, write_new

# A split's zstd windows compress their lines a frame at a time with one shared
# context: this much buffered per window (100 windows: 25 MB, where a zstd context
# each took a 100-window split to 156 MB and four lanes of them to 469 MB). The cost:
# frames start without history, 6.4 MB instead of 5.2 (512 KB frames: 6.3); gzip's
# contexts are small (ISA-L), and stay one a window (python bench/split_memory.py).
FRAME_BYTES = 256 << 10


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which os does not expose; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


# Asking the kernel to start writing each MiB back at once (SYNC_FILE_RANGE_WRITE,
# which does not wait) keeps dirty pages few: writes no longer stall on dirty-page
# throttling, and the final fsync finds almost nothing left to do. Measured here:
# 1 GiB written and fsynced in 0.4 s steadily, against 0.6 to 3.2 s without. Per MiB,
# not per batch: a split's windows get batches of ~400 KB, and each ask is a system
# call and a turn at the GIL (2,400 of them for 1 GiB over 31 windows, now ~1,000). A
# smaller file is fsynced as soon as it is written, and never asks.
_sync_file_range = _writeback_starter()
_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_BYTES = 1 << 20
_IOV_MAX = 1024

T = TypeVar("T")
# A file this small is held in memory and written at close in one call (write_new):
# most of a thousand lanes' exports are, and each system call a worker thread makes
# is a turn at the GIL.
_HELD_BYTES = 128 << 10


class OutputFile:
    """The NDJSON output temp file, compressed (gzip, zstd) or not.

    Compressing, checking, hashing and writing run in a writer thread, so they
    overlap whatever produces the lines (inflating a ZIP member, splitting them).
    """

    def __init__(
        self,
        path: Path,
        compression: Compression,
        *,
        intermediate: bool = False,
        writer: Stage | None = None,
        frames: codec.FrameCompressor | None = None,
        count_lines: bool = True,
    ) -> None:
        self.path = path
        # Lines written, counted in the writer thread (a split counts its own).
        self._count_lines = count_lines
        self.lines = 0
        # One of a split's files shares the split's writer thread (a thread and queue
        # per window would multiply memory by windows) and hands over a frame's worth
        # of its lines at a time; a file of its own starts its thread once it is big.
        self._handoff = (
            Handoff(writer, inline_bytes=0, batch_bytes=FRAME_BYTES)
            if writer is not None
            else Handoff(
                Stage("acexport-write"),
                inline_bytes=THREAD_AFTER_BYTES,
                batch_bytes=HANDOFF_BYTES,
            )
        )
        # Read back and deleted by this process (the JSON Lines a Parquet file is made
        # from): no manifest names its hash, and a crash discards it, so it is neither
        # hashed nor synced.
        self._intermediate = intermediate
        self._file: IO[bytes] | None = None  # created once past _HELD_BYTES, or by ``open``
        self._held: list[bytes] | None = []  # the file's bytes until it is created
        self._compressor: codec.Compressor | None = None
        # zstd in frames through a shared context (a split's windows), lines buffered.
        self._frames = frames if compression == Compression.ZSTD else None
        self._utf8: Utf8Check | None = None  # the lines checked as they are written
        self._framing: list[Chunk] = []
        self._framing_bytes = 0
        if compression == Compression.GZIP:
            self._compressor = codec.gzip_compressor()
        elif compression == Compression.ZSTD and self._frames is None:
            self._compressor = codec.zstd_compressor()
        self._written = 0  # the file's size, held bytes included
        self._in_file = 0  # of which written to it
        self._written_back = 0  # of which the kernel was asked to write back
        # The file as written (the manifest's file_sha256): hashed in the writer thread.
        self._sha = hashlib.sha256()

    def open(self) -> None:
        """Create the temp file (and its directory, if someone removed it), with what
        was held so far."""
        if self._file is None:
            self._file = self._in_its_directory(lambda: create_new(self.path, buffering=0))
            held, self._held = self._held, None
            if held:
                self._write_out(held)

    def _in_its_directory(self, create: Callable[[], T]) -> T:
        """``create()`` the file; if someone removed its directory, made again first."""
        try:
            return create()
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return create()

    def write_many(self, chunks: Sequence[Chunk]) -> None:
        """Hand the chunks (in order) to the writer thread; memory stays bounded."""
        self._handoff.write_many(self._write, chunks)

    def check_utf8(self) -> None:
        """Check every line written from now on as UTF-8 (in the writer's thread)."""
        self._utf8 = Utf8Check()

    def _write(self, chunks: Sequence[Chunk]) -> None:
        """Write the chunks in order, without joining them first (one copy fewer)."""
        if self._utf8 is not None:
            for chunk in chunks:
                self._utf8.feed(chunk)
        if self._count_lines:
            self.lines += sum(bytes(chunk).count(b"\n") for chunk in chunks)
        if self._frames is not None:
            chunks = self._framed(chunks)
        elif self._compressor is not None:
            chunks = [self._compressor.compress(chunk) for chunk in chunks]
        self._emit(chunks)

    def _emit(self, chunks: Sequence[Chunk]) -> None:
        """Write what is to be in the file, as it is (held while the file is small)."""
        chunks = [chunk for chunk in chunks if chunk]
        if not chunks:
            return
        if not self._intermediate:
            for chunk in chunks:
                self._sha.update(chunk)
        total = sum(map(len, chunks))
        self._written += total
        if self._held is not None and self._written <= _HELD_BYTES:
            self._held += map(bytes, chunks)  # a copy: a chunk may be a view of a buffer
            return
        self.open()
        self._write_out(chunks)

    def _write_out(self, chunks: Sequence[Chunk]) -> None:
        """Append the chunks to the file."""
        assert self._file is not None
        fd = self._file.fileno()
        total = sum(map(len, chunks))
        done = 0
        for start in range(0, len(chunks), _IOV_MAX):
            done += os.writev(fd, chunks[start : start + _IOV_MAX])
        if done < total:
            # A short write (file size limit, full disk): write the rest plainly, so
            # the error, if any, is raised with its errno.
            self._file.write(b"".join(chunks)[done:])
        self._in_file += total
        unasked = self._in_file - self._written_back
        if _sync_file_range is not None and unasked >= _WRITEBACK_BYTES:
            _sync_file_range(fd, self._written_back, unasked, _SYNC_FILE_RANGE_WRITE)
            self._written_back = self._in_file

    def _framed(self, chunks: Sequence[Chunk], last: bool = False) -> Sequence[Chunk]:
        """The chunks buffered into whole zstd frames of about FRAME_BYTES."""
        assert self._frames is not None
        self._framing += chunks
        self._framing_bytes += sum(map(len, chunks))
        if self._framing_bytes < FRAME_BYTES and not last:
            return []
        frame = self._frames.compress(b"".join(self._framing))
        self._framing, self._framing_bytes = [], 0
        return [frame]

    def close(self) -> None:
        self._handoff.drain(self._write)
        if self._utf8 is not None:
            self._utf8.finish()
        if self._frames is not None:
            self._emit(self._framed([], last=True))  # the last frame (an empty one at least)
        if self._compressor is not None:
            self._emit([self._compressor.flush()])
            self._compressor = None
        if self._held is not None:
            # Small (an export with no records too: an empty file): in one call.
            data, self._held = b"".join(self._held), None
            self._in_its_directory(lambda: write_new(self.path, data, not self._intermediate))
            return
        assert self._file is not None
        if not self._intermediate:
            os.fsync(self._file.fileno())
        self._file.close()

    @property
    def size(self) -> int:
        """Bytes written so far (all of them, once closed)."""
        return self._written

    def sha256(self) -> str:
        """The SHA-256 of what was written, once closed."""
        return self._sha.hexdigest()

    def discard(self) -> None:
        self._handoff.discard()  # what is gathered is not worth writing now
        self._held = None
        self._framing, self._framing_bytes = [], 0
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)
