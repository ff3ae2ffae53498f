"""ZIP payloads: inflated while they stream, or spooled and read once complete."""

from __future__ import annotations

import errno
import functools
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO

from ..errors import PayloadError
from ..limits import PayloadLimits
from . import codec
from .records import ArrayToLines, NdjsonLines, Write
from .sniff import format_of, judged_start, start_of
from .tempfiles import create_new
from .zipstream import LOCAL, MAX_TAIL, Unstreamable, ZipStream, central_directory, check_member

_LOCAL_FIXED = 30  # a local header before its name and extra field
_DESCRIPTOR_SIZES = (12, 16, 20, 24)  # CRC and sizes, 32 or 64 bit, with or without signature


class ZipSpool:
    """ZIP needs its central directory, at the end: spool, then convert the members."""

    def __init__(self, write: Write, spool_path: Path, limits: PayloadLimits) -> None:
        self._write = write
        self._spool_path = spool_path
        self._spool: IO[bytes] = create_new(spool_path)
        self._limits = limits
        self._spooled = 0

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
                _check_layout(archive, self._spooled)
                for info in archive.infolist():
                    check_member(info.filename, info.compress_type, info.flag_bits)
                    if info.is_dir():
                        continue
                    lines = MemberLines(self._write, info.filename)
                    with archive.open(info) as member:
                        while block := member.read(4 << 20):
                            inflated += len(block)
                            if inflated > allowed:
                                raise self._limits.too_inflated()
                            lines.feed(block)
                    lines.finish()
        except (
            zipfile.BadZipFile,
            zipfile.LargeZipFile,
            EOFError,
            zlib.error,
            struct.error,  # a ZIP64 record cut short
            UnicodeDecodeError,  # a name flagged UTF-8 that is not
        ) as exc:
            raise PayloadError(f"the ZIP payload is damaged or cut short: {exc}") from None
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise  # the disk's trouble, not the payload's
            # zipfile seeking to an offset before the file's start.
            raise PayloadError("the ZIP payload's central directory offset is wrong") from None
        finally:
            self._spool_path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)


def _check_layout(archive: zipfile.ZipFile, size: int) -> None:
    """What the streaming reader proves, for a spooled ZIP: ``zipfile`` reads leniently
    (a damaged central directory silently drops members; bytes after the end record
    pass). The members must tile the file from its first byte to the central
    directory, which must list them all and end exactly where the file ends."""
    fp = archive.fp
    assert fp is not None
    start_dir = archive.start_dir
    fp.seek(start_dir)
    tail = fp.read(MAX_TAIL + 1)
    if len(tail) > MAX_TAIL or start_dir + len(tail) != size:
        raise PayloadError("the ZIP's central directory is implausibly large or misplaced")
    infos = sorted(archive.infolist(), key=lambda info: info.header_offset)
    if len(central_directory(tail)) != len(infos):
        raise PayloadError("the ZIP's central directory does not list every member")
    position = 0
    for index, info in enumerate(infos):
        if info.header_offset != position:
            raise PayloadError(
                f"ZIP member {info.filename!r} is not where the previous one ends: "
                "the central directory is damaged"
            )
        fp.seek(position)
        header = fp.read(_LOCAL_FIXED)
        if len(header) < _LOCAL_FIXED or header[:4] != LOCAL:
            raise PayloadError(f"ZIP member {info.filename!r} has no local header")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        position += _LOCAL_FIXED + name_len + extra_len + info.compress_size
        following = infos[index + 1].header_offset if index + 1 < len(infos) else start_dir
        if info.flag_bits & 0x8 and following - position in _DESCRIPTOR_SIZES:
            position = following
    if position != start_dir:
        raise PayloadError("the ZIP holds data its central directory does not account for")


def _open_member(write: Write, members: list[MemberLines], name: str) -> MemberLines:
    member = MemberLines(write, name)
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

    def __init__(self, write: Write, spool_path: Path, limits: PayloadLimits) -> None:
        self._write = write
        self._spool_path = spool_path
        self._limits = limits
        self._members: list[MemberLines] = []
        # The stream's callbacks hold the members and the budget, not this object: no
        # reference cycle, so a finished export is freed at once, not by the collector.
        self._budget = _InflateBudget(limits)
        self._stream = ZipStream(
            functools.partial(_open_member, write, self._members), self._budget.spend
        )
        self._spool: ZipSpool | None = None
        self._head: list[bytes] | None = []  # replayed into a spool if it must be one

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
                self._spool = ZipSpool(self._write, self._spool_path, self._limits)
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

    def __init__(self, write: Write, name: str) -> None:
        self._write = write
        self._name = name
        self._converter: NdjsonLines | ArrayToLines | None = None
        self._head = b""  # the start, until there is enough of it to judge

    def feed(self, data: bytes) -> None:
        if self._converter is None:
            # Leading whitespace and BOM are dropped as they come (linear however much
            # there is); a BOM or a start split across pieces waits for the rest.
            self._head = start_of(self._head + data)
            data = judged_start(self._head) or b""
            if not data:
                return
            self._head = b""
            self._converter = self._choose(data)
        self._converter.feed_many([data])

    def _choose(self, start: bytes) -> NdjsonLines | ArrayToLines:
        served = format_of(start)
        if served == "json":
            return ArrayToLines(self._write)
        if served == "ndjson":
            # The member's CRC-32 proves its lines arrived as AC wrote them; that they
            # are UTF-8 is checked where they are written (the output file's thread,
            # beside inflating: writer.py), not here on the inflating thread.
            return NdjsonLines(self._write)
        raise PayloadError(f"ZIP member {self._name!r} is neither JSON nor JSON Lines")

    def finish(self) -> None:
        if self._converter is None and self._head:  # shorter than a judged start
            self._converter = self._choose(self._head)
            self._converter.feed_many([self._head])
        if self._converter is not None:
            self._converter.finish()
