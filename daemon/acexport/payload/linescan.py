"""What NDJSON lines hold, read at memory speed: the hot path's per-byte scans.

Three scans touch every byte of a plain export: the UTF-8 check, the line-break
count with its shape check (raw bodies), and the split's reading of each line's
timestamp (with, for a batch across windows, the grouping of its lines by window).
In Python each holds the GIL, so they took turns with each other and with the
loop (bench/README.md, "The hot path"). ``_linescan.c`` does the same with the
GIL released, so they run beside inflating and beside each other.
It is built at install where a C compiler is found; elsewhere the Python below
runs, with the same answers (tests/test_linescan.py compares them), only slower.
"""

from __future__ import annotations

import bisect
import codecs
import collections
import functools
import re
from collections.abc import Callable, Sequence

# A line's value may be found by the split's text routing: at most this many shapes.
MAX_SHAPES = 32
# Digits 1-9 as 0: a timestamp's shape, the same for every instant of one form.
ZEROED = bytes.maketrans(b"123456789", b"000000000")
_SORTABLE = bytes.maketrans(b"Z", b" ")
_UTF8_SLICE = 256 * 1024

# (lines, shapes, low, high); see py_first_values.
FirstValues = tuple[int, tuple[bytes, ...] | None, bytes | None, bytes | None]


def py_utf8_rest(data: bytes | memoryview, carried: bytes = b"") -> bytes | None:
    """The unfinished character at the end of ``carried + data`` (to carry into the
    next piece), or None if the bytes are not UTF-8."""
    # ASCII is UTF-8: a view of the split's is ASCII if the piece it is cut from is
    # (asked of an immutable piece only; a bytearray may change after it was asked).
    base = data.obj if isinstance(data, memoryview) else data
    if not carried and isinstance(base, bytes) and base.isascii():
        return b""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    try:
        decoder.decode(carried)
        # In slices, so the decoded text (up to 4 bytes a character) stays small.
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
    except UnicodeDecodeError:
        return None
    rest: bytes = decoder.getstate()[0]
    return rest


def py_line_breaks(data: bytes) -> tuple[int, int]:
    """Line breaks in ``data``, and those of them with ``}`` (or ``}\\r``) before and
    ``{`` after, both within ``data``."""
    return data.count(b"\n"), data.count(b"}\n{") + data.count(b"}\r\n{")


@functools.cache
def _value_pattern(key: bytes) -> re.Pattern[bytes]:
    # The key, blanks, a colon, blanks and a string: each line's first, the rest of the
    # line skipped, so one findall gives one value per line that has it.
    blanks = rb"[ \t\r\f\v]*"
    return re.compile(re.escape(key) + blanks + b":" + blanks + rb'"([^"\n]*)"[^\n]*\n')


def line_values(data: bytes, start: int, end: int, key: bytes) -> list[bytes]:
    """The first value of ``key`` on each whole line of ``data[start:end]`` that has one."""
    return _value_pattern(key).findall(data, start, end)


def py_first_values(data: bytes, start: int, end: int, key: bytes) -> FirstValues:
    """Over the whole lines of ``data[start:end]``: how many there are and, if every
    one has ``key`` then optional blanks, ``:``, blanks and a string, the distinct
    shapes of each line's first such value (digits 1-9 as 0, in order of first
    appearance; None past ``MAX_SHAPES``) and the least and greatest value, compared
    with ``Z`` as a space (the split's sortable forms). ``shapes``, ``low`` and
    ``high`` are None when a line has no such value."""
    stop = data.rfind(b"\n", start, end) + 1  # whole lines only
    if stop <= start:
        return 0, (), None, None
    lines = data.count(b"\n", start, stop)
    values = line_values(data, start, stop, key)
    if len(values) != lines:
        return lines, None, None, None
    shapes = tuple(dict.fromkeys(value.translate(ZEROED) for value in values))
    low = min(values, key=lambda value: value.translate(_SORTABLE))
    high = max(values, key=lambda value: value.translate(_SORTABLE))
    return lines, shapes if len(shapes) <= MAX_SHAPES else None, low, high


def py_group_lines(
    data: bytes, start: int, end: int, key: bytes, edges: Sequence[bytes]
) -> list[tuple[int, int, bytes]]:
    """The whole lines of ``data[start:end]`` grouped by the place of their first
    value of ``key`` among the sorted ``edges`` (``bisect_right``, ``Z`` as a space),
    in order of place: ``(place, count, lines)``, each group's lines joined in their
    order. Every line must have such a value (``first_values`` said so)."""
    stop = data.rfind(b"\n", start, end) + 1
    if stop <= start:
        return []
    values = [value.translate(_SORTABLE) for value in line_values(data, start, stop, key)]
    pieces = data[start:stop].split(b"\n")[:-1]
    if len(values) != len(pieces):
        raise ValueError("group_lines: a line has no value of the key")
    places = list(map(functools.partial(bisect.bisect_right, edges), values))
    order = sorted(range(len(places)), key=places.__getitem__)  # stable: lines keep order
    ordered = [pieces[index] for index in order]
    groups, at = [], 0
    for place, taken in sorted(collections.Counter(places).items()):
        groups.append((place, taken, b"\n".join(ordered[at : at + taken]) + b"\n"))
        at += taken
    return groups


try:
    from . import _linescan
except ImportError:  # built without a compiler: the same scans, in Python
    _linescan = None  # type: ignore[assignment]

COMPILED = _linescan is not None
first_values: Callable[[bytes, int, int, bytes], FirstValues] = (
    _linescan.first_values if COMPILED else py_first_values
)
line_breaks: Callable[[bytes], tuple[int, int]] = (
    _linescan.line_breaks if COMPILED else py_line_breaks
)
utf8_rest: Callable[[bytes | memoryview, bytes], bytes | None] = (
    _linescan.utf8_rest if COMPILED else py_utf8_rest
)
group_lines: Callable[[bytes, int, int, bytes, Sequence[bytes]], list[tuple[int, int, bytes]]] = (
    _linescan.group_lines if COMPILED else py_group_lines
)


def utf8_reason(data: bytes | memoryview, carried: bytes = b"") -> str:
    """Why ``carried + data`` is not UTF-8, in Python's words (only asked on failure)."""
    try:
        (bytes(carried) + bytes(data)).decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason
    return "unexpected end of data"
