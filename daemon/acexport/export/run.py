"""One export's life: submit, poll until ready, download, verify, commit.

This is the only place that decides what an API error means for an export:
auth and rejections end it, transient failures are retried with backoff
(``Retry-After`` honoured), a cut download resumes where it can, a download
that ended early is fetched again, an ERROR from AC (its export failed; the
next request starts a new one) is polled on within its own budget, 5xx
answers to a token AC never accepted end as a suspected bad token, ready
data that expired is resubmitted, never skipped, and an output store that is
unavailable is retried from the verified local temp file without asking AC again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from ..ac.client import ExportClient, ExportStatus
from ..ac.polling import PollPlan
from ..errors import (
    AuthError,
    ExportFailed,
    PayloadError,
    RateLimited,
    ServerError,
    TransientError,
    Unreachable,
)
from ..output.sink import Sink
from .attempt import Attempt, ExportObserver, drop_partial
from .commit import ExportOutcome, download, report_new_columns, store
from .spec import ExportSpec
from .timing import Timing, ready_lifetime_s

log = structlog.get_logger("acexport.export")

_WAITING = ("PENDING", "RUNNING")
# 5xx answers to a token AC never accepted are given this long (and max_attempts)
# before the token is blamed: an expired or revoked token plausibly answers 500.
SUSPECT_TOKEN_S = 60.0
# An export AC takes longer than this over is news at info level (submitted, ready).
LONG_WAIT_S = 60.0


def _no_seat(_: bool) -> contextlib.AbstractAsyncContextManager[object]:
    return contextlib.nullcontext()


def _no_store_seat() -> contextlib.AbstractAsyncContextManager[object]:
    return contextlib.nullcontext()


async def run_export(
    spec: ExportSpec,
    client: ExportClient,
    sink: Sink,
    timing: Timing,
    observer: ExportObserver | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    seat: Callable[[bool], contextlib.AbstractAsyncContextManager[object]] = _no_seat,
    store_seat: Callable[[], contextlib.AbstractAsyncContextManager[object]] = _no_store_seat,
) -> ExportOutcome:
    """Export one window of one type; raises the error that ended it. A request to AC
    (and its download) is made in a ``seat``; the data is stored in a ``store_seat``."""
    observer = observer or ExportObserver()
    state = _attempt(timing)
    polls = timing.plan()
    state.expected_s = polls.expected_ready_s()
    retries = timing.retry.delays()
    with structlog.contextvars.bound_contextvars(
        workspace=spec.workspace, type=spec.type, window=spec.window.from_date, request=0
    ):
        try:
            while True:
                state.requests += 1
                # The n-th request to AC for this export (not a count of failures).
                structlog.contextvars.bind_contextvars(request=state.requests)
                if _data_may_have_expired(state, timing):
                    await observer.may_resubmit()
                try:
                    async with seat(state.submitted_at is None and state.ready_at is None):
                        wait = await _ask(spec, client, sink, timing, observer, state, polls)
                    if wait is None:  # downloaded
                        async with store_seat():
                            return await _stored(spec, state, sink, timing)
                    delay = wait
                except RateLimited as exc:
                    delay = _count_failure(exc, state, timing, _bounded_wait(exc, timing))
                except TransientError as exc:
                    if isinstance(exc, Unreachable) and _never_reached(state, timing):
                        raise
                    delay = next(retries)
                    if isinstance(exc, ServerError):
                        _suspect_token(exc, state, timing, client.trust.proven, delay)
                    delay = _count_failure(exc, state, timing, delay)
                    await _after_transient(exc, state, sink)
                state.due_at = time.monotonic() + delay
                await sleep(delay)
        finally:
            if state.writer is not None:
                # Shielded: a cancelled export must still leave no temp file behind.
                await asyncio.shield(sink.discard(state.writer))


def _attempt(timing: Timing) -> Attempt:
    """A new attempt, knowing what the ledger knew: AC's export, and data ready since."""
    ready_at = None if timing.ready_age_s is None else time.monotonic() - timing.ready_age_s
    return Attempt(ready_at=ready_at, created_date=timing.created_date)


async def _ask(
    spec: ExportSpec,
    client: ExportClient,
    sink: Sink,
    timing: Timing,
    observer: ExportObserver,
    state: Attempt,
    polls: PollPlan,
) -> float | None:
    """One request: how long to wait before the next, or None once the data is
    downloaded (to ``state.writer``)."""
    state.asked_at = time.monotonic()
    async with client.request(spec.type, spec.window, range_start=state.offset) as answer:
        state.answered_at = time.monotonic()
        state.unreachable_since = None  # something answered
        if isinstance(answer, ExportStatus):
            delay = await _on_status(answer, state, sink, timing, polls)
            await observer.status(answer, delay)
            return delay
        await download(answer, state, sink, observer, spec)
    return None  # the response is closed: storing holds no connection to AC


async def _stored(spec: ExportSpec, state: Attempt, sink: Sink, timing: Timing) -> ExportOutcome:
    """The downloaded data stored (its files and manifests committed), and logged."""
    files = await store(spec, state, sink, timing)
    coalesced = {"request_windows": len(spec.parts)} if len(spec.parts) > 1 else {}
    for (window, key), stored in zip(spec.files, files, strict=True):
        manifest = stored.manifest
        log.info(
            "export_done",
            records=manifest.records,
            payload_bytes=manifest.payload_bytes,
            file=sink.store.location(key),
            requests=state.requests,
            file_bytes=manifest.file_bytes,
            seconds=round(time.monotonic() - state.started_at, 1),
            **({"window": window.from_date, "when": window.label} if coalesced else {}),
            **coalesced,
            **({"unparsed_values": manifest.unparsed_values} if manifest.unparsed_values else {}),
        )
        report_new_columns(spec.type, manifest.new_columns or [])
    ready = state.ready_at
    return ExportOutcome(
        files=files,
        requests=state.requests,
        expired_resubmits=state.expired,
        processing_s=state.processing_s,
        download_s=None if ready is None else time.monotonic() - ready,
    )


