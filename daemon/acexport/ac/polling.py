"""When to ask next: learned from earlier exports, with backoff as the fallback.

Pure geometric backoff cannot give both few requests and a small delay after
the data is ready (a delay of k% costs about ln(T/t0)/ln(1+k) requests). So
``PollPlan`` uses how long earlier exports of the same workspace and type took:
it checks at half and at 80% of that, then often around the expected time,
and only falls back to backoff (each wait a quarter of the time elapsed, so
the delay stays under 25%) when there is no history or the guess was wrong.
Retries after failures use plain capped exponential ``Backoff``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

# One generator for every jitter: ``random.Random()`` seeds itself with 2.5 KB from
# the kernel, which for 6,000 exports was 0.5 s of the event loop (bench/scale.py).
JITTER = random.Random()


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s * factor**n``, capped at ``max_s``, each jittered by +-``jitter``."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.2

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or JITTER
        delay = self.initial_s
        while True:
            # Jitter spreads lanes that started together, so they do not poll in lockstep.
            yield min(self.max_s, delay * (1 + rng.uniform(-self.jitter, self.jitter)))
            delay = min(self.max_s, delay * self.factor)


# With history: check at these fractions of the expected time, then every DENSE_STEP
# of it until DENSE_UNTIL; 4% steps keep the delay under the 5% target.
SPARSE_MARKS = (0.5, 0.8, 0.92)
DENSE_STEP = 0.04
DENSE_UNTIL = 1.2
# Expected within 5 s, or within five floors (the shortest wait) if that is longer:
# one check at that time; a miss costs a floor, as in the dense phase anyway.
SHORT_EXPORT_S = 5.0
SHORT_EXPORT_FLOORS = 5
# Without: wait a quarter of the time elapsed (delay < 25% of it).
GROWTH = 0.25


@dataclass
class PollPlan:
    """The wait before the next status request, given the time since submission."""

    initial_s: float
    max_s: float
    expected_s: float | None = None  # this kind of export's usual time
    guess_s: float | None = None  # without that: what similar exports took (used if short)
    rng: random.Random = field(default_factory=lambda: JITTER)

    def next_delay(self, elapsed_s: float) -> float:
        """Never more than ``max_s``, whatever history says."""
        return min(self.max_s, self._wanted(elapsed_s))

    def expected_ready_s(self) -> float | None:
        """When the data should be ready, after submission, by what history says."""
        if self.expected_s:
            return self.expected_s
        if self.guess_s and self.guess_s <= self._short_s():
            # Another kind's time says little about this one, but trusting a short guess
            # costs at most a few floors of delay, and saves the backoff's requests.
            return self.guess_s
        return None

    def _short_s(self) -> float:
        return max(SHORT_EXPORT_S, SHORT_EXPORT_FLOORS * self._floor_s())

    def _floor_s(self) -> float:
        return min(self.initial_s, 1.0)  # no two checks closer than this

    def _wanted(self, elapsed_s: float) -> float:
        floor = self._floor_s()
        expected = self.expected_ready_s()
        if expected:
            short = self._short_s()
            # A short export is checked once, when it should be ready: the early marks
            # would cost requests and gain little.
            marks = SPARSE_MARKS if expected > short else (1.0,)
            for mark in marks:
                if elapsed_s < mark * expected - 1e-3:
                    return mark * expected - elapsed_s
            if elapsed_s < DENSE_UNTIL * expected:
                return max(DENSE_STEP * expected, floor)
        delay = max(self.initial_s, GROWTH * elapsed_s)
        return delay * (1 + self.rng.uniform(-0.1, 0.1))
