"""The emulated export queue: one FIFO per workspace, one job processed at a time.

Job states are derived lazily from the clock (``Workspace.advance``) instead of
timers: a job starts when it was created or when the job before it became
ready, whichever is later, and is ready once its processing time has passed
and its payload file exists. Nothing runs between requests, so the model is
exact whatever the request rate, and tests can drive it with any clock.

Payloads are rendered once, when the job is created, into a storage directory
(as AC writes an export file to storage), by a single worker thread; serving
is then a ``sendfile`` from disk, which keeps the emulator far faster than any
client it serves.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import math
import random
import shutil
import tempfile
import threading
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .data import ZIP_MEMBER, PayloadSpec, Rendered, iter_blocks


class JobState(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    READY = "READY"
    ERROR = "ERROR"  # processing failed; answered once, then the next request starts anew
    EXPIRED = "EXPIRED"


def iso_ms(epoch_s: float) -> str:
    """AC's timestamp style: UTC, milliseconds, ``Z``."""
    when = datetime.fromtimestamp(epoch_s, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Artifact:
    """A rendered payload in storage."""

    path: Path
    gzip_path: Path | None
    bytes: int
    sha256: str
    records: int


@dataclass
class Job:
    id: str
    workspace: str
    type: str
    spec: PayloadSpec
    created_at: float
    processing_s: float
    expiry_s: float
    rendering: Future[Artifact]
    fails: bool = False  # processing ends in ERROR instead of data (``--error-rate``)
    after_failure: bool = False  # created because the export before it failed
    error_reported: bool = False  # the client has been told about the failure
    started_at: float | None = None
    ready_at: float | None = None
    rendered_at: float | None = None
    requests: int = 0
    downloads_started: int = 0
    downloads_completed: int = 0
    bytes_sent: int = 0
    resumed_downloads: int = 0  # downloads that asked for a Range from a byte > 0
    first_download_at: float | None = None  # when the client first asked for the ready data

    @property
    def expires_at(self) -> float | None:
        return None if self.ready_at is None else self.ready_at + self.expiry_s

    def state(self, now: float) -> JobState:
        if self.started_at is None or now < self.started_at:
            return JobState.PENDING
        if self.ready_at is None or now < self.ready_at:
            return JobState.RUNNING
        if self.fails:
            return JobState.ERROR
        assert self.expires_at is not None
        return JobState.READY if now < self.expires_at else JobState.EXPIRED

    def artifact(self) -> Artifact:
        return self.rendering.result()

    def describe(self, now: float) -> dict[str, Any]:
        artifact = self.rendering.result() if self.rendering.done() else None
        return {
            "id": self.id,
            "workspace": self.workspace,
            "type": self.type,
            "fromDate": iso_ms(self.spec.from_ms / 1000),
            "toDate": iso_ms(self.spec.to_ms / 1000),
            "createdDate": iso_ms(self.created_at),
            "state": self.state(now).value,
            "timeline": {
                "created": self.created_at,
                "started": self.started_at,
                "ready": self.ready_at,
                "expires": self.expires_at,
                "first_download": self.first_download_at,
            },
            "requests": self.requests,
            "downloads_started": self.downloads_started,
            "downloads_completed": self.downloads_completed,
            "bytes_sent": self.bytes_sent,
            "resumed_downloads": self.resumed_downloads,
            "after_failure": self.after_failure,
            "format": self.spec.format,
            "revision": self.spec.revision,
            "records": artifact.records if artifact else None,
            "bytes": artifact.bytes if artifact else None,
            "sha256": artifact.sha256 if artifact else None,
        }


@dataclass
class Workspace:
    name: str
    jobs: list[Job] = field(default_factory=list)
    requests: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    revoked: bool = False
    tick_s: float = 0.0

    def next_tick(self, when: float) -> float:
        """When AC's worker next looks for pending tasks, from ``when`` on."""
        if not self.tick_s:
            return when
        return math.ceil(when / self.tick_s) * self.tick_s

    def advance(self, now: float) -> None:
        """Start and finish jobs, in order, up to ``now``."""
        previous_ready = 0.0
        for job in self.jobs:
            if job.ready_at is not None:
                previous_ready = job.ready_at
                continue
            if job.started_at is None:
                # The worker takes what was pending at its tick, one after another.
                job.started_at = max(self.next_tick(job.created_at), previous_ready)
            done_processing = job.started_at + job.processing_s
            if now < done_processing or (job.rendered_at is None and not job.fails):
                return  # this job holds the workspace's single slot
            # A failed export ends when its processing does; data needs its file too.
            job.ready_at = max(done_processing, job.rendered_at or 0.0)
            previous_ready = job.ready_at

    def latest(self, type_: str, from_ms: int, to_ms: int) -> Job | None:
        for job in reversed(self.jobs):
            if (job.type, job.spec.from_ms, job.spec.to_ms) == (type_, from_ms, to_ms):
                return job
        return None

    def max_unready(self) -> int:
        """The largest number of jobs that were ever submitted but not ready at once."""
        events: list[tuple[float, int]] = []
        for job in self.jobs:
            events.append((job.created_at, 1))
            if job.ready_at is not None:
                events.append((job.ready_at, -1))
        # At equal times a job becoming ready counts before the next one arriving.
        events.sort()
        current = peak = 0
        for _, delta in events:
            current += delta
            peak = max(peak, current)
        return peak

    def describe(self, now: float) -> dict[str, Any]:
        states = [job.state(now).value for job in self.jobs]
        return {
            "requests": self.requests,
            "jobs": len(self.jobs),
            "by_state": {s.value: states.count(s.value) for s in JobState},
            "max_unready": self.max_unready(),
            "faults": dict(self.faults),
            "revoked": self.revoked,
        }


class Storage:
    """Renders payloads to files, one at a time, off the event loop."""

    def __init__(self, directory: Path | None, gzip_copies: bool) -> None:
        self._owned = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="acexport-emulator-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._gzip = gzip_copies
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="emulator-render")
        self._lock = threading.Lock()

    def render(
        self, job_id: str, spec: PayloadSpec, on_done: Callable[[], None]
    ) -> Future[Artifact]:
        future = self._executor.submit(self._render, job_id, spec)
        future.add_done_callback(lambda _: on_done())
        return future

    def _render(self, job_id: str, spec: PayloadSpec) -> Artifact:
        if spec.format == "zip":
            return self._render_zip(job_id, spec)
        path = self.directory / f"{job_id}.json"
        digest = hashlib.sha256()
        size = 0
        gz_path = path.with_name(path.name + ".gz") if self._gzip else None
        # Level 1: AC's storage gzip is not what we measure, rendering speed is.
        compressor = gzip.GzipFile(gz_path, "wb", compresslevel=1) if gz_path else None
        counted = Rendered()
        try:
            with path.open("wb") as out:
                for block in iter_blocks(spec, counted):
                    out.write(block)
                    digest.update(block)
                    size += len(block)
                    if compressor:
                        compressor.write(block)
        finally:
            if compressor:
                compressor.close()
        return Artifact(path, gz_path, size, digest.hexdigest(), counted.records)

    def _render_zip(self, job_id: str, spec: PayloadSpec) -> Artifact:
        path = self.directory / f"{job_id}.zip"
        counted = Rendered()
        # Written as a stream (as Java's ZipOutputStream writes AC's): no seeking back,
        # so the member's CRC-32 and sizes follow its data in a data descriptor.
        with (
            path.open("wb") as file,
            zipfile.ZipFile(
                _Unseekable(file), "w", zipfile.ZIP_DEFLATED, compresslevel=1
            ) as archive,
            archive.open(ZIP_MEMBER, "w", force_zip64=True) as member,
        ):
            for block in iter_blocks(spec, counted):
                member.write(block)
        digest = hashlib.sha256()
        with path.open("rb") as stored:
            while chunk := stored.read(1 << 20):
                digest.update(chunk)
        # Already compressed: no gzip sibling.
        return Artifact(path, None, path.stat().st_size, digest.hexdigest(), counted.records)

    def discard(self, artifact: Artifact) -> None:
        for path in (artifact.path, artifact.gzip_path):
            if path is not None:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True)
