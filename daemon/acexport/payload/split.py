"""Records of one time-series request, each kept in the one window its timestamp is in.

AC compares ``fromDate``/``toDate`` at millisecond precision, inclusive at both
ends, while its timestamps carry microseconds: no request alone cuts a window
exactly (design section 4). So a time series is asked for up to ``toDate`` = the
span's end, and each record goes to the window with ``start <= t < end``: an
event in a window's last millisecond is in it, a page row of the boundary hour
only in the next window. A span of many windows (a coalesced request) is split
the same way, into one output file per window, while the payload streams: the
records are unordered, so every window's file is open until the end.

A record whose timestamp cannot be read, or lies outside the requested range, is
not dropped: AC promised the range, so the export fails with the reason. A record
inside the range but in no window being written (the span's end, or a window whose
file is already in the store) is counted as skipped.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from ..errors import ExportFailed
from ..protocol import FILTER_COLUMNS
from .linescan import first_values, group_lines

# Windows one request may be split into: each has its file (and compressor) open
# until the payload ends, since AC's records come in no order.
MAX_WINDOWS = 100
# A UTC instant as a string that sorts as the instant does: microseconds, fixed width.
_KEY_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
# BigQuery's ``2026-11-29 23:59:59.999400 UTC`` and ISO 8601 (``T``, ``Z`` or an offset).
_TIMESTAMP = re.compile(
    rb"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\s*(Z|UTC|[+-]\d\d:?\d\d)?"
)


# The forms whose texts sort as their instants (fraction digits trimmed or not), once a
# ``Z`` is read as a space: a batch whose values all have one of them is placed by
# comparing text with bounds written in it, no Python step per record. Offsets other
# than UTC's take the record-by-record path, which converts each.
_FRACTIONS = (b"", *(b"." + b"0" * digits for digits in range(1, 10)))


@dataclass(frozen=True)
class _TextForm:
    separator: bytes  # between date and time
    zone: bytes  # as written after the time
    sortable_zone: bytes  # as compared: sorts before "." and every digit

    @property
    def shapes(self) -> frozenset[bytes]:
        clock = b"0000-00-00" + self.separator + b"00:00:00"
        return frozenset(clock + fraction + self.zone for fraction in _FRACTIONS)

    @property
    def sortable(self) -> bytes | None:
        """The translation that makes values of this form sortable, if they need one."""
        return None if self.zone == self.sortable_zone else bytes.maketrans(b"Z", b" ")

    def text(self, when: datetime) -> bytes:
        return _form_text(self, when.astimezone(UTC))


# Each export's split writes its window's edges in the data's form, and its range as
# keys: strftime took ~15 of those an export (4% of a small export's instructions,
# bench/instructions.py), for the same few days' edges at every workspace. Keyed in
# UTC, where an instant has one text whatever zone it came in.
@functools.lru_cache(maxsize=4096)
def _form_text(form: _TextForm, utc: datetime) -> bytes:
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    clock = f"{utc:%Y-%m-%d}{form.separator.decode()}{utc:%H:%M:%S}{fraction}"
    return clock.encode() + form.sortable_zone


@functools.lru_cache(maxsize=4096)
def _edge_key(utc: datetime) -> bytes:
    return instant_key(utc)


_FORMS = (
    _TextForm(b" ", b" UTC", b" UTC"),  # BigQuery's
    _TextForm(b"T", b"Z", b" "),  # ISO 8601 in UTC, as AC's older exports wrote it
    _TextForm(b" ", b"", b""),  # no zone: UTC
    _TextForm(b"T", b"", b""),
)
_FORM_OF_SHAPE = {shape: form for form in _FORMS for shape in form.shapes}


@dataclass(frozen=True)
class _TextBounds:
    """A split's range and windows written in one form: ``edges`` are the windows'
    starts and ends, sorted; ``slots[k]`` the window of values with ``k`` edges at or
    before them (None: in no window being written)."""

    low: bytes
    high: bytes  # the first instant after the range
    edges: list[bytes]
    slots: list[int | None]


# Keys of instants outside datetime's range once in UTC: they sort outside every range.
_BEFORE_ALL = b"0000-00-00T00:00:00.000000"
_AFTER_ALL = b"9999-99-99T99:99:99.999999"


def instant_key(when: datetime) -> bytes:
    return when.astimezone(UTC).strftime(_KEY_FORMAT).encode()


def timestamp_key(value: bytes) -> bytes | None:
    """``value`` as an ``instant_key`` (fractions beyond microseconds cut off, which
    keeps ``start <= t < end`` exact for bounds in whole microseconds); None if it is
    not a timestamp. No zone means UTC, as BigQuery writes it."""
    found = _TIMESTAMP.fullmatch(value.strip())
    if found is None:
        return None
    day, clock, fraction, zone = found.groups()
    micros = (fraction or b"").ljust(6, b"0")[:6]
    if zone in (None, b"Z", b"UTC", b"+00:00", b"+0000", b"-00:00"):
        return day + b"T" + clock + b"." + micros
    try:
        parsed = datetime.fromisoformat(f"{day.decode()}T{clock.decode()}{zone.decode()}")
    except ValueError:
        return None
    try:
        return instant_key(parsed)[:20] + micros
    except OverflowError:
        # In UTC it is year 0 or 10000 (0001-01-01T00:30+01:00, 9999-12-31T23:00-02:00):
        # outside every request, which the caller says, rather than a traceback.
        return _BEFORE_ALL if parsed.year == 1 else _AFTER_ALL


@dataclass(frozen=True)
class SplitPlan:
    """A time series' request to split: its type, what was asked of AC (``first`` to
    ``last``, both inclusive, as AC compares) and the windows (``[start, end)``,
    sorted, not overlapping) whose files are written."""

    type: str
    first: datetime
    last: datetime
    windows: Sequence[tuple[datetime, datetime]]

    def __post_init__(self) -> None:
        if not self.windows:
            raise ValueError("a split needs at least one window")


# Lines handed to a window's writer: a view of the inflated piece they came in (its
# lines are not copied out of it), or lines of their own.
Lines = bytes | memoryview


class _Batch(NamedTuple):
    """Whole lines: ``data[start:end]``, not copied out of ``data``."""

    data: bytes
    start: int
    end: int

    def view(self) -> Lines:
        data, start, end = self
        return data if start == 0 and end == len(data) else memoryview(data)[start:end]


class RecordSplit:
    """Routes NDJSON lines (as the converters write them) to one writer per window.

    ``write_many`` takes chunks cut anywhere; whole lines are routed, the rest waits
    for the next chunk. Blocks, like everything in payload/: a sink thread runs it.
    """

    def __init__(self, span: SplitPlan, writers: Sequence[Callable[[list[Lines]], None]]) -> None:
        column = FILTER_COLUMNS[span.type]
        self._value = re.compile(rb'"' + column.encode() + rb'"\s*:\s*"([^"]*)"')
        self._key = b'"' + column.encode() + b'"'
        self._column = column
        self._span = span
        self._low = _edge_key(span.first.astimezone(UTC))
        # AC's inclusive last millisecond: every microsecond of it is in the range.
        self._high = _edge_key(span.last.astimezone(UTC))[:-3] + b"999"
        self._starts = [_edge_key(start.astimezone(UTC)) for start, _ in span.windows]
        self._ends = [_edge_key(end.astimezone(UTC)) for _, end in span.windows]
        self._bounds: dict[_TextForm, _TextBounds] = {}  # per form, when first seen
        self._writers = list(writers)
        self.rows = [0] * len(span.windows)
        self.skipped = 0
        self.lines = 0  # every line routed, blank ones too
        self._carry: list[bytes] = []

    def write_many(self, chunks: list[bytes]) -> None:
        routed: list[list[Lines]] = [[] for _ in self._writers]
        for chunk in chunks:
            if not chunk:
                continue
            cut = chunk.rfind(b"\n")
            if cut < 0:
                self._carry.append(chunk)
                continue
            start = 0
            if self._carry:  # the line this chunk ends, alone: the rest is not copied
                start = chunk.find(b"\n") + 1
                self._carry.append(chunk[:start])
                line = b"".join(self._carry)
                self._route(_Batch(line, 0, len(line)), routed)
            if start <= cut:
                self._route(_Batch(chunk, start, cut + 1), routed)
            self._carry = [chunk[cut + 1 :]] if cut + 1 < len(chunk) else []
        for writer, window_lines in zip(self._writers, routed, strict=True):
            if window_lines:
                writer(window_lines)

    def _route(self, batch: _Batch, routed: list[list[Lines]]) -> None:
        data, start, end = batch
        # The batch's lines read in one scan, without the GIL (linescan): their count,
        # and, if every line has the column, its values' shapes and least and greatest.
        count, shapes, low, high = first_values(data, start, end, self._key)
        self.lines += count
        if shapes is not None and low is not None and high is not None:
            forms = {_FORM_OF_SHAPE.get(shape) for shape in shapes}
            if len(forms) == 1 and None not in forms:
                (form,) = forms
                assert form is not None
                if self._route_by_text(form, batch, count, low, high, routed):
                    return
        self._route_each(data[start:end], routed)

    def _text_bounds(self, form: _TextForm) -> _TextBounds:
        bounds = self._bounds.get(form)
        if bounds is None:
            span = self._span
            edges = sorted({form.text(when) for window in span.windows for when in window})
            starts = {form.text(start): index for index, (start, _) in enumerate(span.windows)}
            slots = [None, *(starts.get(edge) for edge in edges)]
            last = span.last + timedelta(milliseconds=1)  # AC's last millisecond, whole
            bounds = _TextBounds(form.text(span.first), form.text(last), edges, slots)
            self._bounds[form] = bounds
        return bounds

    def _route_by_text(
        self,
        form: _TextForm,
        batch: _Batch,
        count: int,
        low: bytes,
        high: bytes,
        routed: list[list[Lines]],
    ) -> bool:
        """The common case without a Python step per record: every one of the ``count``
        lines' values in one sortable form (``low`` and ``high`` the least and
        greatest), inside the range. A batch wholly inside one window goes there as it
        is (nearly every batch of a one-window request, and of a span whose records
        come in time order); else its lines are grouped by window. False (nothing
        routed) for a value outside the range: ``_route_each`` names it."""
        if form.sortable is not None:
            low, high = low.translate(form.sortable), high.translate(form.sortable)
        bounds = self._text_bounds(form)
        if low < bounds.low or high >= bounds.high:
            return False
        first = bisect.bisect_right(bounds.edges, low)
        if first == bisect.bisect_right(bounds.edges, high):
            window = bounds.slots[first]
            if window is None:
                self.skipped += count
            else:
                routed[window].append(batch.view())
                self.rows[window] += count
        else:
            self._group_by_window(bounds, batch, routed)
        return True

    def _group_by_window(
        self, bounds: _TextBounds, batch: _Batch, routed: list[list[Lines]]
    ) -> None:
        """A batch across windows: its lines grouped by window in one scan (linescan)."""
        groups = group_lines(batch.data, batch.start, batch.end, self._key, bounds.edges)
        for place, taken, lines in groups:
            window = bounds.slots[place]
            if window is None:
                self.skipped += taken
            else:
                routed[window].append(lines)
                self.rows[window] += taken

    def _route_each(self, lines: bytes, routed: list[list[Lines]]) -> None:
        starts, ends, rows = self._starts, self._ends, self.rows
        for line in lines.splitlines(keepends=True):
            if not line.strip():
                continue
            found = self._value.search(line)
            key = None if found is None else timestamp_key(found.group(1))
            if key is None:
                raise ExportFailed(
                    f"a record's {self._column} is missing or not a timestamp: it cannot be "
                    f"placed in a window ({line[:120]!r})"
                )
            if key < self._low or key > self._high:
                raise ExportFailed(
                    f"a record's {self._column} {key.decode()} lies outside the requested range "
                    f"{self._low.decode()} to {self._high.decode()}, which AC promised: the "
                    "export is not trusted"
                )
            index = bisect.bisect_right(starts, key) - 1
            if index < 0 or key >= ends[index]:
                self.skipped += 1
                continue
            routed[index].append(line)
            rows[index] += 1

    def finish(self) -> None:
        """Route a last line that had no line break (the converters end with one)."""
        if self._carry and b"".join(self._carry).strip():
            self.write_many([b"\n"])
