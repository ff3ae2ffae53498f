"""What one export asks AC for, and which files it writes where.

An ``ExportSpec`` is built from ledger rows: one window (a time series asked for
through its end and cut exactly, see ``split_exactly``), a snapshot, or the
consecutive windows of a coalesced request, each with its key in the output store.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

from .config import OutputSettings
from .ledger import ExportRecord
from .output.layout import OutputLayout
from .payload.split import SplitPlan
from .protocol import TIME_SERIES, ExportMode
from .windows import ExportWindow


@dataclass(frozen=True)
class ExportSpec:
    """What to export, and the key of its data file in the output store."""

    workspace: str
    type: str
    window: ExportWindow
    key: PurePosixPath
    job: str | None = None  # None for a one-off ``acexport export``
    mode: ExportMode = ExportMode.WINDOWS
    revision: int = 1  # 2: a restatement, replacing the file of ``previous_sha256``
    previous_sha256: str | None = None
    # A time series split locally: the windows (and their keys) whose files are cut
    # out of the request for ``window`` (see split_exactly, coalesced). Empty: one
    # file, ``key``, of whatever AC served.
    parts: tuple[tuple[ExportWindow, PurePosixPath], ...] = ()

    @classmethod
    def of(cls, record: ExportRecord, zone: ZoneInfo, output: OutputSettings) -> ExportSpec:
        """A ledger row's export: its window in the workspace's zone, keyed by the layout."""
        window = record.window(zone)
        key = OutputLayout.from_settings(output).key_for(
            record.workspace, record.type, record.job, window, mode=record.mode
        )
        previous = record.file_sha256 if record.revision > 1 else None
        spec = cls(
            record.workspace,
            record.type,
            window,
            key,
            record.job,
            record.mode,
            record.revision,
            previous,
        )
        return spec.split_exactly()

    @classmethod
    def coalesced(
        cls, records: list[ExportRecord], zone: ZoneInfo, output: OutputSettings
    ) -> ExportSpec:
        """One request for consecutive windows of a time series (ledger rows of one job
        and type, oldest first), split locally into each window's file. The request is
        the range the rows record (a resumed request may have fewer windows left)."""
        layout = OutputLayout.from_settings(output)
        first = records[0]
        start = first.request_start or first.start
        end = first.request_end or records[-1].end
        parts = tuple(
            (
                record.window(zone),
                layout.key_for(record.workspace, record.type, record.job, record.window(zone)),
            )
            for record in records
        )
        span = ExportWindow(start, end, zone, through_end=True)
        return cls(first.workspace, first.type, span, parts[0][1], first.job, parts=parts)

    def split_exactly(self) -> ExportSpec:
        """A window of a time series, asked for through its end and cut locally at
        ``start <= t < end`` (windows.py): no record of it lost, none in two files."""
        if self.type not in TIME_SERIES or self.mode is not ExportMode.WINDOWS or self.parts:
            return self
        request = replace(self.window, through_end=True)
        return replace(self, window=request, parts=((self.window, self.key),))

    @property
    def files(self) -> tuple[tuple[ExportWindow, PurePosixPath], ...]:
        """Every window written and its key: the parts, or the one window."""
        return self.parts or ((self.window, self.key),)

    def split_plan(self) -> SplitPlan | None:
        if not self.parts:
            return None
        windows = [(window.start, window.end) for window, _ in self.parts]
        return SplitPlan(self.type, self.window.start, self.window.last_instant, windows)
