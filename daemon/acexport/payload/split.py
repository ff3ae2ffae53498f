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
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ..errors import ExportFailed
from ..protocol import FILTER_COLUMNS

# Windows one request may be split into: each has its file (and compressor) open
# until the payload ends, since AC's records come in no order.
MAX_WINDOWS = 100
# A UTC instant as a string that sorts as the instant does: microseconds, fixed width.
_KEY_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
# BigQuery's ``2026-11-29 23:59:59.999400 UTC`` and ISO 8601 (``T``, ``Z`` or an offset).
_TIMESTAMP = re.compile(
    rb"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?\s*(Z|UTC|[+-]\d\d:?\d\d)?"
)


# BigQuery's form of a TIMESTAMP with its digits zeroed, to at most microseconds: such
# strings sort as their instants (against bounds written by ``bigquery_text``).
_ZEROED = bytes.maketrans(b"123456789", b"000000000")
_BIGQUERY_SHAPES = frozenset(
    b"0000-00-00 00:00:00" + (b"." + b"0" * digits if digits else b"") + b" UTC"
    for digits in range(7)
)


# Keys of instants outside datetime's range once in UTC: they sort outside every range.
_BEFORE_ALL = b"0000-00-00T00:00:00.000000"
_AFTER_ALL = b"9999-99-99T99:99:99.999999"


def instant_key(when: datetime) -> bytes:
    return when.astimezone(UTC).strftime(_KEY_FORMAT).encode()


def bigquery_text(when: datetime) -> bytes:
    """``when`` as BigQuery writes a TIMESTAMP, fraction without trailing zeros: a value
    of the same form sorts before it exactly when its instant is earlier."""
    utc = when.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}".rstrip("0") if utc.microsecond else ""
    return f"{utc:%Y-%m-%d %H:%M:%S}{fraction} UTC".encode()


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


class RecordSplit:
    """Routes NDJSON lines (as the converters write them) to one writer per window.

    ``write_many`` takes chunks cut anywhere; whole lines are routed, the rest waits
    for the next chunk. Blocks, like everything in payload/: a sink thread runs it.
    """

    def __init__(self, span: SplitPlan, writers: Sequence[Callable[[list[bytes]], None]]) -> None:
        column = FILTER_COLUMNS[span.type]
        self._value = re.compile(rb'"' + column.encode() + rb'"\s*:\s*"([^"]*)"')
        # Each line's first such value, for a whole batch of lines at C speed (anchored on
        # the line break before it, which the regex engine finds byte by byte in C).
        key = rb'"' + column.encode() + rb'"\s*:\s*"([^"\n]*)"'
        self._first_values = re.compile(rb"\n[^\n]*?" + key)
        self._column = column
        self._low = instant_key(span.first)
        # AC's inclusive last millisecond: every microsecond of it is in the range.
        self._high = instant_key(span.last)[:-3] + b"999"
        self._starts = [instant_key(start) for start, _ in span.windows]
        self._ends = [instant_key(end) for _, end in span.windows]
        # The same bounds in BigQuery's form, for batches whose values all have it.
        self._bq_low = bigquery_text(span.first)
        self._bq_high = bigquery_text(span.last + timedelta(microseconds=999))
        self._bq_starts = [bigquery_text(start) for start, _ in span.windows]
        self._bq_ends = [bigquery_text(end) for _, end in span.windows]
        self._writers = list(writers)
        self.rows = [0] * len(span.windows)
        self.skipped = 0
        self._carry: list[bytes] = []

    def write_many(self, chunks: list[bytes]) -> None:
        routed: list[list[bytes]] = [[] for _ in self._writers]
        for chunk in chunks:
            if not chunk:
                continue
            cut = chunk.rfind(b"\n")
            if cut < 0:
                self._carry.append(chunk)
                continue
            lines = chunk[: cut + 1]
            if self._carry:
                lines = b"".join(self._carry) + lines
            self._carry = [chunk[cut + 1 :]] if cut + 1 < len(chunk) else []
            self._route(lines, routed)
        for writer, window_lines in zip(self._writers, routed, strict=True):
            if window_lines:
                writer(window_lines)

    def _route(self, lines: bytes, routed: list[list[bytes]]) -> None:
        if not self._route_bigquery(lines, routed):
            self._route_each(lines, routed)

    def _route_bigquery(self, lines: bytes, routed: list[list[bytes]]) -> bool:
        """The common case without a Python step per record: every line's value in
        BigQuery's form and inside the range. A batch wholly inside one window goes
        there as it is (a one-window request: nearly every batch); else each line is
        placed by comparing its value's text. False (nothing routed) for anything else:
        ``_route_each`` decides, and names what is wrong."""
        values = self._first_values.findall(b"\n" + lines)
        count = lines.count(b"\n")
        if len(values) != count or not values:
            return False  # a line without the column, or a blank line
        if {value.translate(_ZEROED) for value in values} - _BIGQUERY_SHAPES:
            return False  # another form (ISO 8601, an offset, nanoseconds)
        low, high = min(values), max(values)
        if low < self._bq_low or high > self._bq_high:
            return False
        starts, ends, rows = self._bq_starts, self._bq_ends, self.rows
        index = bisect.bisect_right(starts, low) - 1
        if index >= 0 and high < ends[index]:
            routed[index].append(lines)
            rows[index] += count
            return True
        for value, line in zip(values, lines.split(b"\n"), strict=False):
            index = bisect.bisect_right(starts, value) - 1
            if index < 0 or value >= ends[index]:
                self.skipped += 1
                continue
            routed[index].append(line + b"\n")
            rows[index] += 1
        return True

    def _route_each(self, lines: bytes, routed: list[list[bytes]]) -> None:
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