class QueueSettings:
    processing_s: float = 5.0
    processing_per_1000_s: float = 0.0
    expiry_s: float = 86400.0
    records: int = 100
    records_per_day: int | None = None
    format: str = "zip"
    seed: int = 0
    # The share of page windows whose aggregates AC recomputed when they are exported
    # again after the first export's data expired (late events settled).
    restate_rate: float = 0.0
    legacy_properties: bool = False  # events carry the older ``properties`` array
    iso_timestamps: bool = False  # event and page times in ISO 8601 (older exports)
    # AC's worker runs every ``tick_s`` and then processes the pending tasks one after
    # another; a task created meanwhile waits for the next tick. 0: no ticks.
    tick_s: float = 0.0


class ExportQueue:
    """Every workspace's jobs; the single source of truth for the routes."""

    def __init__(
        self,
        workspaces: list[str],
        settings: QueueSettings,
        storage: Storage,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.workspaces = {name: Workspace(name, tick_s=settings.tick_s) for name in workspaces}
        self.jobs_by_id: dict[str, Job] = {}

    def records_for(self, from_ms: int, to_ms: int) -> int:
        """The records of a range (with ``records_per_day``, events' as an estimate:
        the processing time is a guess at AC's anyway)."""
        if self.settings.records_per_day is None:
            return self.settings.records
        return round(self.settings.records_per_day * (to_ms - from_ms + 1) / 86_400_000)

    def request(
        self, workspace: str, type_: str, from_ms: int, to_ms: int, fails: bool = False
    ) -> Job:
        """The job that answers a request, creating one if none is current.

        ``fails``: a job created by this request ends in ERROR (AC's export failed).
        A failed job answers ERROR once; the request after that starts a new one.
        """
        now = self.clock()
        ws = self.workspaces[workspace]
        ws.advance(now)
        job = ws.latest(type_, from_ms, to_ms)
        state = None if job is None else job.state(now)
        reported_error = state is JobState.ERROR and job is not None and job.error_reported
        if job is None or state is JobState.EXPIRED or reported_error:
            after_failure = state is JobState.ERROR
            revision = 0 if job is None else job.spec.revision
            if job is not None:
                self._discard(job)
            if state is JobState.EXPIRED and self._restated(ws.name, type_, from_ms, to_ms):
                revision += 1
            job = self._create(ws, type_, from_ms, to_ms, now, fails, revision)
            job.after_failure = after_failure
        elif state is JobState.ERROR:
            job.error_reported = True
        job.requests += 1
        return job

    def _restated(self, workspace: str, type_: str, from_ms: int, to_ms: int) -> bool:
        """Whether AC recomputed a page window's aggregates since its last export."""
        if type_ != "page" or not self.settings.restate_rate:
            return False
        draw = random.Random(f"{self.settings.seed}/{workspace}/{from_ms}/{to_ms}").random()
        return draw < self.settings.restate_rate

    def _create(
        self,
        ws: Workspace,
        type_: str,
        from_ms: int,
        to_ms: int,
        now: float,
        fails: bool,
        revision: int = 0,
    ) -> Job:
        s = self.settings
        records = self.records_for(from_ms, to_ms)
        spec = PayloadSpec(
            ws.name,
            type_,
            from_ms,
            to_ms,
            records,
            s.seed,
            s.format,
            revision=revision,
            records_per_day=s.records_per_day,
            as_of_ms=int(now * 1000),
            legacy_properties=s.legacy_properties,
            iso_timestamps=s.iso_timestamps,
        )
        job_id = uuid.uuid4().hex
        processing = s.processing_s + s.processing_per_1000_s * records / 1000
        job = Job(job_id, ws.name, type_, spec, now, processing, s.expiry_s, Future(), fails)
        job.rendering = self.storage.render(job_id, spec, lambda: self._rendered(job))
        ws.jobs.append(job)
        self.jobs_by_id[job_id] = job
        return job

    def _rendered(self, job: Job) -> None:
        # Called from the render thread; a float store is atomic under the GIL.
        job.rendered_at = self.clock()

    def _discard(self, job: Job) -> None:
        if job.rendering.done() and job.rendering.exception() is None:
            self.storage.discard(job.rendering.result())

    def advance_all(self) -> float:
        now = self.clock()
        for ws in self.workspaces.values():
            ws.advance(now)
        return now

    def describe(self) -> dict[str, Any]:
        now = self.advance_all()
        return {
            "now": now,
            "workspaces": {name: ws.describe(now) for name, ws in self.workspaces.items()},
            "jobs": [job.describe(now) for ws in self.workspaces.values() for job in ws.jobs],
        }


class _Unseekable(io.RawIOBase):
    """A file seen as a write-only stream, like an HTTP response body."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._file.write(data)
