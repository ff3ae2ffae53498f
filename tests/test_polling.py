"""PollPlan: few requests and a small delay with history; bounded delay without."""

from __future__ import annotations

import random

import pytest

from acexport.ac.polling import PollPlan


def simulate(plan: PollPlan, ready_at: float) -> tuple[int, float]:
    """Requests made (the submission included) and the delay after ready_at."""
    elapsed, requests = 0.0, 1
    while elapsed < ready_at:
        elapsed += plan.next_delay(elapsed)
        requests += 1
    return requests, elapsed - ready_at


@pytest.mark.parametrize("seconds", [10.0, 60.0, 600.0, 3600.0])
def test_with_history_few_requests_and_a_delay_under_5_percent(seconds: float) -> None:
    """Knowing the usual time: at most 12 requests, detected within 5% (or 1 s)."""
    for actual in (seconds * 0.9, seconds, seconds * 1.1):
        plan = PollPlan(initial_s=1.0, max_s=3600.0, expected_s=seconds, rng=random.Random(1))
        requests, delay = simulate(plan, actual)
        assert requests <= 12, (seconds, actual, requests)
        assert delay <= max(0.05 * actual, 1.0), (seconds, actual, delay)


@pytest.mark.parametrize("seconds", [10.0, 60.0, 600.0])
def test_without_history_delay_stays_under_a_quarter_of_elapsed(seconds: float) -> None:
    """The first export of a kind: at most 25 requests, delay at most 25% of elapsed."""
    plan = PollPlan(initial_s=3.0, max_s=3600.0, rng=random.Random(2))
    requests, delay = simulate(plan, seconds)
    assert requests <= 25
    assert delay <= 0.25 * 1.1 * (seconds + delay)  # 10% jitter on the quarter


def test_a_wrong_guess_falls_back_to_backoff() -> None:
    """If the export takes ten times longer than before, polling stays bounded."""
    plan = PollPlan(initial_s=1.0, max_s=300.0, expected_s=60.0, rng=random.Random(3))
    requests, delay = simulate(plan, 600.0)
    assert requests <= 25
    assert delay <= 0.3 * 600


def test_poll_max_caps_every_wait() -> None:
    """No wait is ever longer than poll_max."""
    plan = PollPlan(initial_s=15.0, max_s=300.0)
    assert max(plan.next_delay(t) for t in range(0, 100_000, 500)) <= 300.0


def test_poll_max_caps_waits_learned_from_history() -> None:
    """A learned time of 15 days (a clock jump in the ledger) still waits at most poll_max."""
    plan = PollPlan(initial_s=15.0, max_s=300.0, expected_s=1_296_000.0)
    assert max(plan.next_delay(t) for t in range(0, 2_000_000, 10_000)) <= 300.0


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.0, 4.0])
def test_a_short_export_is_checked_once_when_it_should_be_ready(seconds: float) -> None:
    """Known to take a few minimum waits: submit, one check at the time, done (2 requests);
    a little late, one minimum wait more."""
    plan = PollPlan(initial_s=1.0, max_s=60.0, expected_s=seconds, rng=random.Random(4))
    assert simulate(plan, seconds) == (2, 0.0)
    requests, delay = simulate(plan, seconds * 1.1)
    assert requests == 3
    assert delay <= 1.0


def test_a_guess_from_other_exports_is_trusted_only_when_short() -> None:
    """A short guess (a few floors) is checked once; a long one could delay a quick
    export by far more than backoff would, so it is ignored."""
    short = PollPlan(initial_s=1.0, max_s=60.0, guess_s=2.0, rng=random.Random(5))
    assert simulate(short, 2.0) == (2, 0.0)
    long = PollPlan(initial_s=1.0, max_s=60.0, guess_s=600.0, rng=random.Random(5))
    requests, delay = simulate(long, 3.0)
    assert delay <= 0.25 * 1.1 * (3.0 + delay) + 1.0  # backoff's bound, not 300 s
    assert requests <= 6
