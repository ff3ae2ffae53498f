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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

import structlog

from .ac.client import ExportClient, ExportStatus, Payload
from .ac.polling import Backoff, PollPlan
from .config import HttpSettings
from .errors import (
    AuthError,
    ExportFailed,
    PayloadError,
    RateLimited,
    ServerError,
    StoreUnavailable,
    TransientError,
    Unreachable,
)
from .output.manifest import Manifest
from .output.sink import Finished, Sink
from .payload.writer import PayloadSummary, PayloadWriter
from .spec import ExportSpec
from .windows import ExportWindow, iso_ms

log = structlog.get_logger("acexport.export")

_WAITING = ("PENDING", "RUNNING")
# 5xx answers to a token AC never accepted are given this long (and max_attempts)
# before the token is blamed: an expired or revoked token plausibly answers 500.
SUSPECT_TOKEN_S = 60.0
# Ready data older than this share of AC's download window is asked for holding the
# lane's slot: the request must reach AC before the data expires, or it is a new export.
READY_MARGIN = 0.9
# ... and at least this long before it expires: between deciding and the request reaching
# AC lie a busy event loop (a restart resuming hundreds of exports), a connection, and
# the poll that noticed readiness late. The soak's 4 s window left 0.4 s: not enough.
EXPIRY_MARGIN_S = 2.0


def ready_lifetime_s(download_window_s: float) -> float:
    """How long ready data may be asked for without the lane's slot."""
    return max(0.0, min(READY_MARGIN * download_window_s, download_window_s - EXPIRY_MARGIN_S))


@dataclass(frozen=True)
class Timing:
    """How patiently to poll and retry."""

    poll: Backoff  # initial_s and max_s bound the PollPlan
    retry: Backoff
    max_attempts: int = 10  # consecutive failed requests before the export fails
    max_ac_failures: int = 5  # ERROR answers in a row before the export fails
    download_window_s: float = 86400.0  # how long AC keeps ready data
    expected_s: float | None = None  # how long this kind of export took before
    guess_s: float | None = None  # without that, how long similar exports took
    ready_age_s: float | None = None  # the data has been ready this long (a resumed export)
    # A one-off export: a first request that cannot connect at all fails at once.
    fail_fast_unreachable: bool = False

    @classmethod
    def from_settings(cls, http: HttpSettings) -> Timing:
        return cls(
            poll=Backoff(http.poll_initial.total_seconds(), http.poll_max.total_seconds()),
            retry=Backoff(http.retry_initial.total_seconds(), http.retry_max.total_seconds()),
            max_attempts=http.max_attempts,
            max_ac_failures=http.max_ac_failures,
            download_window_s=http.download_window.total_seconds(),
        )

    def plan(self) -> PollPlan:
        return PollPlan(self.poll.initial_s, self.poll.max_s, self.expected_s, self.guess_s)


@dataclass(frozen=True)
class StoredFile:
    """One window's committed file: its manifest, and where that manifest is."""

    window: ExportWindow
    key: PurePosixPath  # the data file's
    manifest: Manifest
    location: str  # the manifest's: a path, or an s3:// URL


@dataclass
class ExportOutcome:
    files: list[StoredFile]  # one per window written, oldest first
    requests: int
    expired_resubmits: int
    processing_s: float | None = None  # submitted to ready, seen here (None if resumed ready)
    download_s: float | None = None  # ready to committed

    @property
    def manifest(self) -> Manifest:
        """The first (for most exports, the only) file's manifest."""
        return self.files[0].manifest

    @property
    def manifest_location(self) -> str:
        return self.files[0].location


class ExportObserver:
    """Hooks into an export's progress; every method is optional."""

    async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
        """AC answered a status; the next poll is in ``next_poll_s``."""

    async def ready(self) -> None:
        """Data is ready: AC's slot for this workspace is free again."""

    async def downloaded(self, received_bytes: int, total_bytes: int | None) -> None:
        """Called as the download progresses."""

    async def may_resubmit(self) -> None:
        """The ready data may have expired: the next request may start a new AC export."""


# An export AC takes longer than this over is news at info level (submitted, ready).
LONG_WAIT_S = 60.0


@dataclass
class _Attempt:
    """Mutable state of one run_export call."""

    requests: int = 0
    failures: int = 0
    ac_failures: int = 0  # ERROR answers since the last data
    suspect_waited_s: float = 0.0  # waited since 5xx answers to an unproven token began
    expired: int = 0
    ready_at: float | None = None  # monotonic time AC's current export's data was ready
    created_date: str | None = None
    writer: PayloadWriter | None = None
    offset: int = 0
    resumable: bool = False
    submitted_at: float | None = None  # monotonic time of the first status answer
    started_at: float = field(default_factory=time.monotonic)
    said_waiting: bool = False  # export_waiting_at_ac was logged (at most once)


