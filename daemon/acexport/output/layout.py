"""Where a window's data file goes: the rendered path template plus the compression suffix."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..config import OutputSettings
from ..formats import Compression
from ..pathtemplate import render_path
from ..windows import ExportWindow


@dataclass(frozen=True)
class OutputLayout:
    """The rendered ``template`` (+ ``.gz`` or ``.zst``), relative to the store's root."""

    template: str
    compression: Compression

    @classmethod
    def from_settings(cls, output: OutputSettings) -> OutputLayout:
        """The layout ``[output]`` describes: ``path`` and the compression's suffix."""
        return cls(output.path, output.compression)

    def key_for(
        self,
        workspace: str,
        type_: str,
        job: str,
        window: ExportWindow,
        compression: Compression | None = None,
    ) -> PurePosixPath:
        """Where a window's data file goes (``compression`` overrides the layout's)."""
        key = render_path(
            self.template, workspace, type_, job, window.local_start, window.local_end
        )
        suffix = (compression or self.compression).suffix
        if suffix and key.suffix != suffix:
            key = key.with_name(key.name + suffix)
        return key

    def could_be_key(self, key: str) -> bool:
        """Whether ``key`` (relative to the store's root) may be one of this layout's
        data files: the template's literal text in place, anything in the placeholders,
        any compression's suffix."""
        return self._pattern().fullmatch(key) is not None

    def _pattern(self) -> re.Pattern[str]:
        parts = [
            re.escape(literal) + (".+" if field is not None else "")
            for literal, field, _, _ in string.Formatter().parse(self.template)
        ]
        suffixes = "|".join(re.escape(c.suffix) for c in Compression if c.suffix)
        return re.compile("".join(parts) + f"(?:{suffixes})?")
