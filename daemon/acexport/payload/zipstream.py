"""A ZIP payload read as it arrives: each member inflated while the download runs.

AC streams its ZIP with no length (Java's ZipOutputStream): per member a local
header, a deflate stream and a data descriptor, then the central directory.
Each member is inflated as its bytes arrive, so inflating overlaps the network
instead of following it. Each member's CRC-32 and sizes are checked against
its data descriptor (or local header), and at the end against the central
directory, which must be there and whole: a ZIP cut short fails, as it does
with ``zipfile``. What cannot be read in one pass (a stored member of unknown
size) is ``Unstreamable`` at the first header, and the caller spools the ZIP
instead. Methods other than deflate and stored (AC writes
deflate), and encrypted members, are refused: bzip2 and LZMA would be read
through ``zipfile`` with no bound on what a few bytes inflate to.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import PayloadError
from . import codec

LOCAL, DESCRIPTOR, CENTRAL = b"PK\x03\x04", b"PK\x07\x08", b"PK\x01\x02"
END, END64, LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # signature ... name length, extra length
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_END = struct.Struct("<4sHHHHIIH")
_MAX32 = 0xFFFFFFFF
_OUT_STEP = 1 << 20  # inflate at most this much per call: memory stays bounded
MAX_TAIL = 16 << 20  # central directory and end records: a few hundred bytes per member
_DEFLATED, _STORED = 8, 0
_ENCRYPTED, _HAS_DESCRIPTOR, _UTF8 = 0x1, 0x8, 0x800


class Unstreamable(Exception):
    """The ZIP's first member cannot be read in one pass; spool the ZIP instead."""


class MemberSink(Protocol):
    def feed(self, data: bytes) -> None: ...
    def finish(self) -> None: ...


@dataclass
class _Member:
    name: str
    flags: int
    crc: int  # from the local header (0 when a descriptor follows)
    compressed: int  # from the local header or its ZIP64 extra (-1: unknown)
    size: int
    sink: MemberSink
    seen_crc: int = 0
    seen_compressed: int = 0
    seen_size: int = 0
    inflater: codec.Inflater | None = None
    data_start: int = 0  # offset of the member's data in the ZIP
    ended: bool = False  # its data is over (a descriptor may follow)


