"""Records as AC serves them, checked and turned into NDJSON lines, in linear time.

``NdjsonLines`` passes JSON Lines through and checks every line at C speed:
each line break must sit between ``}`` and ``{`` (so an HTML page or any other
text in the middle is caught), the bytes must be UTF-8, and the first and last
lines must parse. ``ArrayToLines`` splits a streamed JSON array into lines.
Either refuses a payload that is one status-shaped object (see ``protocol``):
that is AC saying "not ready", not a record.

Everything here blocks and runs in a sink worker thread. Nothing is quadratic:
partial lines are kept as lists of pieces, and an unfinished array element is
only parsed again once its buffered text has doubled.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from typing import Any

from ..errors import PayloadError
from ..protocol import is_status_shaped
from .linescan import line_breaks, utf8_reason, utf8_rest

Write = Callable[[list[bytes]], None]
MAX_RECORD_BYTES = 64 * 1024 * 1024  # one record bigger than this is not AC data


def _parse_record(line: bytes, which: str) -> Any:
    try:
        return json.loads(line)
    except UnicodeDecodeError as exc:  # named as a raw body's bytes are, whatever the line
        raise PayloadError(f"the data is not valid UTF-8 ({exc.reason})") from None
    except (ValueError, RecursionError):
        raise PayloadError(
            f"the {which} line is not valid JSON: the data is damaged or cut short"
        ) from None


def _refuse_lone_status(records: int, first: Any) -> None:
    if records == 1 and is_status_shaped(first):
        raise PayloadError("a status object was served as data (AC's export is not ready)")


def _joins(data: bytes) -> int:
    return line_breaks(data)[1]


class _LineShape:
    """Counts line breaks that do not sit between ``}`` and ``{`` (``}\r\n{`` too).

    One scan per chunk (``linescan.line_breaks``), plus the few pairs that straddle
    two chunks.
    """

    def __init__(self) -> None:
        self.breaks = 0
        self.joined = 0  # breaks with "}" (or "}\r") before and "{" after
        self._last = b""  # the stream's last three bytes so far

    def feed(self, data: bytes) -> int:
        breaks, joined = line_breaks(data)
        self.breaks += breaks
        self.joined += joined
        if self._last:
            # Around the seam: what the joined bytes hold, less what each side held.
            head = data[:3]
            self.joined += _joins(self._last + head) - _joins(self._last) - _joins(head)
        self._last = (self._last + data[-3:])[-3:]
        return breaks

    def misplaced(self) -> int:
        """Line breaks out of place, once the stream has ended."""
        final_break = 1 if self._last.endswith(b"\n") else 0
        return self.breaks - final_break - self.joined


class Utf8Check:
    """That a byte stream is UTF-8, fed in pieces (a character may straddle two).

    The check runs without the GIL where linescan's C module is built.
    """

    def __init__(self) -> None:
        self._carried = b""  # an unfinished character at the last piece's end

    def feed(self, data: bytes | memoryview) -> None:
        rest = utf8_rest(data, self._carried)
        if rest is None:
            raise PayloadError(f"the data is not valid UTF-8 ({utf8_reason(data, self._carried)})")
        self._carried = rest

    def finish(self) -> None:
        if self._carried:
            raise PayloadError(f"the data is not valid UTF-8 ({utf8_reason(self._carried)})")


class LineChecks(Utf8Check):
    """What every NDJSON line must be: UTF-8, broken only between ``}`` and ``{``.

    Independent of ``NdjsonLines``' own state, so it can run in another thread
    (the hashing one) while the lines are written.
    """

    def __init__(self) -> None:
        super().__init__()
        self._shape = _LineShape()

    def feed(self, data: bytes | memoryview) -> None:
        super().feed(data)
        self._shape.feed(bytes(data))  # raw bodies' chunks: bytes already, not copied

    def finish(self) -> None:
        super().finish()
        misplaced = self._shape.misplaced()
        if misplaced:
            raise PayloadError(
                f"{misplaced} line break(s) of the NDJSON body are not between JSON objects "
                "(an HTML page, blank lines or other text in the data)"
            )


class NdjsonLines:
    """JSON Lines passed through as they are, first and last lines parsed.

    Lines are counted where they are written (the output file, or the split), once:
    here only whether there is more than one, for the lone status object.
    ``checks`` (a ``LineChecks``, or for a ZIP member a ``Utf8Check``) checks every
    line in the same thread; None when the caller runs its own elsewhere
    (``PayloadWriter`` does, in the hashing thread).
    """

    def __init__(self, write: Write, checks: Utf8Check | None = None) -> None:
        self._write = write
        self._checks = checks
        self._breaks = 0  # line breaks seen, counted up to two
        self._head: list[bytes] | None = []  # pieces of the first line until it is whole
        self._tail: list[bytes] = []  # pieces after the last line break
        self._tail_bytes = 0
        self._first: Any = None

    def feed_many(self, chunks: list[bytes]) -> None:
        self._write(chunks)
        for data in chunks:
            if data:
                self._account(data)

    def _account(self, data: bytes) -> None:
        if self._checks is not None:
            self._checks.feed(data)
        if self._head is not None:
            self._take_head(data)
        last = data.rfind(b"\n")
        if last >= 0:
            if self._breaks < 2:
                self._breaks += 1 if data.find(b"\n") == last else 2
            rest = data[last + 1 :]
            self._tail, self._tail_bytes = [rest], len(rest)
        else:
            self._tail.append(data)
            self._tail_bytes += len(data)
        if self._tail_bytes > MAX_RECORD_BYTES:
            raise PayloadError("a line longer than 64 MiB: this is not NDJSON")

    def _take_head(self, data: bytes) -> None:
        assert self._head is not None
        cut = data.find(b"\n")
        self._head.append(data if cut < 0 else data[:cut])
        if cut >= 0:
            self._first = _parse_record(b"".join(self._head), "first")
            self._head = None
        elif sum(map(len, self._head)) > MAX_RECORD_BYTES:
            raise PayloadError("a line longer than 64 MiB: this is not NDJSON")

    def finish(self) -> None:
        if self._checks is not None:
            self._checks.finish()
        tail = b"".join(self._tail)
        lines = min(self._breaks, 2)
        if tail.strip():
            last = _parse_record(tail, "last")  # no final line break: it must still be whole
            self._write([b"\n"])
            lines += 1
            if self._head is not None:
                self._first, self._head = last, None
        _refuse_lone_status(lines, self._first)


class ArrayToLines:
    """A streamed JSON array, one element per output line."""

    def __init__(self, write: Write) -> None:
        self._write = write
        self.records = 0
        self._pending: list[str] = []  # decoded text not consumed yet
        self._pending_chars = 0
        self._pending_bytes = 0  # its size as served: the record cap is in bytes
        self._parse_at = 0  # parse again once this much text is buffered (doubling)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._decoder = json.JSONDecoder()
        self._state = "open"  # open -> value -> comma -> ... -> done
        self._first: Any = None

    def feed_many(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self.feed(data)

    def feed(self, data: bytes, final: bool = False) -> None:
        try:
            piece = self._utf8.decode(data, final)
        except UnicodeDecodeError as exc:
            raise PayloadError(f"the data is not valid UTF-8 ({exc.reason})") from None
        self._pending.append(piece)
        self._pending_chars += len(piece)
        self._pending_bytes += len(data)
        waiting = self._pending_chars < self._parse_at and self._pending_bytes <= MAX_RECORD_BYTES
        if waiting and not final:
            return  # an element is still incomplete: wait until the text has doubled
        text = "".join(self._pending)
        lines, pos, complete = self._split(text, final)
        rest = text[pos:]
        # Counted in bytes, not characters: 64 Mi four-byte characters are 256 MiB.
        rest_bytes = len(rest.encode("utf-8")) if rest else 0
        self._pending, self._pending_chars, self._pending_bytes = [rest], len(rest), rest_bytes
        self._parse_at = 0 if complete else 2 * len(rest)
        if rest_bytes > MAX_RECORD_BYTES:
            raise PayloadError("a JSON array element larger than 64 MiB")
        if lines:
            if self.records == 0:
                self._first = _parse_record(lines[0].encode("utf-8"), "first")
            self.records += len(lines)
            self._write([("\n".join(lines) + "\n").encode("utf-8")])

    def _split(self, text: str, final: bool) -> tuple[list[str], int, bool]:
        """Elements found, where parsing stopped, and whether it stopped between elements."""
        lines: list[str] = []
        pos, end = 0, len(text)
        while True:
            while pos < end and text[pos] in " \t\r\n":
                pos += 1
            if pos >= end:
                return lines, pos, True
            char = text[pos]
            if self._state == "open":
                if char != "[":
                    raise PayloadError("a JSON payload that is not an array")
                self._state, pos = "first", pos + 1
            elif self._state in ("first", "value"):
                if char == "]" and self._state == "first":
                    self._state, pos = "done", pos + 1
                    continue
                try:
                    _, stop = self._decoder.raw_decode(text, pos)
                except json.JSONDecodeError:
                    return lines, pos, False  # incomplete: wait for more (checked at the end)
                except RecursionError:
                    raise PayloadError("a JSON array element nested too deeply") from None
                if stop == end and not final:
                    return lines, pos, False  # a number at the buffer's end may go on
                # Raw line breaks can only be whitespace between tokens in valid JSON.
                lines.append(text[pos:stop].replace("\n", " ").replace("\r", " "))
                self._state, pos = "comma", stop
            elif self._state == "comma":
                if char == ",":
                    self._state, pos = "value", pos + 1
                elif char == "]":
                    self._state, pos = "done", pos + 1
                else:
                    raise PayloadError(f"unexpected {char!r} between JSON array elements")
            else:
                raise PayloadError("data after the end of the JSON array")

    def finish(self) -> None:
        self.feed(b"", final=True)
        if self._state != "done":
            raise PayloadError("the JSON array ends early: the download was cut short")
        _refuse_lone_status(self.records, self._first)
