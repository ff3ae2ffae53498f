"""The emulator's HTTP surface: AC's export route, a storage route, and inspection.

Routes:
  GET  /api/reports/export/{type}       AC's export API (Bearer token)
  GET  /_storage/{job}/{expires}/{sig}  signed, token-less download (``--redirect``)
  GET  /_emulator/jobs                  every job with timeline and payload digest
  POST /_emulator/workspaces/{name}     {"revoked": bool}: revoke/restore a token
  POST /_emulator/faults                change fault rates while running
The last three answer only on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .data import RECORD_TYPES
from .jobs import ExportQueue, Job, JobState, QueueSettings, Storage, iso_ms

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FaultSettings:
    fail_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: int = 1
    cut_rate: float = 0.0
    garbage_rate: float = 0.0
    slow_bytes_per_s: int | None = None


@dataclass(frozen=True)
class EmulatorSettings:
    tokens: dict[str, str]  # workspace name -> token
    queue: QueueSettings = field(default_factory=QueueSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    gzip: bool = False
    redirect: bool = False
    storage_dir: Path | None = None


@dataclass
class _Emulator:
    settings: EmulatorSettings
    queue: ExportQueue
    faults: FaultSettings
    by_token: dict[str, str]
    rng: random.Random
    signing_key: bytes


_EMULATOR = web.AppKey("emulator", _Emulator)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    body = {"status": status, "error": message, **extra}
    return web.json_response(body, status=status)


def _parse_date(name: str, value: str | None) -> int:
    """Epoch milliseconds of an ISO 8601 query parameter."""
    if not value:
        raise web.HTTPBadRequest(
            text=json.dumps({"status": 400, "error": f"{name} is required", "parameter": name}),
            content_type="application/json",
        )
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps(
                {
                    "status": 400,
                    "error": f"{name} is not an ISO 8601 date: {value!r}",
                    "parameter": name,
                }
            ),
            content_type="application/json",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _status_body(job: Job, state: JobState) -> dict[str, Any]:
    message = (
        "A new data export file for this date range and type will be created. "
        "Please come back later."
        if state is JobState.PENDING
        else "The data export file for this date range and type is being created. "
        "Please come back later."
    )
    return {
        "fromDate": iso_ms(job.spec.from_ms / 1000),
        "createdDate": iso_ms(job.created_at),
        "toDate": iso_ms(job.spec.to_ms / 1000),
        "message": message,
        "type": job.type.upper(),
        "status": state.value,
    }


def _inject_fault(emu: _Emulator, workspace: str) -> web.Response | None:
    """A proxy's or the service's bad moment, drawn independently per kind."""
    f = emu.faults
    counts = emu.queue.workspaces[workspace].faults
    rng = emu.rng
    if rng.random() < f.fail_rate:
        counts["fail"] += 1
        if rng.random() < 0.5:
            return _error(500, "Internal Server Error")
        return web.Response(
            status=503,
            text="Service Unavailable",
            headers={"Retry-After": str(f.retry_after_s)},
        )
    if rng.random() < f.throttle_rate:
        counts["throttle"] += 1
        return web.json_response(
            {"status": 429, "error": "Too Many Requests"},
            status=429,
            headers={"Retry-After": str(f.retry_after_s)},
        )
    if rng.random() < f.garbage_rate:
        counts["garbage"] += 1
        kind = rng.randrange(3)
        if kind == 0:
            return web.Response(
                status=502,
                content_type="text/html",
                text="<html><head><title>502 Bad Gateway</title></head>"
                "<body><center><h1>502 Bad Gateway</h1></center></body></html>",
            )
        if kind == 1:
            return web.Response(
                content_type="text/html",
                text="<!DOCTYPE html><html><head><title>Sign in</title></head>"
                "<body><form>Session expired, please sign in.</form></body></html>",
            )
        return web.Response(
            content_type="application/json",
            text='{"fromDate": "2022-01-01T00:00:00.000Z", "status": "RUNN',
        )
    return None


async def export_route(request: web.Request) -> web.StreamResponse:
    emu = request.app[_EMULATOR]
    auth = request.headers.get("Authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    workspace = emu.by_token.get(token)
    if workspace is None or emu.queue.workspaces[workspace].revoked:
        return _error(401, "Unauthorized: missing, unknown or revoked access token")
    emu.queue.workspaces[workspace].requests += 1
    fault = _inject_fault(emu, workspace)
    if fault is not None:
        return fault
    type_ = request.match_info["type"].lower()
    if type_ not in RECORD_TYPES:
        return _error(404, f"unknown export type {type_!r}", types=list(RECORD_TYPES))
    from_ms = _parse_date("fromDate", request.query.get("fromDate"))
    to_ms = _parse_date("toDate", request.query.get("toDate"))
    if from_ms > to_ms:
        return _error(400, "fromDate is after toDate", parameter="fromDate")
    job = emu.queue.request(workspace, type_, from_ms, to_ms)
    state = job.state(emu.queue.clock())
    if state is not JobState.READY:
        return web.json_response(_status_body(job, state))
    if job.first_download_at is None:
        job.first_download_at = emu.queue.clock()
    if emu.settings.redirect:
        raise web.HTTPFound(_storage_url(emu, request, job))
    return await _send_payload(emu, request, job)


def _signature(key: bytes, job_id: str, expires: int) -> str:
    return hmac.new(key, f"{job_id}/{expires}".encode(), hashlib.sha256).hexdigest()


def _storage_url(emu: _Emulator, request: web.Request, job: Job) -> str:
    """A URL on another origin (127.0.0.1 <-> localhost), like a storage host."""
    assert job.expires_at is not None
    expires = int(job.expires_at) + 1
    host, _, port = request.host.rpartition(":")
    if not host:
        host, port = port, ""
    other = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}.get(host, host)
    netloc = f"{other}:{port}" if port else other
    sig = _signature(emu.signing_key, job.id, expires)
    return f"http://{netloc}/_storage/{job.id}/{expires}/{sig}"


async def storage_route(request: web.Request) -> web.StreamResponse:
    emu = request.app[_EMULATOR]
    if "Authorization" in request.headers:
        # What S3 answers to a presigned URL fetched with a bearer token as well.
        return _error(400, "InvalidArgument: Only one auth mechanism allowed")
    job_id = request.match_info["job"]
    try:
        expires = int(request.match_info["expires"])
    except ValueError:
        return _error(403, "SignatureDoesNotMatch")
    expected = _signature(emu.signing_key, job_id, expires)
    if not hmac.compare_digest(expected, request.match_info["sig"]):
        return _error(403, "SignatureDoesNotMatch")
    now = emu.queue.advance_all()
    job = emu.queue.jobs_by_id.get(job_id)
    if now > expires or job is None or job.state(now) is not JobState.READY:
        return _error(403, "Request has expired")
    return await _send_payload(emu, request, job)


async def _send_payload(emu: _Emulator, request: web.Request, job: Job) -> web.StreamResponse:
    artifact = job.artifact()
    job.downloads_started += 1
    if request.http_range.start:
        job.resumed_downloads += 1
    content_type = {"json": "application/json", "zip": "application/zip"}.get(
        job.spec.format, "application/x-ndjson"
    )
    cut = emu.rng.random() < emu.faults.cut_rate
    if cut or emu.faults.slow_bytes_per_s:
        wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
        path = artifact.gzip_path if (artifact.gzip_path and wants_gzip) else artifact.path
        return await _stream_file(emu, request, job, path, content_type, cut)
    # sendfile; FileResponse serves the ``.gz`` sibling itself when the client accepts gzip.
    return _CountedFileResponse(job, artifact.path, headers={"Content-Type": content_type})


class _CountedFileResponse(web.FileResponse):
    """A FileResponse that counts the downloads it finished sending."""

    def __init__(self, job: Job, path: Path, headers: dict[str, str]) -> None:
        super().__init__(path, headers=headers)
        self._job = job

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = await super().prepare(request)
        self._job.downloads_completed += 1
        self._job.bytes_sent += self.content_length or 0
        return writer


async def _stream_file(
    emu: _Emulator,
    request: web.Request,
    job: Job,
    path: Path,
    content_type: str,
    cut: bool,
) -> web.StreamResponse:
    """Chunked sending for the faults that need control of every write."""
    size = path.stat().st_size  # noqa: ASYNC240 - one stat of a local file, microseconds
    start, stop = 0, size
    status = 200
    headers = {"Content-Type": content_type, "Accept-Ranges": "bytes"}
    if path.suffix == ".gz":
        headers["Content-Encoding"] = "gzip"
    rng = request.http_range
    if rng.start is not None and rng.start < size:
        start, stop = rng.start, min(size, rng.stop if rng.stop is not None else size)
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = stop - start
    await response.prepare(request)
    cut_at = emu.rng.randrange(start, stop) if cut and stop > start else None
    rate = emu.faults.slow_bytes_per_s
    chunk = max(1, rate // 20) if rate else _READ_CHUNK
    loop = asyncio.get_running_loop()
    sent = start
    with path.open("rb") as source:
        source.seek(start)
        while sent < stop:
            want = min(chunk, stop - sent)
            if cut_at is not None:
                want = min(want, cut_at - sent)
            if want == 0:
                break
            data = await loop.run_in_executor(None, source.read, want)
            if not data:
                break
            try:
                await response.write(data)
            except ConnectionResetError:
                raise asyncio.CancelledError from None  # the client went away: not our error
            sent += len(data)
            job.bytes_sent += len(data)
            if rate:
                await asyncio.sleep(len(data) / rate)
    if cut_at is not None:
        counts = emu.queue.workspaces[job.workspace].faults
        counts["cut"] += 1
        assert request.transport is not None
        request.transport.close()  # short body: the client sees the cut
        raise asyncio.CancelledError
    await response.write_eof()
    job.downloads_completed += 1
    return response


async def jobs_route(request: web.Request) -> web.Response:
    if not _is_loopback(request):
        return _error(403, "inspection is loopback-only")
    emu = request.app[_EMULATOR]
    body = emu.queue.describe()
    body["faults"] = asdict(emu.faults)
    return web.json_response(body)


async def workspace_route(request: web.Request) -> web.Response:
    if not _is_loopback(request):
        return _error(403, "control is loopback-only")
    emu = request.app[_EMULATOR]
    ws = emu.queue.workspaces.get(request.match_info["name"])
    if ws is None:
        return _error(404, "unknown workspace")
    body = await request.json()
    ws.revoked = bool(body.get("revoked", ws.revoked))
    return web.json_response({"workspace": ws.name, "revoked": ws.revoked})


async def faults_route(request: web.Request) -> web.Response:
    if not _is_loopback(request):
        return _error(403, "control is loopback-only")
    emu = request.app[_EMULATOR]
    body = await request.json()
    known = set(asdict(emu.faults))
    unknown = set(body) - known
    if unknown:
        return _error(400, f"unknown fault settings: {sorted(unknown)}")
    emu.faults = replace(emu.faults, **body)
    return web.json_response(asdict(emu.faults))


def make_app(settings: EmulatorSettings, clock: Callable[[], float] = time.time) -> web.Application:
    by_token: dict[str, str] = {}
    for name, token in settings.tokens.items():
        if token in by_token:
            raise ValueError(f"workspaces {by_token[token]!r} and {name!r} share a token")
        by_token[token] = name
    storage = Storage(settings.storage_dir, gzip_copies=settings.gzip)
    queue = ExportQueue(list(settings.tokens), settings.queue, storage, clock)
    app = web.Application()
    app[_EMULATOR] = _Emulator(
        settings=settings,
        queue=queue,
        faults=settings.faults,
        by_token=by_token,
        rng=random.Random(f"faults/{settings.queue.seed}"),
        signing_key=secrets.token_bytes(32),
    )

    async def close_storage(_: web.Application) -> None:
        await asyncio.get_running_loop().run_in_executor(None, storage.close)

    app.on_cleanup.append(close_storage)
    app.router.add_get("/api/reports/export/{type}", export_route)
    app.router.add_get("/_storage/{job}/{expires}/{sig}", storage_route)
    app.router.add_get("/_emulator/jobs", jobs_route)
    app.router.add_post("/_emulator/workspaces/{name}", workspace_route)
    app.router.add_post("/_emulator/faults", faults_route)
    return app