@dataclass
class ZipStream:
    """Feed the ZIP's bytes in order; ``open_member(name)`` receives each member's data.

    ``spend(inflated, compressed)`` is told of every inflated piece and how far into
    the ZIP it came from (and raises past a budget).
    """

    open_member: Callable[[str], MemberSink]
    spend: Callable[[int, int], None]  # (inflated bytes, compressed bytes so far)
    _buffer: bytearray = field(default_factory=bytearray)
    _member: _Member | None = None
    _members: list[_Member] = field(default_factory=list)
    _tail: bytearray | None = None
    _offset: int = 0  # bytes of the ZIP consumed before ``_buffer``

    def feed(self, data: bytes) -> None:
        if self._tail is not None:
            self._tail += data
            if len(self._tail) > MAX_TAIL:
                raise PayloadError("the ZIP's central directory is implausibly large")
            return
        member = self._member
        inflating = member is not None and member.inflater is not None and not member.ended
        if inflating and not self._buffer:  # the common case: inflate bytes as they come
            assert member is not None
            self._offset += len(data)
            if self._inflate(member, data):
                self._ended(member)
                while self._step():
                    pass
            return
        self._buffer += data
        while self._step():
            pass

    def _consume(self, size: int) -> bytes:
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._offset += size
        return taken

    def _step(self) -> bool:
        """Advance as far as the buffered bytes allow; False when more are needed."""
        member = self._member
        if member is None:
            return self._header()
        if not member.ended:
            return self._data(member)
        return self._descriptor(member)

    def _header(self) -> bool:
        if len(self._buffer) < 4:
            return False
        signature = bytes(self._buffer[:4])
        if signature in (CENTRAL, END, END64):
            self._tail = bytearray(self._buffer)
            self._buffer.clear()
            return False
        if signature != LOCAL:
            raise PayloadError(f"the ZIP payload is damaged: {signature!r} where a header belongs")
        if len(self._buffer) < _LOCAL.size:
            return False
        (_, _, flags, method, _, _, crc, compressed, size, name_len, extra_len) = _LOCAL.unpack(
            self._buffer[: _LOCAL.size]
        )
        if len(self._buffer) < _LOCAL.size + name_len + extra_len:
            return False
        header = self._consume(_LOCAL.size + name_len + extra_len)
        raw_name = header[_LOCAL.size : _LOCAL.size + name_len]
        name = raw_name.decode("utf-8" if flags & _UTF8 else "cp437", "replace")
        size, compressed = _zip64_sizes(header[_LOCAL.size + name_len :], size, compressed)
        check_member(name, method, flags)
        if method == _STORED and flags & _HAS_DESCRIPTOR:
            why = f"ZIP member {name!r} is stored with no size: it cannot be read as it streams"
            raise (Unstreamable if not self._members else PayloadError)(why)
        if flags & _HAS_DESCRIPTOR:
            compressed = -1
        sink = _Skip() if name.endswith("/") else self.open_member(name)
        member = _Member(name, flags, crc, compressed, size, sink, data_start=self._offset)
        if method == _DEFLATED:
            member.inflater = codec.raw_inflater()
        self._member = member
        self._members.append(member)
        return True

    def _data(self, member: _Member) -> bool:
        if not self._buffer:
            return False
        if member.inflater is None:  # stored: the header gave its size
            left = member.compressed - (self._offset - member.data_start)
            self._emit(member, self._consume(min(len(self._buffer), left)))
            done = self._offset - member.data_start == member.compressed
        else:
            done = self._inflate(member, self._consume(len(self._buffer)))
        if not done:
            return False
        self._ended(member)
        return True

    def _ended(self, member: _Member) -> None:
        """The member's data is over: checked now, or once its descriptor arrives."""
        member.seen_compressed = self._offset - member.data_start
        member.ended = True
        if not member.flags & _HAS_DESCRIPTOR:
            _check(member, member.crc, member.compressed, member.size, "local header")
            self._close(member)

    def _close(self, member: _Member) -> None:
        """A member checked whole is finished at once: its last line is its own, never
        glued to the next member's first."""
        self._member = None
        member.sink.finish()

    def _inflate(self, member: _Member, data: bytes) -> bool:
        """Inflate ``data`` (already counted in ``_offset``); True once the stream ended,
        with what follows it put back in front of the buffer."""
        inflater = member.inflater
        assert inflater is not None
        while True:
            self._emit(member, inflater.decompress(data, _OUT_STEP))
            data = inflater.unconsumed_tail
            if inflater.eof or not data:
                break
        if inflater.eof:
            rest = inflater.unused_data
            self._buffer[:0] = rest
            self._offset -= len(rest)
        return inflater.eof

    def _emit(self, member: _Member, data: bytes) -> None:
        if not data:
            return
        member.seen_size += len(data)
        member.seen_crc = codec.crc32(data, member.seen_crc)
        self.spend(len(data), self._offset)
        member.sink.feed(data)

    def _descriptor(self, member: _Member) -> bool:
        """CRC-32 and sizes after the data, 32- or 64-bit (writers differ; nothing says
        which): the 32-bit reading is taken if it matches and a header follows it."""
        start = 4 if self._buffer[:4] == DESCRIPTOR else 0
        if len(self._buffer) < start + 16:
            return False
        seen = (member.seen_crc, member.seen_compressed, member.seen_size)
        short = struct.unpack("<III", self._buffer[start : start + 12])
        after = bytes(self._buffer[start + 12 : start + 16])
        if short == seen and after in (LOCAL, CENTRAL, END, END64):
            values, used = short, start + 12
        elif len(self._buffer) < start + 20:
            return False
        else:
            values, used = struct.unpack("<IQQ", self._buffer[start : start + 20]), start + 20
        _check(member, *values, "data descriptor")
        self._consume(used)
        self._close(member)
        return True

    def finish(self) -> None:
        """Every member complete, then a central directory that agrees with them."""
        if self._tail is None:
            what = "a member's data" if self._member is not None else "the central directory"
            raise PayloadError(f"the ZIP payload is cut short: it ends inside {what}")
        entries = central_directory(bytes(self._tail))
        if len(entries) != len(self._members):
            raise PayloadError(
                f"the ZIP's central directory lists {len(entries)} members, "
                f"the stream held {len(self._members)}"
            )
        for member, (name, crc, compressed, size) in zip(self._members, entries, strict=True):
            if name != member.name:
                raise PayloadError(
                    f"the ZIP's central directory names {name!r}, not {member.name!r}"
                )
            _check(member, crc, compressed, size, "central directory")


