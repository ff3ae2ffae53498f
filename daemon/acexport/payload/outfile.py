"""The output temp file: compressed or not, written by a thread of its own."""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, cast

from ..formats import Compression
from . import codec
from .records import Utf8Check, Write
from .tempfiles import create_new

_QUEUED_BATCHES = 2  # between the producer and the writer thread: bounds memory
_THREAD_AFTER_BYTES = 4 << 20  # output written before a writer thread is worth starting
# Output handed to the writer thread at a time: each hand-off is a GIL and condition
# round trip, which at one per inflated piece (~300 KB) cost more than the writing.
_HANDOFF_BYTES = 1 << 20
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


# Asking the kernel to start writing each batch back at once (SYNC_FILE_RANGE_WRITE,
# which does not wait) keeps dirty pages few: writes no longer stall on dirty-page
# throttling, and the final fsync finds almost nothing left to do. Measured here:
# 1 GiB written and fsynced in 0.4 s steadily, against 0.6 to 3.2 s without.
_sync_file_range = _writeback_starter()
_SYNC_FILE_RANGE_WRITE = 2
_IOV_MAX = 1024


class WriterThread:
    """Runs the writes handed to it, in order, in a thread of its own behind a short
    queue (memory stays bounded); an error there is raised in the producer's next call.
    One per output file, or one shared by a split's window files."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Write, list[bytes]] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def submit(self, write: Write, chunks: list[bytes]) -> None:
        self.raise_failure()
        if self._queue is None:
            self._queue = queue.Queue(_QUEUED_BATCHES)
            self._thread = threading.Thread(target=self._drain, name="acexport-write", daemon=True)
            self._thread.start()
        self._queue.put((write, chunks))

    def _drain(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, only empty the queue
                write, chunks = item
                try:
                    write(chunks)
                except BaseException as exc:  # handed to the producer's thread
                    self._error = exc

    def raise_failure(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def forget_failure(self) -> None:
        self._error = None

    def stop(self) -> None:
        """Wait for every write handed over (idempotent)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread, self._queue = None, None


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
        writer: WriterThread | None = None,
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
        self._shared = writer is not None
        self._writer = writer or WriterThread()
        self._handoff_bytes = FRAME_BYTES if self._shared else _HANDOFF_BYTES
        # Read back and deleted by this process (the JSON Lines a Parquet file is made
        # from): no manifest names its hash, and a crash discards it, so it is neither
        # hashed nor synced.
        self._intermediate = intermediate
        self._file: IO[bytes] | None = None  # created by ``open``, in a worker thread
        self._compressor: codec.Compressor | None = None
        # zstd in frames through a shared context (a split's windows), lines buffered.
        self._frames = frames if compression == Compression.ZSTD else None
        self._utf8: Utf8Check | None = None  # the lines checked as they are written
        self._framing: list[bytes] = []
        self._framing_bytes = 0
        if compression == Compression.GZIP:
            self._compressor = codec.gzip_compressor()
        elif compression == Compression.ZSTD and self._frames is None:
            self._compressor = codec.zstd_compressor()
        self._written = 0
        # The file as written (the manifest's file_sha256): hashed in the writer thread.
        self._sha = hashlib.sha256()
        self._gathered: list[bytes] = []  # for the writer thread, until a hand-off's worth
        self._gathered_bytes = 0

    def open(self) -> None:
        """Create the temp file (and its directory, if someone removed it)."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = create_new(self.path, buffering=0)

    def write_many(self, chunks: list[bytes]) -> None:
        """Queue the chunks (in order) for the writer thread; memory stays bounded.

        A file of its own writes its first few MB at once: a thread per export would
        cost more than it overlaps, with hundreds of small exports in flight.
        """
        self._writer.raise_failure()
        if not self._shared and not self._writer.started and self._written < _THREAD_AFTER_BYTES:
            self._write(chunks)
            return
        self._gathered += chunks
        self._gathered_bytes += sum(map(len, chunks))
        if self._gathered_bytes >= self._handoff_bytes:
            self._hand_off()

    def _hand_off(self) -> None:
        if self._gathered:
            gathered, self._gathered, self._gathered_bytes = self._gathered, [], 0
            self._writer.submit(self._write, gathered)

    def check_utf8(self) -> None:
        """Check every line written from now on as UTF-8 (in the writer's thread)."""
        self._utf8 = Utf8Check()

    def _write(self, chunks: list[bytes]) -> None:
        """Write the chunks in order, without joining them first (one copy fewer)."""
        if self._utf8 is not None:
            for chunk in chunks:
                self._utf8.feed(chunk)
        if self._count_lines:
            self.lines += sum(chunk.count(b"\n") for chunk in chunks)
        if self._frames is not None:
            chunks = self._framed(chunks)
        elif self._compressor is not None:
            chunks = [self._compressor.compress(chunk) for chunk in chunks]
        self._emit(chunks)

    def _emit(self, chunks: list[bytes]) -> None:
        """Write what is to be in the file, as it is."""
        chunks = [chunk for chunk in chunks if chunk]
        if not chunks:
            return
        assert self._file is not None, "open() comes first"
        fd = self._file.fileno()
        if not self._intermediate:
            for chunk in chunks:
                self._sha.update(chunk)
        total = sum(map(len, chunks))
        done = 0
        for start in range(0, len(chunks), _IOV_MAX):
            done += os.writev(fd, chunks[start : start + _IOV_MAX])
        if done < total:
            # A short write (file size limit, full disk): write the rest plainly, so
            # the error, if any, is raised with its errno.
            self._file.write(b"".join(chunks)[done:])
        if _sync_file_range is not None:
            _sync_file_range(fd, self._written, total, _SYNC_FILE_RANGE_WRITE)
        self._written += total

    def _framed(self, chunks: list[bytes], last: bool = False) -> list[bytes]:
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
        self._writer.stop()
        self._writer.raise_failure()
        gathered, self._gathered, self._gathered_bytes = self._gathered, [], 0
        self.open()  # an export with no records is an empty file
        if gathered:
            self._write(gathered)
        if self._utf8 is not None:
            self._utf8.finish()
        if self._frames is not None:
            self._emit(self._framed([], last=True))  # the last frame (an empty one at least)
        assert self._file is not None
        if self._compressor is not None:
            tail = self._compressor.flush()
            self._file.write(tail)
            self._sha.update(tail)
            self._written += len(tail)
            self._compressor = None
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
        self._gathered, self._gathered_bytes = [], 0  # not worth writing now
        self._framing, self._framing_bytes = [], 0
        self._writer.stop()
        self._writer.forget_failure()  # the export failed already
        if self._file is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)