def _never_reached(state: Attempt, timing: Timing) -> bool:
    """Nothing listening: at the first request of a one-off export (a typo or a wrong
    port), or for ``unreachable_s`` in the daemon (AC may be back soon; then a cron's
    `run --once` must not wait minutes to say so, and the next look asks again)."""
    now = time.monotonic()
    if state.unreachable_since is None:
        state.unreachable_since = now
    if timing.fail_fast_unreachable and state.requests == 1:
        return True
    if now - state.unreachable_since >= timing.unreachable_s:
        log.error("export_unreachable", seconds=round(now - state.unreachable_since))
        return True
    return False


def _data_may_have_expired(state: Attempt, timing: Timing) -> bool:
    """Ready data near the end of AC's download window: asking again may resubmit it."""
    if state.ready_at is None:
        return False
    age_s = time.monotonic() - state.ready_at
    return age_s >= ready_lifetime_s(timing.download_window_s)


def _suspect_token(
    exc: ServerError, state: Attempt, timing: Timing, proven: bool, delay: float
) -> None:
    """Blame the token when AC answered nothing but 5xx to a token it never accepted."""
    if proven or not exc.from_ac:
        state.suspect_waited_s = 0.0
        return
    exhausted = state.failures + 1 >= timing.max_attempts
    if exhausted or state.suspect_waited_s + delay > SUSPECT_TOKEN_S:
        log.error("export_token_suspected", failures=state.failures + 1, error=str(exc))
        raise AuthError(
            f"every request with this token failed with {exc.status} ({exc}); an expired or "
            "revoked AC token answers this way — check the token"
        )
    state.suspect_waited_s += delay


def _bounded_wait(exc: RateLimited, timing: Timing) -> float:
    """The server's ``Retry-After``, but never longer than ``http.retry_max``: a year's
    wait asked for once must not hold the lane, ``run --once`` or ``export``."""
    if exc.retry_after_s <= timing.retry.max_s:
        return exc.retry_after_s
    log.warning(
        "retry_after_clamped", asked_s=round(exc.retry_after_s, 3), waiting_s=timing.retry.max_s
    )
    return timing.retry.max_s


def _count_failure(exc: TransientError, state: Attempt, timing: Timing, delay: float) -> float:
    state.failures += 1
    if state.failures >= timing.max_attempts:
        log.error("export_giving_up", failures=state.failures, error=str(exc))
        raise exc
    log.warning("export_retrying", error=str(exc), failures=state.failures, delay_s=round(delay, 3))
    return delay


async def _after_transient(exc: TransientError, state: Attempt, sink: Sink) -> None:
    """Keep a cut download for resuming if the server allows it, else start over."""
    writer = state.writer
    if writer is None:
        return
    if isinstance(exc, PayloadError) or not state.resumable:
        await drop_partial(state, sink)
    else:
        state.offset = writer.payload_bytes


async def _on_status(
    answer: ExportStatus,
    state: Attempt,
    sink: Sink,
    timing: Timing,
    polls: PollPlan,
) -> float:
    # A partial download belongs to data AC no longer serves: start over when it is ready.
    await drop_partial(state, sink)
    if answer.status in _WAITING:
        state.failures = 0
        if state.ready_at is not None and answer.status == "PENDING":
            state.expired += 1
            state.ready_at = None
            state.submitted_at = state.answered_at  # a new export: its clock starts again
            log.warning(
                "export_expired_resubmitted",
                created_date=answer.created_date,
                detail="AC no longer had the ready data (download window passed); "
                "it is being created again",
            )
        elif state.created_date and answer.created_date not in (None, state.created_date):
            log.warning("export_restarted_by_ac", created_date=answer.created_date)
        elif state.created_date is None:
            log.debug("export_submitted", created_date=answer.created_date, status=answer.status)
        state.created_date = answer.created_date or state.created_date
        if state.submitted_at is None:
            state.submitted_at = state.answered_at
        state.not_ready_at = state.asked_at
        waited = time.monotonic() - state.submitted_at
        if waited >= LONG_WAIT_S and not state.said_waiting:
            # Quick exports stay quiet at info; one that takes AC a while says so once.
            state.said_waiting = True
            log.info("export_waiting_at_ac", status=answer.status, waited_s=round(waited))
        return polls.next_delay(waited)
    if answer.status == "ERROR":
        return _on_ac_failure(answer, state, timing)
    raise TransientError(f"AC answered an unknown status {answer.status!r}: {answer.message}")


def _on_ac_failure(answer: ExportStatus, state: Attempt, timing: Timing) -> float:
    """AC's export failed; AC creates it anew on the next request, so ask again soon."""
    state.ac_failures += 1
    state.failures = 0
    state.submitted_at = time.monotonic()  # the next request starts a new export
    log.warning("export_failed_at_ac", message=answer.message, ac_failures=state.ac_failures)
    if state.ac_failures >= timing.max_ac_failures:
        raise ExportFailed(
            f"AC kept failing to create this export ({state.ac_failures} times in a row): "
            f"{answer.message or 'no message'}"
        )
    return timing.poll.initial_s
