"""How the emulator sends a ready export: chunked as AC does, or with
Content-Length and Range (opt-in), gzip when asked, at a throttled rate, cut or
truncated by injected faults; counted per job for the inspection endpoint."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .jobs import Job
from .storage import Stored

if TYPE_CHECKING:  # app.py routes requests here
    from .app import _Emulator as Emulator

_READ_CHUNK = 1 << 20


async def send_payload(emu: Emulator, request: web.Request, job: Job) -> web.StreamResponse:
    artifact = job.artifact()
    job.downloads_started += 1
    ranges = emu.settings.ranges
    if ranges and request.http_range.start:
        job.resumed_downloads += 1
    content_type = {"json": "application/json", "zip": "application/zip"}.get(
        job.spec.format, "application/x-ndjson"
    )
    wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    stored = artifact.gzipped if wants_gzip and artifact.gzipped else artifact.stored
    gzipped = stored is artifact.gzipped
    rng = emu.rng
    ending = _Ending(
        cut=rng.random() < emu.faults.cut_rate,
        truncate=not ranges and rng.random() < emu.faults.truncate_rate,
    )
    path = artifact.stored.path
    gzip_on_disk = artifact.gzipped is None or artifact.gzipped.path is not None
    if ranges and path and gzip_on_disk and not ending.cut and not emu.faults.slow_bytes_per_s:
        # sendfile; FileResponse serves the ``.gz`` sibling itself when the client accepts it.
        return _CountedFileResponse(job, path, headers={"Content-Type": content_type})
    return await _stream(emu, request, job, stored, gzipped, content_type, ending)


@dataclass(frozen=True)
class _Ending:
    """How a streamed download ends early, if it does."""

    cut: bool = False  # the connection is closed mid-body (a network failure)
    truncate: bool = False  # the body ends cleanly, short (AC's failure while streaming)


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


async def _stream(
    emu: Emulator,
    request: web.Request,
    job: Job,
    stored: Stored,
    gzipped: bool,
    content_type: str,
    ending: _Ending,
) -> web.StreamResponse:
    """Sent write by write: chunked as AC does, or with Content-Length and Range."""
    size = stored.size()
    start, stop = 0, size
    status = 200
    headers = {"Content-Type": content_type}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    ranges = emu.settings.ranges
    if ranges:
        headers["Accept-Ranges"] = "bytes"
        asked = request.http_range
        if asked.start is not None and asked.start < size:
            start, stop = asked.start, min(size, asked.stop if asked.stop is not None else size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response = web.StreamResponse(status=status, headers=headers)
    if ranges:
        response.content_length = stop - start
    else:
        response.enable_chunked_encoding()
    early = ending.cut or ending.truncate
    end_at = emu.rng.randrange(start, stop) if early and stop > start else stop
    counts = emu.queue.workspaces[job.workspace].faults
    try:
        await response.prepare(request)
        await _copy(emu, response, job, stored, start, end_at)
        if ending.cut and end_at < stop:
            counts["cut"] += 1
            assert request.transport is not None
            request.transport.close()  # short body: the client sees the cut
            raise asyncio.CancelledError
        if ending.truncate and end_at < stop:
            counts["truncate"] += 1
        await response.write_eof()
    except ConnectionError:  # reset, or aiohttp's "Connection lost" while draining
        raise asyncio.CancelledError from None  # the client went away: not our error
    job.downloads_completed += 1
    return response


async def _copy(
    emu: Emulator, response: web.StreamResponse, job: Job, stored: Stored, start: int, stop: int
) -> None:
    rate = emu.faults.slow_bytes_per_s
    chunk = max(1, rate // 20) if rate else _READ_CHUNK
    loop = asyncio.get_running_loop()
    sent = start
    with stored.read() as source:
        source.seek(start)
        while sent < stop:
            size = min(chunk, stop - sent)
            # A file is read off the loop; memory at once.
            data = (
                source.read(size)
                if stored.path is None
                else await loop.run_in_executor(None, source.read, size)
            )
            if not data:
                break
            await response.write(data)
            sent += len(data)
            job.bytes_sent += len(data)
            if rate:
                await asyncio.sleep(len(data) / rate)
