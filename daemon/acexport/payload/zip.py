"""ZIP payloads: inflated while they stream, or spooled and read once complete."""

from __future__ import annotations

import functools
import zipfile
import zlib
from pathlib import Path
from typing import IO

from ..errors import PayloadError
from ..limits import PayloadLimits
from . import codec
from .outfile import OutputFile
from .records import ArrayToLines, NdjsonLines
from .sniff import format_of, start_of
from .tempfiles import create_new
from .zipstream import Unstreamable, ZipStream


class ZipSpool:
    """ZIP needs its central directory, at the end: spool, then convert the members."""

    def __init__(self, out: OutputFile, spool_path: Path, limits: PayloadLimits) -> None:
        self._out = out
        self._spool_path = spool_path
        self._spool: IO[bytes] = create_new(spool_path)
        self._limits = limits
        self._spooled = 0
        self.records = 0

    def feed_many(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self._spool.write(data)
            self._spooled += len(data)

    def finish(self) -> None:
        self._spool.close()
        # Inflating may yield at most this much (zip bombs), with slack for tiny ZIPs.
        allowed = min(self._limits.max_bytes, self._limits.inflated_max(self._spooled))
        inflated = 0
        try:
            with zipfile.ZipFile(self._spool_path) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    lines = MemberLines(self._out, info.filename)
                    with archive.open(info) as member:
                        while block := member.read(4 << 20):
                            inflated += len(block)
                            if inflated > allowed:
                                raise self._limits.too_inflated()
                            lines.feed(block)
                    lines.finish()
                    self.records += lines.records
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise PayloadError(f"the ZIP payload is damaged or cut short: {exc}") from None
        except (RuntimeError, NotImplementedError) as exc:
            # zipfile's word for encrypted members and unknown compression methods.
            raise PayloadError(f"the ZIP payload cannot be read: {exc}") from None
        finally:
            self._spool_path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)


def _open_member(out: OutputFile, members: list[MemberLines], name: str) -> MemberLines:
    member = MemberLines(out, name)
    members.append(member)
    return member


class _InflateBudget:
    """How much a streamed ZIP has inflated, against what its compressed size allows."""

    def __init__(self, limits: PayloadLimits) -> None:
        self._limits = limits
        self._inflated = 0

    def spend(self, inflated: int, compressed: int) -> None:
        self._inflated += inflated
        limits = self._limits
        if self._inflated > min(limits.max_bytes, limits.inflated_max(compressed)):
            raise limits.too_inflated()


class StreamedZip:
    """A ZIP inflated as it arrives (zipstream.py), overlapping the download; spooled
    and read after it (``ZipSpool``) when its first member cannot be streamed."""

    def __init__(self, out: OutputFile, spool_path: Path, limits: PayloadLimits) -> None:
        self._out = out
        self._spool_path = spool_path
        self._limits = limits
        self._members: list[MemberLines] = []
        # The stream's callbacks hold the members and the budget, not this object: no
        # reference cycle, so a finished export is freed at once, not by the collector.
        self._budget = _InflateBudget(limits)
        self._stream = ZipStream(
            functools.partial(_open_member, out, self._members), self._budget.spend
        )
        self._spool: ZipSpool | None = None
        self._head: list[bytes] | None = []  # replayed into a spool if it must be one

    @property
    def records(self) -> int:
        if self._spool is not None:
            return self._spool.records
        return sum(member.records for member in self._members)

    def feed_many(self, chunks: list[bytes]) -> None:
        if self._spool is not None:
            self._spool.feed_many(chunks)
            return
        for index, data in enumerate(chunks):
            if self._head is not None:
                self._head.append(data)
            try:
                self._stream.feed(data)
            except Unstreamable:
                assert self._head is not None
                self._spool = ZipSpool(self._out, self._spool_path, self._limits)
                self._spool.feed_many([*self._head, *chunks[index + 1 :]])
                self._head = None
                return
            except codec.INFLATE_ERRORS as exc:
                raise PayloadError(f"the ZIP payload is damaged: {exc}") from None
            if self._members:
                self._head = None  # a member streams: no going back to spooling

    def finish(self) -> None:
        if self._spool is not None:
            self._spool.finish()
        else:
            self._stream.finish()

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.discard()


class MemberLines:
    """One ZIP member's JSON or JSON Lines, pushed in pieces, into the output."""

    def __init__(self, out: OutputFile, name: str) -> None:
        self._out = out
        self._name = name
        self._converter: NdjsonLines | ArrayToLines | None = None
        self.records = 0

    def feed(self, data: bytes) -> None:
        if self._converter is None:
            # Leading whitespace is dropped piece by piece: linear however much there is.
            data = start_of(data)
            if not data:
                return
            served = format_of(data)
            if served == "json":
                self._converter = ArrayToLines(self._out.write_many)
            elif served == "ndjson":
                # The member's CRC-32 is checked: its lines arrived as AC wrote them.
                self._converter = NdjsonLines(self._out.write_many)
            else:
                raise PayloadError(f"ZIP member {self._name!r} is neither JSON nor JSON Lines")
        self._converter.feed_many([data])

    def finish(self) -> None:
        if self._converter is not None:
            self._converter.finish()
            self.records += self._converter.records
