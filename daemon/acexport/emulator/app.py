"""The emulator's HTTP surface: AC's export route, a storage route, and inspection.

With default settings it answers as the real service does. The facts come from
AC's open-source server code, ``ReportController.java`` and
``ReportControllerResponseFactory.java`` (with its test) and
``GroupInfoContextProvider.java`` under
``modules/dxp/apps/osb/osb-faro/osb-faro-web/`` in liferay/liferay-portal, and
from the "Exporting Data" page of the Analytics Cloud docs
(learn.liferay.com, ``docs/analytics-cloud/latest/en/apis/exporting-data.md``):

- types are case-sensitive, dates are parsed strictly as
  ``yyyy-MM-dd'T'HH:mm[:ss.SSS'Z']``; anything else is a 400 with
  ``{"message": ..., "status": "ERROR"}``;
- status answers are 200 JSON (202 with ``--status-code``, as AC's engine
  answers): PENDING (three messages), RUNNING (with ``startedDate``), and
  ERROR when the export failed (the next request starts a new one), in AC's
  words (design section 1.1);
- a range before ``--retention-months`` is refused with AC's retention message,
  as a 400 or inside a 500 (``--retention-as``);
- data is ``application/zip`` streamed chunked, with no Content-Length and no
  Range; a failure while streaming just ends the body early (``--truncate-rate``);
- a bad token fails before the controller runs: a 500 error page by default.

Content-Length with Range (``--range``), redirects to storage (``--redirect``),
gzip encoding (``--gzip``), raw NDJSON or JSON-array bodies (``--format``),
429/503 with Retry-After and cut connections are defensive extras, off unless asked.

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
import calendar
import hashlib
import hmac
import ipaddress
import random
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .data import RECORD_TYPES
from .jobs import ExportQueue, Job, JobState, QueueSettings, iso_ms
from .storage import Storage
from .streaming import send_payload

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class FaultSettings:
    error_rate: float = 0.0  # a finished export fails at AC (status ERROR)
    truncate_rate: float = 0.0  # a download ends cleanly but early
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
    ranges: bool = False  # Content-Length and Range support (the real service has neither)
    auth_failure: int = 500  # what a bad token answers: 500 as AC plausibly does, or 401/403
    status_code: int = 200  # what a status answers: 200 as AC's controllers, 202 as its engine
    retention_months: int | None = None  # ranges starting before now - this are refused
    retention_as: int = 400  # the refusal as the newest controller passes it on, or a 500
    # The months the refusal names, if not retention_months: a controller's wrong
    # message ("0 months", or 13 for a 4-day-old window), for the hardening tests.
    retention_says: int | None = None
    storage_dir: Path | None = None


@dataclass
class _Emulator:
    settings: EmulatorSettings
    queue: ExportQueue
    faults: FaultSettings
    by_token: dict[str, str]
    rng: random.Random
    signing_key: bytes
    serving: int = 0  # requests being answered (a download until its last byte)
    most_serving: int = 0


_EMULATOR = web.AppKey("emulator", _Emulator)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    """An error of the emulator's own routes (inspection, storage)."""
    body = {"status": status, "error": message, **extra}
    return web.json_response(body, status=status)


def _ac_error(status: int, message: str) -> web.Response:
    """An error as AC's controller writes it."""
    return web.json_response({"message": message, "status": "ERROR"}, status=status)


# The exact messages of AC's engine and controller (design section 1.1).
_TYPES_MESSAGE = (
    'The "type" query parameter must be either "event", "identity", "individual", '
    '"membership", "page", or "segment".'
)
_DATE_PATTERN = "yyyy-MM-dd'T'HH:mm[:ss.SSS'Z']"
_MISSING_DATES_MESSAGE = (
    f'"fromDate" and "toDate" query parameters are mandatory and must be ISO 8601 '
    f"compliant {_DATE_PATTERN}"
)
_DATES_MESSAGE = f"Both dates in range must be ISO 8601 compliant {_DATE_PATTERN}"
_RANGE_MESSAGE = 'Wrong range date. "fromDate" cannot be after "toDate"'
# yyyy-MM-dd'T'HH:mm[:ss.SSS'Z'], as the controller's formatter parses it.
_STRICT_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})\.(\d{3})Z)?")
_AUTH_FAILURE_PAGE = (
    "<!DOCTYPE html><html><head><title>Error 500</title></head><body>"
    "<h1>Internal Server Error</h1><p>An error occurred while accessing the requested "
    "resource.</p></body></html>"
)


def parse_strict_date(value: str | None) -> int | None:
    """Epoch milliseconds of a date in AC's one accepted format, else None."""
    match = _STRICT_DATE.fullmatch(value or "")
    if match is None:
        return None
    year, month, day, hour, minute, second, milli = (int(g or 0) for g in match.groups())
    try:
        when = datetime(year, month, day, hour, minute, second, milli * 1000, tzinfo=UTC)
    except ValueError:
        return None
    return (when - _EPOCH) // timedelta(milliseconds=1)


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


_FAILED_MESSAGE = (
    "The last data export for this date range and type failed. A new data export file "
    "will be created. Please come back later."
)
_MESSAGES = {
    "new": "A new data export file for this date range and type will be created. "
    "Please come back later.",
    "scheduled": "A data export for this date range and type has already been scheduled. "
    "Please come back later.",
    "after_failure": _FAILED_MESSAGE,
    "running": "The data export file for this date range and type is being created. "
    "Please come back later.",
    "error": _FAILED_MESSAGE,
}


