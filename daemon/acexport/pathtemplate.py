"""The output path template: its placeholders, how it renders, and what it may not do.

Placeholders (``workspace``, ``type``, ``job``, ``from``, ``to``) are checked
once; no rendering can leave the output root or name a file the file system
cannot hold. Settings validate with it; the output layout renders with it.
"""

from __future__ import annotations

import functools
import itertools
import string
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

from .windows import ExportWindow, aligned_windows

_PATH_FIELDS = {"workspace", "type", "job", "from", "to"}
_NAME_MAX = 255  # bytes in one path component on Linux file systems
KEY_MAX = 1024  # bytes in an S3 object key
_LONGEST_SUFFIX = ".zst.manifest.json"


def check_path_template(template: str) -> str:
    """Placeholders are known, and no rendering can leave the output directory."""
    if "\x00" in template:
        raise ValueError("the template contains a NUL character")
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from None
    unknown = {name for name in fields if name not in _PATH_FIELDS}
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(_PATH_FIELDS)}")
    sample = datetime(2022, 1, 1, tzinfo=UTC)
    try:
        rendered = render_path(template, "ws", "page", "job", sample, sample)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"template {template!r} does not render: {exc}") from None
    if not rendered.parts:
        raise ValueError("template renders to an empty path")
    return template


def render_path(
    template: str, workspace: str, type_: str, job: str, start: datetime, end: datetime
) -> PurePosixPath:
    """The relative path of a data file; raises ValueError if it would escape."""
    text = template.format(
        workspace=workspace, type=type_, job=job, **{"from": _Instant(start), "to": _Instant(end)}
    )
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or text.endswith("/"):
        raise ValueError(f"path {text!r} must be relative, without '..', naming a file")
    return path


class _Instant:
    """A datetime in a template: formatted as ``format(when, spec)`` would, without
    strftime for the usual ``%Y %m %d %H %M %S``. strftime was most of what rendering a
    key cost (~17,000 instructions a field, three fields a key; bench/instructions.py)."""

    __slots__ = ("when",)

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __format__(self, spec: str) -> str:
        when = self.when
        pattern = _wall_clock_pattern(spec) if spec and when.year >= 1000 else None
        if pattern is None:
            return format(when, spec)
        return pattern.format(when.year, when.month, when.day, when.hour, when.minute, when.second)

    def __str__(self) -> str:
        return str(self.when)

    def __repr__(self) -> str:
        return repr(self.when)


_WALL_CLOCK = {
    "Y": "{0:04d}",
    "m": "{1:02d}",
    "d": "{2:02d}",
    "H": "{3:02d}",
    "M": "{4:02d}",
    "S": "{5:02d}",
}


@functools.lru_cache(maxsize=256)
def _wall_clock_pattern(spec: str) -> str | None:
    """``spec`` as a ``str.format`` pattern over (year, month, day, hour, minute,
    second), if it uses no directive but those six (whose text strftime takes from the
    wall clock alone, for years from 1000 on); otherwise None."""
    pattern = []
    rest = iter(spec)
    for char in rest:
        if char == "%":
            field = _WALL_CLOCK.get(next(rest, ""))
            if field is None:
                return None
            pattern.append(field)
        else:
            pattern.append(char * 2 if char in "{}" else char)  # literal in str.format
    return "".join(pattern)


def name_too_long(
    template: str, workspace: str, type_: str, job: str, key_prefix: str | None = None
) -> str | None:
    """Why a rendered name (with ``.zst.manifest.json``) would not fit the file system,
    or, under an S3 ``key_prefix``, an object key (1024 bytes)."""
    sample = datetime(2022, 12, 31, 23, 59, tzinfo=UTC)
    path = render_path(template, workspace, type_, job, sample, sample)
    if key_prefix is not None:
        key = f"{key_prefix}{path}{_LONGEST_SUFFIX}"
        if len(key.encode()) <= KEY_MAX:
            return None
        return (
            f"renders object keys of {len(key.encode())} bytes with the prefix "
            f"({key[:40]}...), longer than S3's {KEY_MAX}"
        )
    parts = [*path.parts[:-1], path.name + _LONGEST_SUFFIX]
    longest = max(parts, key=lambda part: len(part.encode()))
    if len(longest.encode()) <= _NAME_MAX:
        return None
    return (
        f"renders a name of {len(longest.encode())} bytes ({longest[:40]}...), "
        f"longer than the file system's {_NAME_MAX}"
    )


_SAMPLE_YEAR = 2022


@functools.lru_cache(maxsize=256)
def first_collision(
    template: str, zone: ZoneInfo, length: timedelta
) -> tuple[str, ExportWindow, ExportWindow] | None:
    """Two windows of ``length`` in ``zone`` that render to one name (the later would
    overwrite the earlier, and both be recorded done): the name and the windows.

    Sampled: a year of windows a day or longer; for shorter ones, eight days at the
    year's start and around each of its DST changes. The workspace, type and job are
    the same for every window of a job, so they do not take part.
    """
    year = datetime(_SAMPLE_YEAR, 1, 1, tzinfo=zone)
    if length >= timedelta(days=1):
        spans = [(year, year + timedelta(days=366) + 2 * length)]
    else:
        changes = [year, *_offset_changes(zone, _SAMPLE_YEAR)]
        spans = [(at - timedelta(days=4), at + timedelta(days=4)) for at in changes]
    for start, end in spans:
        seen: dict[PurePosixPath, ExportWindow] = {}
        for window in aligned_windows(zone, length, start, end):
            path = render_path(template, "ws", "type", "job", window.local_start, window.local_end)
            if path in seen:
                return str(path), seen[path], window
            seen[path] = window
    return None


def _offset_changes(zone: ZoneInfo, year: int) -> list[datetime]:
    """The days of ``year`` on which ``zone``'s UTC offset changes (DST)."""
    days = [datetime(year, 1, 1, 12, tzinfo=zone) + timedelta(days=n) for n in range(366)]
    return [b for a, b in itertools.pairwise(days) if a.utcoffset() != b.utcoffset()]
