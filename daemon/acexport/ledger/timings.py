"""How long AC took to process exports: the median of the last few, per kind.

The poller checks a short export once, when it should be ready (ac/polling.py);
the time comes from here. A kind is (workspace, type), and for an export with
no history of its own, the type in any workspace or the workspace's other
types. The ledger is read once per workspace and per type; after that, each
row that becomes ready is added here as it is written, so asking costs no
round trip to the ledger (it was one to three per export).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from pathlib import Path

from .connection import LedgerConnection, state_errors
from .rows import parse_time
from .sqlthread import SqlThread

LAST = 5  # the median of this many newest spans
# Spans are wall-clock: one that a clock jump made negative or longer than AC keeps
# data (a day) is not a processing time.
PLAUSIBLE_SPAN_S = 86400.0

ANY = ""  # in a kind, any workspace or any type


class ProcessingTimes:
    """The newest submit-to-ready spans per kind, for the kinds read so far."""

    def __init__(self) -> None:
        self._spans: dict[tuple[str, str], deque[float]] = {}
        self.workspaces: set[str] = set()  # read: (ws, t) for every t, and (ws, ANY)
        self.types: set[str] = set()  # read: (ANY, t)

    def load_workspace(self, workspace: str, newest_first: Iterable[tuple[str, float]]) -> None:
        """(type, span) pairs of the workspace's newest exports, ``LAST`` per type at least."""
        for type_, span in newest_first:
            self._spans.setdefault((workspace, type_), deque(maxlen=LAST)).appendleft(span)
            overall = self._spans.setdefault((workspace, ANY), deque(maxlen=LAST))
            if len(overall) < LAST:
                overall.appendleft(span)
        self.workspaces.add(workspace)

    def load_type(self, type_: str, newest_first: Iterable[float]) -> None:
        spans = self._spans.setdefault((ANY, type_), deque(maxlen=LAST))
        spans.extendleft(newest_first)
        self.types.add(type_)

    def add(self, workspace: str, type_: str, span: float) -> None:
        """A first attempt just became ready after ``span`` seconds."""
        kinds = []
        if workspace in self.workspaces:
            kinds += [(workspace, type_), (workspace, ANY)]
        if type_ in self.types:
            kinds.append((ANY, type_))
        for kind in kinds:
            self._spans.setdefault(kind, deque(maxlen=LAST)).append(span)

    def median(self, workspace: str, type_: str) -> float | None:
        spans = sorted(
            s for s in self._spans.get((workspace, type_), ()) if 0 < s < PLAUSIBLE_SPAN_S
        )
        return spans[len(spans) // 2] if spans else None


_SPAN = "ready_at - submitted_at"


# First attempts that became ready: a resubmitted export's span is not a processing time.
_CLEAN_SPAN = (
    "state IN ('ready', 'done') AND attempts = 1 AND ready_at IS NOT NULL "
    "AND submitted_at IS NOT NULL"
)


class ProcessingHistory(LedgerConnection):
    """The processing times the ledger's rows record, read through ``times``."""

    def __init__(self, db: SqlThread, path: Path) -> None:
        super().__init__(db, path)
        self.times = ProcessingTimes()

    @state_errors
    async def expected_processing_s(self, workspace: str, type_: str) -> float | None:
        """Median submit-to-ready time of the last five clean exports of this kind.

        Ready rows count too: the previous export's time is known (and recorded)
        before the next one is submitted, while it still downloads.
        """
        await self._read_workspace_times(workspace)
        return self.times.median(workspace, type_)

    @state_errors
    async def similar_processing_s(self, workspace: str, type_: str) -> float | None:
        """For a first export of its kind: the median of this type in any workspace,
        else of any type in this workspace."""
        await self._read_workspace_times(workspace)
        if type_ not in self.times.types:
            rows = await self._rows(
                f"SELECT {_SPAN} FROM exports WHERE type = ? AND {_CLEAN_SPAN} "  # noqa: S608
                "ORDER BY ready_at DESC LIMIT ?",
                type_,
                LAST,
            )
            self.times.load_type(type_, [row[0] for row in rows])
        return self.times.median(ANY, type_) or self.times.median(workspace, ANY)

    async def _read_workspace_times(self, workspace: str) -> None:
        if workspace in self.times.workspaces:
            return
        rows = await self._rows(
            f"SELECT type, span FROM (SELECT type, ready_at, {_SPAN} AS span, "  # noqa: S608
            "ROW_NUMBER() OVER (PARTITION BY type ORDER BY ready_at DESC) AS newness "
            f"FROM exports WHERE workspace = ? AND {_CLEAN_SPAN}) "
            "WHERE newness <= ? ORDER BY ready_at DESC",
            workspace,
            LAST,
        )
        self.times.load_workspace(workspace, [(row[0], row[1]) for row in rows])

    @state_errors
    async def payload_per_window(self, job: str, type_: str) -> float | None:
        """The most payload bytes a window took among the job's newest done windows of
        the type: a coalesced request's payload shared out by its windows' lengths."""
        rows = await self._rows(
            "SELECT payload_bytes, window_start, window_end, request_start, request_end "
            "FROM exports WHERE job = ? AND type = ? AND state = 'done' AND mode = 'windows' "
            "AND payload_bytes > 0 ORDER BY finished_at DESC LIMIT 20",
            job,
            type_,
        )
        shares = []
        for payload, start, end, request_start, request_end in rows:
            window = (parse_time(end) - parse_time(start)).total_seconds()
            request = window
            if request_start and request_end:
                request = (parse_time(request_end) - parse_time(request_start)).total_seconds()
            shares.append(payload * window / request if request > 0 else float(payload))
        return max(shares, default=None)
