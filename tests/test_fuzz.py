"""Random and adversarial answers, over a real socket: every outcome is classified.

A server on 127.0.0.1 answers each request with what hypothesis draws (status
code, content type, body: random bytes, broken JSON, deep nesting, status
look-alikes, ZIP fragments). ``run_export`` must end with a committed file or
an ``AcexportError`` subclass, never another exception, and leave no temp file.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from acexport.ac.client import ExportClient
from acexport.ac.polling import Backoff
from acexport.errors import AcexportError
from acexport.export import ExportSpec, Timing, run_export
from acexport.windows import ExportWindow
from tests.daemon_helpers import local_sink

WINDOW = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
TIMING = Timing(
    poll=Backoff(0.001, 0.002), retry=Backoff(0.001, 0.002), max_attempts=3, max_ac_failures=2
)


@dataclass
class Script:
    """What the server answers, one entry per request, then 400."""

    answers: list[tuple[int, str, bytes]] = field(default_factory=list)
    served: int = 0


@dataclass
class Server:
    url: str
    script: Script


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """One loopback server in its own thread for every example."""
    script = Script()
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    holder: dict[str, object] = {}

    async def answer(request: web.Request) -> web.Response:
        index = script.served
        script.served += 1
        if index >= len(script.answers):
            # The script is over: a rejection ends an export still polling (PENDING forever
            # is a valid answer, just not one a test can wait out).
            return web.json_response({"message": "script over", "status": "ERROR"}, status=400)
        status, content_type, body = script.answers[index]
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/api/reports/export/{type}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        holder["runner"] = runner
        holder["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    ready.wait(10)
    yield Server(str(holder["url"]), script)
    runner = holder["runner"]
    assert isinstance(runner, web.AppRunner)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _zip(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.jsonl", member)
    return buffer.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
status_like = st.fixed_dictionaries(
    {"status": st.sampled_from(["PENDING", "RUNNING", "ERROR", "READY", "ACTIVE", "?"])},
    optional={
        "createdDate": st.sampled_from(["2022-06-29T17:50:46.824Z", "x", ""]),
        "message": st.text(max_size=30),
        "type": st.sampled_from(["PAGE", "EVENT", "page"]),
        "fromDate": st.sampled_from(["2022-01-01T00:00:00.000Z", "2021-01-01", "garbage"]),
        "segmentId": st.just("1"),
    },
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    status_like.map(lambda v: json.dumps(v).encode()),
    st.lists(json_values, max_size=5).map(
        lambda rows: b"\n".join(json.dumps(r).encode() for r in rows)
    ),
    st.integers(1, 30_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 30_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
    st.binary(max_size=200).map(_zip),
    st.binary(min_size=1, max_size=200).map(lambda tail: _zip(b'{"id": 1}\n')[:-20] + tail),
    st.sampled_from([b"PK\x03\x04", b"PK\x05\x06" + b"\x00" * 18, b"\xef\xbb\xbf", b"<html>"]),
)
answers = st.tuples(
    st.sampled_from([200, 200, 200, 206, 302, 400, 401, 404, 429, 500, 503]),
    st.sampled_from(
        ["application/json", "application/zip", "application/x-ndjson", "text/html", ""]
    ),
    bodies,
)


async def no_wait(_: float) -> None:
    """Retry-After and backoff are honoured by run_export; here time is not spent."""
    await asyncio.sleep(0)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@given(script=st.lists(answers, min_size=1, max_size=4))
def test_every_answer_is_classified(
    server: Server, tmp_path: Path, script: list[tuple[int, str, bytes]]
) -> None:
    """Whatever the server says, the export ends committed or with an AcexportError."""
    server.script.answers, server.script.served = script, 0
    temp = tmp_path / "tmp"
    destination = tmp_path / "out" / "page.jsonl"
    destination.unlink(missing_ok=True)

    async def attempt() -> None:
        sink = local_sink(tmp_path / "out", temp)
        try:
            async with aiohttp.ClientSession() as session:
                client = ExportClient(session, server.url, SecretStr("fuzz-token"))
                spec = ExportSpec("acme", "page", WINDOW, PurePosixPath("page.jsonl"))
                await run_export(spec, client, sink, TIMING, sleep=no_wait)
        finally:
            sink.close()

    try:
        asyncio.run(asyncio.wait_for(attempt(), 30))
    except AcexportError:
        assert not destination.exists()
    assert list(temp.iterdir()) == [] if temp.exists() else True
