"""A payload's bytes: sniffed, hashed as served, converted to NDJSON in a temp file.

The format is sniffed from the first bytes (never from a name): NDJSON passes
through, a JSON array is split into NDJSON lines while streaming, a ZIP's
members are inflated while it streams (or, if that cannot be, spooled and
converted once complete; see zip.py). ``payload_*`` fields describe the served
bytes; the output file (outfile.py) is NDJSON, optionally compressed, or, when
typed for a record type, that NDJSON written as Parquet once complete (parquet.py).
Everything here blocks: the sink runs it in worker threads.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import PayloadError, PayloadTooLarge
from ..formats import Compression
from ..limits import PayloadLimits
from . import codec
from .outfile import OutputFile
from .parquet import TypedFile, ndjson_to_parquet
from .records import ArrayToLines, LineChecks, NdjsonLines
from .sniff import BOM, WHITESPACE, format_of, judged_start, start_of
from .split import RecordSplit, SplitPlan
from .stage import Stage
from .tempfiles import temp_stem
from .zip import StreamedZip


@dataclass(frozen=True)
class PayloadSummary:
    """A finished payload: the output temp file and what the served bytes were."""

    path: Path
    records: int
    payload_bytes: int
    payload_sha256: str
    served_format: str  # what AC served: zip, json or ndjson (not the output format)
    file_bytes: int  # the output file, as written
    file_sha256: str
    typed: TypedFile | None = None  # the Parquet file's rows and schema, if typed


class PayloadWriter:
    """One download's bytes: hashed as served, converted to the output temp file.

    Its methods block. ``digest`` and ``convert`` touch disjoint state, so one
    thread may hash a batch while another converts and writes it. For raw JSON
    Lines, the per-line checks (UTF-8, line shape) run with the hashing, so
    writing does not wait for them.
    """

    def __init__(
        self,
        temp_dir: Path,
        compression: Compression,
        limits: PayloadLimits | None = None,
        *,
        typed_as: str | None = None,
        split: SplitPlan | None = None,
    ) -> None:
        stem = temp_stem()
        self._limits = limits or PayloadLimits()
        # Typed output: plain JSON Lines first, Parquet (compressed inside) at the end.
        self._typed_as = typed_as
        self._compression = compression
        self._parts = _output_files(temp_dir, stem, compression, typed_as, split)
        self._split = (
            None if split is None else RecordSplit(split, [p.write_many for p in self._parts])
        )
        # Where the converters' NDJSON goes: bound to the file or the split, never to
        # this writer (a converter holding it would be a cycle, freed only by the
        # collector: at a thousand lanes its passes stalled the event loop).
        self._write_lines = (
            self._parts[0].write_many if self._split is None else self._split.write_many
        )
        # Paths that most exports never use are made when needed (a path is ~5 us).
        self._temp_dir, self._stem = temp_dir, stem
        self._sha = hashlib.sha256()
        self.payload_bytes = 0
        self._head = b""
        self._converter: NdjsonLines | ArrayToLines | StreamedZip | None = None
        self.served_format = "unknown"
        # Served as application/zip: a body that is not a ZIP (blank, a BOM) is damage.
        self.declared_zip = False
        # The hashing side's own view of the start, to know whether lines need checks.
        self._digest_head: bytes | None = b""
        self._checks: LineChecks | None = None
        self._deferred: list[bytes] = []

    def defer(self, chunks: list[bytes]) -> None:
        """Keep the last batch for ``finish`` to feed: one thread hop for both."""
        self._deferred = chunks

    def feed(self, data: bytes) -> None:
        self.feed_many([data])

    def feed_many(self, chunks: list[bytes]) -> None:
        """Hash and convert in this thread (for batches too small to split)."""
        self.digest(chunks)
        self.convert(chunks)

    def digest(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self._sha.update(data)
            self.payload_bytes += len(data)
        if self.payload_bytes > self._limits.max_bytes:
            raise PayloadTooLarge(
                f"the payload is larger than http.max_payload ({self._limits.max_bytes} "
                "bytes); nothing was kept"
            )
        self._check_lines(chunks)

    def _check_lines(self, chunks: list[bytes]) -> None:
        """Raw JSON Lines are checked here, sniffed as ``convert`` sniffs them."""
        for index, data in enumerate(chunks):
            if self._digest_head is None:
                if self._checks is not None:
                    self._checks.feed(data)
                continue
            self._digest_head += data
            start = judged_start(self._digest_head)
            if start is None:
                continue
            self._digest_head = None
            if format_of(start) == "ndjson":
                self._checks = LineChecks()
                self._checks.feed(start)
                for rest in chunks[index + 1 :]:
                    self._checks.feed(rest)
            return

    def convert(self, chunks: list[bytes]) -> None:
        index = 0
        while self._converter is None and index < len(chunks):
            self._head += chunks[index]
            index += 1
            start = judged_start(self._head)
            if start is None:
                continue  # too little to tell yet
            self._converter = self._choose(start)
            chunks = [start, *chunks[index:]]
            index, self._head = 0, b""
        if self._converter is not None:
            self._converter.feed_many(chunks[index:])

    def _choose(self, start: bytes) -> NdjsonLines | ArrayToLines | StreamedZip:
        served = format_of(start)
        if served is None:
            raise PayloadError(f"the payload is not JSON, JSON Lines or ZIP (starts {start[:4]!r})")
        if self.declared_zip and served != "zip":
            raise PayloadError(
                f"the payload was served as a ZIP (application/zip) but starts {start[:4]!r}: "
                "it is damaged"
            )
        self.served_format = served
        if served == "zip":
            # A member's CRC-32 proves its bytes are AC's, not that they are text: each
            # output file checks its lines as UTF-8 as it writes them (in its own
            # thread when it has one), as a raw body's are checked beside hashing.
            for part in self._parts:
                part.check_utf8()
            return StreamedZip(self._write_lines, self._spool_path(), self._limits)
        if served == "json":
            return ArrayToLines(self._write_lines)
        return NdjsonLines(self._write_lines)  # checked by ``digest``

    def finish(self) -> PayloadSummary:
        """The one output file (a writer without a split, or a split of one window)."""
        (summary,) = self.finish_parts()
        return summary

    def finish_parts(self) -> list[PayloadSummary]:
        """One summary per window, in the split's order; the payload's fields are the
        whole request's, ``records`` the window's."""
        if self._deferred:
            deferred, self._deferred = self._deferred, []
            self.feed_many(deferred)
        if self._converter is None:
            head = self._head.strip(WHITESPACE + BOM)
            if head:
                self._converter = self._choose(head)
                self._converter.feed_many([head])
            elif self.declared_zip:
                # AC's empty window is a ZIP with an empty member, never an empty body.
                raise PayloadError("the payload was served as a ZIP (application/zip) but is blank")
            else:
                self.served_format = "ndjson"  # an export with no records
        if self._digest_head and self.served_format == "ndjson":  # too short to sniff before
            self._checks = LineChecks()
            self._checks.feed(start_of(self._digest_head))
        if self._checks is not None:
            self._checks.finish()
        if self._converter is not None:
            self._converter.finish()
        if self._split is not None:
            self._split.finish()
        for part in self._parts:
            part.close()  # an export with no records still has its (empty) files
        counts = [self._parts[0].lines] if self._split is None else self._split.rows
        summaries = []
        for part, records in zip(self._parts, counts, strict=True):
            if self._typed_as is not None:
                summaries.append(self._typed(part.path, _parquet_path(part), records))
                continue
            summaries.append(
                PayloadSummary(
                    part.path,
                    records,
                    self.payload_bytes,
                    self._sha.hexdigest(),
                    self.served_format,
                    part.size,
                    part.sha256(),
                )
            )
        return summaries

    @property
    def skipped(self) -> int:
        """Records of the request that belong to no window written (split only)."""
        return 0 if self._split is None else self._split.skipped

    def _typed(self, ndjson: Path, parquet_path: Path, records: int) -> PayloadSummary:
        assert self._typed_as is not None
        try:
            typed = ndjson_to_parquet(
                ndjson, parquet_path, self._typed_as, records, self._compression, self._engine_dir()
            )
        finally:
            ndjson.unlink(missing_ok=True)
            shutil.rmtree(self._engine_dir(), ignore_errors=True)
        return PayloadSummary(
            parquet_path,
            records,
            self.payload_bytes,
            self._sha.hexdigest(),
            self.served_format,
            typed.file_bytes,
            typed.file_sha256,
            typed,
        )

    def discard(self) -> None:
        if isinstance(self._converter, StreamedZip):
            self._converter.discard()
        for part in self._parts:
            part.discard()
            _parquet_path(part).unlink(missing_ok=True)
        self._spool_path().unlink(missing_ok=True)
        shutil.rmtree(self._engine_dir(), ignore_errors=True)

    def _spool_path(self) -> Path:
        return self._temp_dir / f"{self._stem}.spool"

    def _engine_dir(self) -> Path:
        return self._temp_dir / f"{self._stem}.engine"


def _parquet_path(part: OutputFile) -> Path:
    return part.path.with_name(part.path.stem + ".parquet.part")


def _output_files(
    temp_dir: Path,
    stem: str,
    compression: Compression,
    typed_as: str | None,
    split: SplitPlan | None,
) -> list[OutputFile]:
    """One output file, or one per window of a split time series (split.py)."""
    count = 1 if split is None else len(split.windows)
    file_compression = Compression.NONE if typed_as else compression
    # Many windows share one zstd context and one writer thread (outfile.FRAME_BYTES).
    frames = codec.zstd_frames() if count > 1 and file_compression == Compression.ZSTD else None
    writer = Stage("acexport-write") if count > 1 else None
    return [
        OutputFile(
            temp_dir / (f"{stem}.part" if count == 1 else f"{stem}.{i}.part"),
            file_compression,
            intermediate=typed_as is not None,
            writer=writer,
            frames=frames,
            count_lines=split is None,
        )
        for i in range(count)
    ]