def _status_body(job: Job, state: JobState) -> dict[str, Any]:
    if state is JobState.PENDING:
        first = job.requests == 1
        key = ("after_failure" if job.after_failure else "new") if first else "scheduled"
    else:
        key = "running" if state is JobState.RUNNING else "error"
    body: dict[str, Any] = {
        "fromDate": iso_ms(job.spec.from_ms / 1000),
        "createdDate": iso_ms(job.created_at),
        "toDate": iso_ms(job.spec.to_ms / 1000),
        "message": _MESSAGES[key],
        "type": job.type.upper(),
        "status": state.value,
    }
    if state is JobState.RUNNING and job.started_at is not None:
        body["startedDate"] = iso_ms(job.started_at)
    return body


def _inject_fault(emu: _Emulator, workspace: str) -> web.Response | None:
    """A proxy's or the service's bad moment, drawn independently per kind."""
    f = emu.faults
    counts = emu.queue.workspaces[workspace].faults
    rng = emu.rng
    if rng.random() < f.fail_rate:
        counts["fail"] += 1
        if rng.random() < 0.5:
            return _ac_error(500, "An internal problem happened when trying to reach our services")
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


def _authorize(emu: _Emulator, request: web.Request) -> str | web.Response:
    """The workspace of the request's token, or the answer to a bad token."""
    auth = request.headers.get("Authorization", "")
    token = auth[7:] if auth.startswith("Bearer ") else ""
    workspace = emu.by_token.get(token)
    if workspace is not None and not emu.queue.workspaces[workspace].revoked:
        return workspace
    # AC rejects a bad token before its controller runs; the answer is undocumented.
    if emu.settings.auth_failure == 500:
        return web.Response(status=500, content_type="text/html", text=_AUTH_FAILURE_PAGE)
    return _error(emu.settings.auth_failure, "missing, unknown or revoked access token")


async def export_route(request: web.Request) -> web.StreamResponse:
    emu = request.app[_EMULATOR]
    workspace = _authorize(emu, request)
    if isinstance(workspace, web.Response):
        return workspace
    emu.queue.workspaces[workspace].requests += 1
    fault = _inject_fault(emu, workspace)
    if fault is not None:
        return fault
    type_ = request.match_info["type"]
    if type_ not in RECORD_TYPES:
        return _ac_error(400, _TYPES_MESSAGE)
    if not request.query.get("fromDate") or not request.query.get("toDate"):
        return _ac_error(400, _MISSING_DATES_MESSAGE)
    from_ms = parse_strict_date(request.query.get("fromDate"))
    to_ms = parse_strict_date(request.query.get("toDate"))
    if from_ms is None or to_ms is None:
        return _ac_error(400, _DATES_MESSAGE)
    if from_ms > to_ms:
        return _ac_error(400, _RANGE_MESSAGE)
    refusal = _retention_refusal(emu, from_ms)
    if refusal is not None:
        return refusal
    fails = emu.rng.random() < emu.faults.error_rate
    job = emu.queue.request(workspace, type_, from_ms, to_ms, fails)
    state = job.state(emu.queue.clock())
    if state is JobState.ERROR:
        emu.queue.workspaces[workspace].faults["error"] += 1
    if state is not JobState.READY:
        return web.json_response(_status_body(job, state), status=emu.settings.status_code)
    if job.first_download_at is None:
        job.first_download_at = emu.queue.clock()
    if emu.settings.redirect:
        raise web.HTTPFound(_storage_url(emu, request, job))
    return await send_payload(emu, request, job)


def _months_before(when: datetime, months: int) -> datetime:
    index = when.year * 12 + when.month - 1 - months
    year, month = divmod(index, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return when.replace(year=year, month=month + 1, day=min(when.day, last_day))


def _retention_refusal(emu: _Emulator, from_ms: int) -> web.Response | None:
    """AC's engine refuses a range that starts before the workspace's retention; the
    newest controller passes the refusal on as a 400, others inside a 500."""
    months = emu.settings.retention_months
    if months is None:
        return None
    now = datetime.fromtimestamp(emu.queue.clock(), UTC)
    if from_ms >= (_months_before(now, months) - _EPOCH) // timedelta(milliseconds=1):
        return None
    message = (
        "The requested data is outside of your data retention period of "
        f"{emu.settings.retention_says if emu.settings.retention_says is not None else months} "
        "months. "
        "Please adjust the time range in your query accordingly."
    )
    return _ac_error(emu.settings.retention_as, message)


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
    return await send_payload(emu, request, job)


async def jobs_route(request: web.Request) -> web.Response:
    if not _is_loopback(request):
        return _error(403, "inspection is loopback-only")
    emu = request.app[_EMULATOR]
    body = emu.queue.describe()
    body["faults"] = asdict(emu.faults)
    body["most_requests_at_once"] = emu.most_serving
    return web.json_response(body)


@web.middleware
async def _count_serving(request: web.Request, handler: Handler) -> web.StreamResponse:
    """How many of AC's requests are answered at once (the daemon bounds it)."""
    emu = request.app[_EMULATOR]
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    emu.serving += 1
    emu.most_serving = max(emu.most_serving, emu.serving)
    try:
        return await handler(request)
    finally:
        emu.serving -= 1


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
    app = web.Application(middlewares=[_count_serving])
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

    async def date_by_the_clock(_: web.Request, response: web.StreamResponse) -> None:
        # AC's Date is AC's time: with a test's clock, the emulator's.
        response.headers["Date"] = formatdate(clock(), usegmt=True)

    app.on_response_prepare.append(date_by_the_clock)
    app.router.add_get("/api/reports/export/{type}", export_route)
    app.router.add_get("/_storage/{job}/{expires}/{sig}", storage_route)
    app.router.add_get("/_emulator/jobs", jobs_route)
    app.router.add_post("/_emulator/workspaces/{name}", workspace_route)
    app.router.add_post("/_emulator/faults", faults_route)
    return app
