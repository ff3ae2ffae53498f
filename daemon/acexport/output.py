"""What readers of the output see: the layout of keys, the manifest, the store seam.

The path template's placeholders (``workspace``, ``type``, ``job``, ``from``,
``to``) are checked once, and no rendering can leave the output root or name
a file the file system cannot hold. Every output store (a local directory,
object storage) takes the same relative keys, writes the data first and its
manifest last, and can list the manifests under a prefix: a window whose
manifest exists is done, whatever the ledger says.
"""

from __future__ import annotations

import json
import os
import string
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from .windows import ExportWindow

MANIFEST_SUFFIX = ".manifest.json"
SUFFIXES = {"gzip": ".gz", "zstd": ".zst"}  # appended to a data file's name by compression

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


def manifest_key(key: PurePosixPath) -> PurePosixPath:
    """The completion marker beside a data file."""
    return key.with_name(key.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class OutputLayout:
    """The rendered ``template`` (+ ``.gz`` or ``.zst``), relative to the store's root."""

    template: str
    compression: str

    def key_for(
        self, workspace: str, type_: str, job: str, window: ExportWindow, compression: str = ""
    ) -> PurePosixPath:
        """Where a window's data file goes (``compression`` overrides the layout's)."""
        key = render_path(
            self.template, workspace, type_, job, window.local_start, window.local_end
        )
        suffix = SUFFIXES.get(compression or self.compression, "")
        if suffix and key.suffix != suffix:
            key = key.with_name(key.name + suffix)
        return key


@dataclass(frozen=True)
class Manifest:
    """The completion marker written beside each data file (design section 5).

    Its camelCase field names are AC's, and the contract with readers of the output.
    """

    workspace: str
    type: str
    fromDate: str
    toDate: str
    createdDate: str | None
    downloadedAt: str
    file: str
    records: int
    payload_bytes: int
    payload_sha256: str
    format: str
    compression: str

    def to_json(self) -> bytes:
        # What json.dumps(indent=2) writes for these flat fields, without its pure-Python
        # encoder (indent turns the C one off): a tenth of the Python time per export.
        fields = ",\n".join(
            f"  {json.dumps(name)}: {json.dumps(value, ensure_ascii=False)}"
            for name, value in vars(self).items()
        )
        return ("{\n" + fields + "\n}\n").encode("utf-8")


class OutputStore(Protocol):
    """Where committed data lives: a local directory or an object-storage prefix."""

    def location(self, key: PurePosixPath) -> str:
        """How a key is named to people (a path, or an ``s3://`` URL); never credentials."""
        ...

    async def start(self, stack: AsyncExitStack) -> None:
        """Connect, check access, clean what crashed runs left; closed with ``stack``."""
        ...

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        """Store the file ``data`` under ``key``, then its manifest. Idempotent:
        committing the same key again replaces, never duplicates. Returns the
        manifest's location; the caller removes ``data`` if it is still there."""
        ...

    async def manifests_under(self, prefix: str) -> set[PurePosixPath]:
        """The data keys (not manifest keys) whose manifest exists under ``prefix``."""
        ...


def common_prefix(keys: list[PurePosixPath]) -> str:
    """The longest string every key starts with: one listing covers them all."""
    # Characters, not path components: an S3 prefix need not end at a "/".
    return os.path.commonprefix([str(key) for key in keys])  # noqa: RUF071
