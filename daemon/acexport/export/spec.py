"""What one export asks AC for, and which files it writes where.

An ``ExportSpec`` is built from planned exports (``PlannedExport``: what a ledger
row says, without the ledger): one window (a time series asked for
through its end and cut exactly, see ``split_exactly``), a snapshot, or the
consecutive windows of a coalesced request, each with its key in the output store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from ..config import OutputSettings
from ..output.layout import OutputLayout
from ..payload.split import SplitPlan
from ..protocol import TIME_SERIES, ExportMode
from ..windows import ExportWindow


class PlannedExport(Protocol):
    """What a spec is built from: a planned window or snapshot (a ledger row has
    these), described by plain values."""

    @property
    def workspace(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def job(self) -> str: ...
    @property
    def mode(self) -> ExportMode: ...
    @property
    def revision(self) -> int: ...
    @property
    def file_sha256(self) -> str | None: ...  # the file a revision > 1 replaces
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime: ...
    @property
    def request_start(self) -> datetime | None: ...  # a coalesced request's range
    @property
    def request_end(self) -> datetime | None: ...
    @property
    def reexport(self) -> bool: ...  # asked for by the operator: committed whatever

    def window(self, zone: Any = ...) -> ExportWindow: ...


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
    # Asked for by the operator (acexport reexport): committed as the next revision
    # even when its bytes are the previous revision's (then marked unchanged).
    reexport: bool = False
    # A coalesced request's parts' (revision, previous_sha256), when any is not a first
    # revision (re-exported windows); empty: every part is revision 1.
    part_revisions: tuple[tuple[int, str | None], ...] = ()
    # A replacement with fewer records than this keeps the previous revision (a
    # restatement's guard against an empty or truncated export; None: no guard).
    min_records: int | None = None
    # A time series split locally: the windows (and their keys) whose files are cut
    # out of the request for ``window`` (see split_exactly, coalesced). Empty: one
    # file, ``key``, of whatever AC served.
    parts: tuple[tuple[ExportWindow, PurePosixPath], ...] = ()

    @classmethod
    def of(cls, record: PlannedExport, zone: ZoneInfo, output: OutputSettings) -> ExportSpec:
        """A planned export: its window in the workspace's zone, keyed by the layout."""
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
        cls, records: Sequence[PlannedExport], zone: ZoneInfo, output: OutputSettings
    ) -> ExportSpec:
        """One request for consecutive windows of a time series (planned windows of one
        job and type, oldest first), split locally into each window's file. The request is
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
        # Re-exported windows (acexport reexport) ride along as their next revision.
        revisions = tuple((r.revision, r.file_sha256 if r.revision > 1 else None) for r in records)
        return cls(
            first.workspace,
            first.type,
            span,
            parts[0][1],
            first.job,
            parts=parts,
            reexport=any(r.reexport for r in records),
            part_revisions=revisions if any(n > 1 for n, _ in revisions) else (),
        )

    def split_exactly(self) -> ExportSpec:
        """A window of a time series, asked for through its end and cut locally at
        ``start <= t < end`` (windows.py): no record of it lost, none in two files."""
        if self.type not in TIME_SERIES or self.mode is not ExportMode.WINDOWS or self.parts:
            return self
        request = replace(self.window, through_end=True)
        return replace(self, window=request, parts=((self.window, self.key),))

    def revision_of(self, index: int) -> tuple[int, str | None]:
        """The revision the ``index``-th file is written as, and the sha it replaces."""
        if self.part_revisions:
            return self.part_revisions[index]
        return self.revision, self.previous_sha256

    @property
    def files(self) -> tuple[tuple[ExportWindow, PurePosixPath], ...]:
        """Every window written and its key: the parts, or the one window."""
        return self.parts or ((self.window, self.key),)

    def split_plan(self) -> SplitPlan | None:
        if not self.parts:
            return None
        windows = [(window.start, window.end) for window, _ in self.parts]
        return SplitPlan(self.type, self.window.start, self.window.last_instant, windows)
