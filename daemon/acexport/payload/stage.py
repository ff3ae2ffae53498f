"""A stage of the byte pipeline in a thread of its own, and the hand-off that feeds it.

Checking, hashing and writing the output (outfile.py) run beside inflating and
splitting, which produce its lines: hashing and writing release the GIL, so the two
overlap on two cores. A ``Stage`` runs the calls handed to it in order behind a
short queue, so memory stays bounded; a ``Handoff`` gathers a producer's chunks
into batches for it (each hand-off is a GIL and condition round trip) and, for a
small payload, skips the thread altogether: a thread per export would cost more
than it overlaps with hundreds of exports in flight. (The split in a third stage
measured slower, 2.6 s against 2.4 s for 1 GiB, and 10 MB more: its regex pass
holds the GIL, so it only took turns with the other two.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

# A piece of output: bytes, or a view of lines inside a bigger piece (the split's).
Chunk = bytes | memoryview
Write = Callable[[Sequence[Chunk]], None]
_QUEUED_BATCHES = 2  # between a producer and a stage: bounds memory
THREAD_AFTER_BYTES = 4 << 20  # what passes before a stage's thread is worth starting
# Handed to a stage at a time: each hand-off is a GIL and condition round trip, which
# at one per inflated piece (~300 KB) cost more than the writing.
HANDOFF_BYTES = 1 << 20


class Stage:
    """Runs the writes handed to it, in order, in a thread of its own; an error there
    is raised in the producer's next call. Several hand-offs may share one stage."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.Queue[tuple[Write, Sequence[Chunk]] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def submit(self, write: Write, chunks: Sequence[Chunk]) -> None:
        self.raise_failure()
        if self._queue is None:
            self._queue = queue.Queue(_QUEUED_BATCHES)
            self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
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

    def stop(self) -> None:
        """Wait until every write handed over has run (idempotent; raises nothing)."""
        if self._thread is not None and self._queue is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread, self._queue = None, None

    def discard(self) -> None:
        """Stop, forgetting a failure: the export has failed already."""
        self.stop()
        self._error = None


class Handoff:
    """Feeds one writer's chunks to a stage, in order, in batches of ``batch_bytes``;
    the first ``inline_bytes`` are written at once in the producer's thread instead.

    The write is passed with each call, never kept: a file holding a hand-off that
    held the file's bound method would be a reference cycle, freed only by the
    collector (whose passes stalled the event loop at a thousand lanes).
    """

    def __init__(self, stage: Stage, *, inline_bytes: int, batch_bytes: int) -> None:
        self.stage = stage
        self._inline_bytes = inline_bytes
        self._batch_bytes = batch_bytes
        self._passed = 0
        self._gathered: list[Chunk] = []
        self._gathered_bytes = 0

    def write_many(self, write: Write, chunks: Sequence[Chunk]) -> None:
        self.stage.raise_failure()
        if not self.stage.started and self._passed < self._inline_bytes:
            self._passed += sum(map(len, chunks))
            write(chunks)
            return
        self._gathered += chunks
        self._gathered_bytes += sum(map(len, chunks))
        if self._gathered_bytes >= self._batch_bytes:
            gathered, self._gathered, self._gathered_bytes = self._gathered, [], 0
            self.stage.submit(write, gathered)

    def drain(self, write: Write) -> None:
        """Once every chunk is handed over: wait for the stage, raise its failure, and
        write what is still gathered here, in the caller's thread."""
        self.stage.stop()
        self.stage.raise_failure()
        gathered, self._gathered, self._gathered_bytes = self._gathered, [], 0
        if gathered:
            write(gathered)

    def discard(self) -> None:
        self._gathered, self._gathered_bytes = [], 0
        self.stage.discard()
