"""When to ask next: capped exponential backoff with jitter.

Used both for polling an export that is not ready and for retrying after a
transient failure; each keeps its own ``Backoff`` iterator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays ``initial_s * factor**n``, capped at ``max_s``, each jittered by +-``jitter``."""

    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.2

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        delay = self.initial_s
        while True:
            # Jitter spreads lanes that started together, so they do not poll in lockstep.
            yield min(self.max_s, delay * (1 + rng.uniform(-self.jitter, self.jitter)))
            delay = min(self.max_s, delay * self.factor)