async def run_export(
    spec: ExportSpec,
    client: ExportClient,
    sink: Sink,
    timing: Timing,
    observer: ExportObserver | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ExportOutcome:
    """Export one window of one type; raises the error that ended it."""
    observer = observer or ExportObserver()
    state = _Attempt()
    if timing.ready_age_s is not None:
        state.ready_at = time.monotonic() - timing.ready_age_s
    polls = timing.plan()
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
                    outcome = await _ask(spec, client, sink, timing, observer, state, polls)
                    if isinstance(outcome, ExportOutcome):
                        return outcome
                    delay = outcome
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
                await sleep(delay)
        finally:
            if state.writer is not None:
                # Shielded: a cancelled export must still leave no temp file behind.
                await asyncio.shield(sink.discard(state.writer))


async def _ask(
    spec: ExportSpec,
    client: ExportClient,
    sink: Sink,
    timing: Timing,
    observer: ExportObserver,
    state: _Attempt,
    polls: PollPlan,
) -> ExportOutcome | float:
    """One request: the finished export, or how long to wait before the next."""
    async with client.request(spec.type, spec.window, range_start=state.offset) as answer:
        if isinstance(answer, ExportStatus):
            delay = await _on_status(answer, state, sink, timing, polls)
            await observer.status(answer, delay)
            return delay
        await _download(answer, state, sink, observer, spec)
    # The response is closed: syncing and a slow output store hold no connection to AC.
    files = await _store(spec, state, sink, timing)
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
        _report_new_columns(spec.type, manifest.new_columns or [])
    submitted, ready = state.submitted_at, state.ready_at
    return ExportOutcome(
        files=files,
        requests=state.requests,
        expired_resubmits=state.expired,
        processing_s=None if submitted is None or ready is None else ready - submitted,
        download_s=None if ready is None else time.monotonic() - ready,
    )


_columns_reported: set[tuple[str, str]] = set()


def _report_new_columns(type_: str, columns: list[str]) -> None:
    """A column AC added to a table is news once per process, not once per export
    (the manifest of each file lists it, and a metric counts the files)."""
    new = [column for column in columns if (type_, column) not in _columns_reported]
    if new:
        _columns_reported.update((type_, column) for column in new)
        log.warning(
            "schema_drift",
            new_columns=new,
            detail="AC served columns its table did not have: they are kept as text",
        )


def _never_reached(state: _Attempt, timing: Timing) -> bool:
    """A one-off export whose first request found nothing listening: a typo or a wrong
    port, not an outage to wait out (the daemon waits: AC may be back soon)."""
    return timing.fail_fast_unreachable and state.requests == 1


def _data_may_have_expired(state: _Attempt, timing: Timing) -> bool:
    """Ready data near the end of AC's download window: asking again may resubmit it."""
    if state.ready_at is None:
        return False
    age_s = time.monotonic() - state.ready_at
    return age_s >= ready_lifetime_s(timing.download_window_s)


def _suspect_token(
    exc: ServerError, state: _Attempt, timing: Timing, proven: bool, delay: float
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


def _count_failure(exc: TransientError, state: _Attempt, timing: Timing, delay: float) -> float:
    state.failures += 1
    if state.failures >= timing.max_attempts:
        log.error("export_giving_up", failures=state.failures, error=str(exc))
        raise exc
    log.warning("export_retrying", error=str(exc), failures=state.failures, delay_s=round(delay, 3))
    return delay


async def _after_transient(exc: TransientError, state: _Attempt, sink: Sink) -> None:
    """Keep a cut download for resuming if the server allows it, else start over."""
    writer = state.writer
    if writer is None:
        return
    if isinstance(exc, PayloadError) or not state.resumable:
        await _drop_partial(state, sink)
    else:
        state.offset = writer.payload_bytes


async def _drop_partial(state: _Attempt, sink: Sink) -> None:
    if state.writer is not None:
        await sink.discard(state.writer)
    state.writer, state.offset = None, 0


async def _on_status(
    answer: ExportStatus,
    state: _Attempt,
    sink: Sink,
    timing: Timing,
    polls: PollPlan,
) -> float:
    # A partial download belongs to data AC no longer serves: start over when it is ready.
    await _drop_partial(state, sink)
    if answer.status in _WAITING:
        state.failures = 0
        if state.ready_at is not None and answer.status == "PENDING":
            state.expired += 1
            state.ready_at = None
            state.submitted_at = time.monotonic()  # a new export: its clock starts again
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
            state.submitted_at = time.monotonic()
        waited = time.monotonic() - state.submitted_at
        if waited >= LONG_WAIT_S and not state.said_waiting:
            # Quick exports stay quiet at info; one that takes AC a while says so once.
            state.said_waiting = True
            log.info("export_waiting_at_ac", status=answer.status, waited_s=round(waited))
        return polls.next_delay(waited)
    if answer.status == "ERROR":
        return _on_ac_failure(answer, state, timing)
    raise TransientError(f"AC answered an unknown status {answer.status!r}: {answer.message}")


def _on_ac_failure(answer: ExportStatus, state: _Attempt, timing: Timing) -> float:
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


async def _download(
    payload: Payload, state: _Attempt, sink: Sink, observer: ExportObserver, spec: ExportSpec
) -> None:
    state.ac_failures = 0
    if state.ready_at is None:
        state.ready_at = time.monotonic()
        waited = None if state.submitted_at is None else state.ready_at - state.submitted_at
        (log.info if state.said_waiting else log.debug)(
            "export_ready",
            requests=state.requests,
            **({"waited_s": round(waited)} if waited is not None else {}),
        )
        if state.submitted_at is not None:
            await observer.ready()
        # Else this process never saw AC working on it (resumed while submitted, or
        # AC had it ready already): the data may have been ready for most of AC's
        # download window, and expire during the download. It is not announced as
        # fresh, so the lane keeps its slot: a re-request that finds it expired submits
        # it again without a second export in flight (the soak saw max_unready 2).
    if payload.offset != state.offset:
        await _drop_partial(state, sink)  # the server sent it all again: start over
    if state.writer is None:
        state.writer = sink.new_writer(spec.type, spec.split_plan())
    state.writer.declared_zip = payload.declared_zip
    state.resumable = payload.resumable
    writer = state.writer

    async def counted() -> AsyncIterator[bytes]:
        received = payload.offset
        async for chunk in payload.chunks():
            yield chunk
            received += len(chunk)
            await observer.downloaded(received, payload.total_bytes)

    await sink.receive(writer, counted())


async def _store(spec: ExportSpec, state: _Attempt, sink: Sink, timing: Timing) -> list[StoredFile]:
    """Finish the download's temp files and commit them, retrying while the store is
    unavailable; a split request's windows one after another, each manifest last.

    The verified temp files are kept between attempts, so AC is not asked again;
    only if one is lost is the data downloaded anew.
    """
    assert state.writer is not None
    created_date = state.created_date
    files = spec.files
    finished = await sink.finish_parts(
        state.writer,
        [key for _, key in files],
        lambda index, summary: _manifest(
            spec, *files[index], summary, created_date, sink.compression
        ),
        stored_sha256=spec.previous_sha256,
    )
    skipped = state.writer.skipped
    state.writer, state.offset = None, 0
    if skipped:
        log.debug("records_of_other_windows", skipped=skipped)
    stored = []
    try:
        for (window, key), done in zip(files, finished, strict=True):
            location = done.location
            if done.kept:
                log.info(
                    "restated_unchanged",
                    file_sha256=done.manifest.file_sha256,
                    detail="AC's data for the window did not change: the file is kept",
                )
            if location is None:
                location = await _commit(sink, done, key, timing)
            stored.append(StoredFile(window, key, done.manifest, location))
    finally:
        for done in finished:
            done.summary.path.unlink(missing_ok=True)
    return stored


async def _commit(sink: Sink, done: Finished, key: PurePosixPath, timing: Timing) -> str:
    delays = timing.retry.delays()
    while True:
        if not done.summary.path.exists():
            raise PayloadError("the local temp file was lost before it was stored")
        try:
            return await sink.commit(done.summary, key, done.manifest)
        except StoreUnavailable as exc:
            delay = next(delays)
            log.warning("output_store_retrying", error=str(exc), delay_s=round(delay, 3))
            await asyncio.sleep(delay)


def _manifest(
    spec: ExportSpec,
    window: ExportWindow,
    key: PurePosixPath,
    summary: PayloadSummary,
    created_date: str | None,
    compression: str,
) -> Manifest:
    typed = summary.typed
    return Manifest(
        job=spec.job,
        workspace=spec.workspace,
        type=spec.type,
        mode=spec.mode,
        fromDate=window.from_date,
        toDate=window.to_date,
        createdDate=created_date,
        downloadedAt=iso_ms(datetime.now(UTC)),
        revision=spec.revision,
        previous_sha256=spec.previous_sha256,
        payload_bytes=summary.payload_bytes,
        payload_sha256=summary.payload_sha256,
        payload_format=summary.served_format,
        file=key.name,
        file_bytes=summary.file_bytes,
        file_sha256=summary.file_sha256,
        records=summary.records,
        format="parquet" if typed else "ndjson",
        compression=compression,
        rows=typed.rows if typed else None,
        schema_fingerprint=typed.schema_fingerprint if typed else None,
        new_columns=list(typed.new_columns) if typed else None,
        unparsed_values=typed.unparsed_values if typed else None,
        request_fromDate=spec.window.from_date if spec.parts else None,
        request_toDate=spec.window.to_date if spec.parts else None,
        request_windows=len(spec.parts) if spec.parts else None,
    )
