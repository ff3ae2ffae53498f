"""The emulated export queue: one FIFO per workspace, one job processed at a time.

Job states are derived lazily from the clock (``Workspace.advance``) instead of
timers: a job starts when it was created or when the job before it became
ready, whichever is later, and is ready once its processing time has passed
and its payload is rendered. Nothing runs between requests, so the model is
exact whatever the request rate, and tests can drive it with any clock.

Payloads are rendered once, when the job is created, into storage (as AC writes
an export file to storage; ``storage.py``), which keeps the emulator far faster
than any client it serves.
"""

from __future__ import annotations

import enum
import math
import random
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .data import PayloadSpec
from .storage import Artifact, Storage


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
