"""How long AC took to process exports: the median of the last few, per kind.

The poller checks a short export once, when it should be ready (polling.py);
the time comes from here. A kind is (workspace, type), and for an export with
no history of its own, the type in any workspace or the workspace's other
types. The ledger is read once per workspace and per type; after that, each
row that becomes ready is added here as it is written, so asking costs no
round trip to the ledger (it was one to three per export).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

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
