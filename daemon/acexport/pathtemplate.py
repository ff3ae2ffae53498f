"""The output path template: its placeholders, how it renders, and what it may not do.

Placeholders (``workspace``, ``type``, ``job``, ``from``, ``to``) are checked
once; no rendering can leave the output root or name a file the file system
cannot hold. Settings validate with it; the output layout renders with it.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime
from pathlib import PurePosixPath

_PATH_FIELDS = {"workspace", "type", "job", "from", "to"}
_NAME_MAX = 255  # bytes in one path component on Linux file systems


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
    text = template.format(workspace=workspace, type=type_, job=job, **{"from": start, "to": end})
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts or text.endswith("/"):
        raise ValueError(f"path {text!r} must be relative, without '..', naming a file")
    return path


def name_too_long(template: str, workspace: str, type_: str, job: str) -> str | None:
    """Why a rendered name (with ``.zst.manifest.json``) would not fit the file system."""
    sample = datetime(2022, 12, 31, 23, 59, tzinfo=UTC)
    path = render_path(template, workspace, type_, job, sample, sample)
    parts = [*path.parts[:-1], path.name + ".zst.manifest.json"]
    longest = max(parts, key=lambda part: len(part.encode()))
    if len(longest.encode()) <= _NAME_MAX:
        return None
    return (
        f"renders a name of {len(longest.encode())} bytes ({longest[:40]}...), "
        f"longer than the file system's {_NAME_MAX}"
    )
