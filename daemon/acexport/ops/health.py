"""What /healthz answers: healthy unless stopping, a token is rejected, or a lane
keeps failing. It observes the lanes' events (``events.LaneObserver``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..events import ExportEnded, LaneObserver

# A lane whose last this-many exports all failed makes /healthz answer 503.
FAILURES_BEFORE_UNHEALTHY = 5
OUTPUT_STORE = "output store"


@dataclass
class Health(LaneObserver):
    """What /healthz answers: healthy unless stopping, a token is rejected, or a lane
    keeps failing."""

    stopping: bool = False
    problems: dict[str, str] = field(default_factory=dict)
    # Worth an operator's look, not a restart (a hook's failed events): 200, "degraded".
    degraded: dict[str, str] = field(default_factory=dict)
    _failures_in_a_row: dict[str, int] = field(default_factory=dict)

    def export_ended(self, event: ExportEnded) -> None:
        if event.ok:
            self._failures_in_a_row.pop(event.lane, None)
            self.problems.pop(event.lane, None)
            self.problems.pop(OUTPUT_STORE, None)
            return
        if event.store_rejected:
            # Every lane writes there: one problem, named at once, not per lane.
            self.problems[OUTPUT_STORE] = event.reason or "the output store refused"
            return
        count = self._failures_in_a_row.get(event.lane, 0) + 1
        self._failures_in_a_row[event.lane] = count
        if event.token_rejected:
            # No retry can help: name the token at once, not after five failures.
            self.problems[event.lane] = event.reason or "the token was rejected"
        elif count >= FAILURES_BEFORE_UNHEALTHY:
            self.problems[event.lane] = f"the last {count} exports failed; last: {event.reason}"

    def forget(self, lane: str) -> None:
        """The lane's cause was fixed (its token or settings changed): healthy until its
        exports fail again."""
        self._failures_in_a_row.pop(lane, None)
        self.problems.pop(lane, None)

    def report(self) -> tuple[int, dict[str, Any]]:
        if self.stopping:
            return 503, {"status": "stopping"}
        if self.problems:
            return 503, {"status": "failing", "problems": {**self.degraded, **self.problems}}
        if self.degraded:
            return 200, {"status": "degraded", "problems": dict(self.degraded)}
        return 200, {"status": "ok"}
