"""Where a window's data file goes: the rendered path template plus the compression suffix
(or, for Parquet, the template with ``.parquet`` for ``.jsonl``)."""

from __future__ import annotations

import functools
import itertools
import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from ..config import OutputSettings
from ..formats import Compression, OutputFormat, parquet_template
from ..pathtemplate import render_path
from ..protocol import ExportMode
from ..windows import ExportWindow
from .store import common_prefix


@dataclass(frozen=True)
class OutputLayout:
    """The rendered ``template`` (+ ``.gz`` or ``.zst``), relative to the store's root;
    snapshots by ``snapshot_template``."""

    template: str
    compression: Compression
    snapshot_template: str = OutputSettings().snapshot_path
    format: OutputFormat = OutputFormat.NDJSON

    def __post_init__(self) -> None:
        if self.format is OutputFormat.PARQUET:
            object.__setattr__(self, "template", parquet_template(self.template))
            object.__setattr__(self, "snapshot_template", parquet_template(self.snapshot_template))

    @classmethod
    def from_settings(cls, output: OutputSettings) -> OutputLayout:
        """The layout ``[output]`` describes: the paths, the format, the compression."""
        return cls(output.path, output.file_compression, output.snapshot_path, output.format)

    def key_for(
        self,
        workspace: str,
        type_: str,
        job: str,
        window: ExportWindow,
        compression: Compression | None = None,
        *,
        mode: ExportMode = ExportMode.WINDOWS,
    ) -> PurePosixPath:
        """Where a window's (or snapshot's) data file goes (``compression`` overrides
        the layout's)."""
        if mode is ExportMode.SNAPSHOT:
            # An as-of instant, in UTC: ``snapshot=20261205T212630Z`` sorts as time
            # does across DST changes, and no two snapshots share a local hour.
            key = render_path(
                self.snapshot_template, workspace, type_, job, window.start, window.end
            )
        else:
            key = render_path(
                self.template, workspace, type_, job, window.local_start, window.local_end
            )
        # A Parquet file compresses its columns inside: its name keeps no codec suffix.
        parquet = self.format is OutputFormat.PARQUET
        suffix = "" if parquet else (compression or self.compression).suffix
        if suffix and key.suffix != suffix:
            key = key.with_name(key.name + suffix)
        return key

    def could_be_key(self, key: str, mode: ExportMode | None = None) -> bool:
        """Whether ``key`` (relative to the store's root) may be one of this layout's
        data files (of ``mode``, or either): the template's literal text in place,
        anything in the placeholders, any compression's suffix."""
        templates = {
            ExportMode.WINDOWS: self.template,
            ExportMode.SNAPSHOT: self.snapshot_template,
        }
        return any(
            _pattern(template).fullmatch(key) is not None
            for which, template in templates.items()
            if mode in (None, which)
        )

    def snapshot_prefix(self, workspace: str, type_: str, job: str) -> str:
        """A prefix under which every snapshot of (workspace, type, job) lies."""
        return _snapshot_prefix(self.snapshot_template, workspace, type_, job)


# Asked after every snapshot export and at every look: rendering the template four
# times each was the daemon's top function at a thousand workspaces (bench/scale.py).
@functools.lru_cache(maxsize=8192)
def _snapshot_prefix(template: str, workspace: str, type_: str, job: str) -> str:
    early = datetime(2000, 1, 1, tzinfo=UTC)
    late = datetime(2999, 12, 31, 23, 59, 59, tzinfo=UTC)
    return common_prefix(
        [
            render_path(template, workspace, type_, job, start, end)
            for start, end in ((early, early), (late, late), (early, late), (late, early))
        ]
    )


@functools.lru_cache(maxsize=64)
def sorts_by_time(template: str) -> bool:
    """Whether ``template`` renders later as-of times to later-sorting keys (the
    default snapshot path does: ``snapshot=%Y%m%dT%H%M%S``)."""
    return _sorts_by_time(template)


@functools.lru_cache(maxsize=64)
def _sorts_by_time(template: str) -> bool:
    start = datetime(2099, 12, 31, 23, 59, 58, tzinfo=UTC)
    instants = [
        datetime(1999, 9, 9, 9, 9, 9, tzinfo=UTC),
        datetime(1999, 9, 9, 9, 9, 10, tzinfo=UTC),
        datetime(1999, 9, 9, 9, 10, 0, tzinfo=UTC),
        datetime(1999, 9, 9, 10, 0, 0, tzinfo=UTC),
        datetime(1999, 9, 10, tzinfo=UTC),
        datetime(1999, 10, 1, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        start,
    ]
    keys = [str(render_path(template, "w", "t", "j", start, when)) for when in instants]
    return all(a < b for a, b in itertools.pairwise(keys))


def _pattern(template: str) -> re.Pattern[str]:
    parts = [
        re.escape(literal) + (".+" if field is not None else "")
        for literal, field, _, _ in string.Formatter().parse(template)
    ]
    suffixes = "|".join(re.escape(c.suffix) for c in Compression if c.suffix)
    return re.compile("".join(parts) + f"(?:{suffixes})?")