class _Skip:
    """A directory entry: nothing to convert."""

    def feed(self, data: bytes) -> None:
        if data:
            raise PayloadError("a ZIP directory entry holds data")

    def finish(self) -> None:
        pass


def check_member(name: str, method: int, flags: int) -> None:
    """Only what AC writes, and what can be inflated within a bound, is read."""
    if flags & _ENCRYPTED:
        raise PayloadError(f"ZIP member {name!r} is encrypted: it is not AC's data")
    if method not in (_DEFLATED, _STORED):
        raise PayloadError(
            f"ZIP member {name!r} uses compression method {method}; only deflate and stored "
            "are read (AC writes deflate)"
        )


def _check(member: _Member, crc: int, compressed: int, size: int, where: str) -> None:
    seen = (member.seen_crc, member.seen_compressed, member.seen_size)
    if (crc, compressed, size) != seen:
        raise PayloadError(
            f"ZIP member {member.name!r} is damaged: its {where} says CRC-32 {crc:08x}, "
            f"{compressed} -> {size} bytes; the data gave {seen[0]:08x}, {seen[1]} -> {seen[2]}"
        )


def _zip64_sizes(extra: bytes, size: int, compressed: int) -> tuple[int, int]:
    """Sizes from a ZIP64 extra field where the 32-bit fields are 0xFFFFFFFF."""
    values = _zip64_values(extra)
    if size == _MAX32 and values:
        size = values.pop(0)
    if compressed == _MAX32 and values:
        compressed = values.pop(0)
    return size, compressed


def _zip64_values(extra: bytes) -> list[int]:
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack("<HH", extra[position : position + 4])
        body = extra[position + 4 : position + 4 + length]
        if tag == 0x0001:
            return [v for (v,) in struct.iter_unpack("<Q", body[: len(body) // 8 * 8])]
        position += 4 + length
    return []


def central_directory(tail: bytes) -> list[tuple[str, int, int, int]]:
    """(name, CRC-32, compressed, size) of each entry; the end record must close it."""
    try:
        return _entries(tail)
    except struct.error:  # a ZIP64 record cut short
        raise PayloadError("the ZIP payload is cut short inside its end records") from None


def _entries(tail: bytes) -> list[tuple[str, int, int, int]]:
    entries = []
    position = 0
    while tail[position : position + 4] == CENTRAL:
        if position + _CENTRAL.size > len(tail):
            break
        fields = _CENTRAL.unpack(tail[position : position + _CENTRAL.size])
        flags, crc, compressed, size = fields[3], fields[7], fields[8], fields[9]
        name_len, extra_len, comment_len = fields[10], fields[11], fields[12]
        start = position + _CENTRAL.size
        name = tail[start : start + name_len].decode(
            "utf-8" if flags & _UTF8 else "cp437", "replace"
        )
        size, compressed = _zip64_sizes(
            tail[start + name_len : start + name_len + extra_len], size, compressed
        )
        entries.append((name, crc, compressed, size))
        position = start + name_len + extra_len + comment_len
    if tail[position : position + 4] == END64:
        (length,) = struct.unpack("<Q", tail[position + 4 : position + 12])
        position += 12 + length
    if tail[position : position + 4] == LOCATOR64:
        position += 20
    if tail[position : position + 4] != END or len(tail) < position + _END.size:
        raise PayloadError("the ZIP payload is cut short: its central directory is incomplete")
    comment_len = _END.unpack(tail[position : position + _END.size])[7]
    if len(tail) != position + _END.size + comment_len:
        raise PayloadError("the ZIP payload has bytes after its end record, or is cut short")
    return entries
