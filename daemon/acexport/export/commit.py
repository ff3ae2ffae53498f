"""What one export does with AC's data: download it through the sink into temp
files, write each window's manifest, commit them to the output store (retrying
while it is unavailable, from the verified temp file), and say what landed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePosixPath

import structlog

from ..ac.client import Payload
from ..errors import PayloadError, RestatementShrank, StoreUnavailable
from ..output.manifest import Manifest
from ..output.sink import Finished, Sink
from ..payload.writer import PayloadSummary
from ..windows import ExportWindow, now_iso_ms
from .attempt import Attempt, ExportObserver, drop_partial
from .spec import ExportSpec
from .timing import Timing

log = structlog.get_logger("acexport.export")


@dataclass(frozen=True)
class StoredFile:
    """One window's committed file: its manifest, and where that manifest is."""

    window: ExportWindow
    key: PurePosixPath  # the data file's
    manifest: Manifest
    location: str  # the manifest's: a path, or an s3:// URL
    # A restatement whose bytes were those stored: the file and its manifest (of the
    # previous revision) were left as they were.
    kept: bool = False


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


_columns_reported: set[tuple[str, str]] = set()


def report_new_columns(type_: str, columns: list[str]) -> None:
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


def _processing_s(state: Attempt) -> float | None:
    """AC's time from its answer to the submitting request to ready data, as the
    requests tell it.

    A check due when history said the data would be ready, that found it, tells no
    more than that it was ready by the time the check was due (and not before the
    last request AC answered "not yet"): the time the request left is later by this
    process's own lateness (a busy loop's timer, a full connection pool). Learned,
    that lateness made the next check later, and the next: AC's 1.0 s became 1.4-1.5 s
    at a thousand lanes (bench/scale.py). Without history, the time the request left.
    """
    if state.submitted_at is None:
        return None
    found = state.asked_at
    expected = state.expected_s
    if expected is not None and state.due_at >= state.submitted_at + expected - 1e-3:
        found = min(found, max(state.due_at, state.not_ready_at or state.submitted_at))
    return found - state.submitted_at


async def download(
    payload: Payload, state: Attempt, sink: Sink, observer: ExportObserver, spec: ExportSpec
) -> None:
    state.ac_failures = 0
    if state.ready_at is None:
        state.ready_at = state.asked_at  # ready by the time this request was sent
        state.processing_s = waited = _processing_s(state)
        (log.info if state.said_waiting else log.debug)(
            "export_ready",
            requests=state.requests,
            **({"waited_s": round(waited)} if waited is not None else {}),
        )
        if waited is not None:
            await observer.ready(waited)
        # Else this process never saw AC working on it (resumed while submitted, or
        # AC had it ready already): the data may have been ready for most of AC's
        # download window, and expire during the download. It is not announced as
        # fresh, so the lane keeps its slot: a re-request that finds it expired submits
        # it again without a second export in flight (the soak saw max_unready 2).
    if payload.offset != state.offset:
        await drop_partial(state, sink)  # the server sent it all again: start over
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


async def store(spec: ExportSpec, state: Attempt, sink: Sink, timing: Timing) -> list[StoredFile]:
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
            _refuse_shrunk(spec, summary),
            *files[index],
            summary,
            created_date,
            sink.compression,
            spec.revision_of(index),
        ),
        stored_sha256=None if spec.reexport else spec.previous_sha256,
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
            stored.append(StoredFile(window, key, done.manifest, location, kept=done.kept))
    finally:
        # A file the sink's thread committed was renamed away: no syscall on the loop
        # for it (each costs a GIL round trip there, with the sink threads busy).
        for done in finished:
            if done.location is None:
                done.summary.path.unlink(missing_ok=True)
    return stored


def _refuse_shrunk(spec: ExportSpec, summary: PayloadSummary) -> ExportSpec:
    """A replacement far smaller than what it replaces is not committed: raised before
    its manifest exists (a local store commits in the same hop), so the previous
    revision stays; the writer's temp files go with the failed export."""
    if spec.min_records is not None and summary.records < spec.min_records:
        raise RestatementShrank(
            f"revision {spec.revision} served {summary.records} records, fewer than the "
            f"{spec.min_records} the job's restate_min_records asks of it: revision "
            f"{spec.revision - 1} is kept",
            previous=spec.min_records,
            served=summary.records,
        )
    return spec


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
    revision: tuple[int, str | None],
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
        downloadedAt=now_iso_ms(),
        revision=revision[0],
        previous_sha256=revision[1],
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
        unchanged=(spec.reexport and summary.file_sha256 == revision[1]) or None,
    )
