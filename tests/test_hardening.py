"""Hostile servers against the whole daemon: crashes recorded, echoed tokens never stored."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import aiohttp
import pytest
import structlog
from aiohttp import web

from acexport.config import load_settings
from acexport.ledger import read_rows
from acexport.ops.logging import configure_logging
from tests.daemon_helpers import FAST_HTTP, export_server, job, local_sink


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    """An 'AC' that rejects every request, quoting the bearer token back in its message."""

    async def reject(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        message = f"workspace not found for token {token} (see server log)"
        return web.json_response({"message": message, "status": "ERROR"}, status=400)

    app = web.Application()
    app.router.add_get("/api/reports/export/{type}", reject)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


def _config(tmp_path: Path, base_url: str, token_file: Path) -> Path:
    path = tmp_path / "acexport.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\noutput_dir = "{tmp_path / "exports"}"\n'
        f'listen = "127.0.0.1:0"\nstop_grace = "2s"\n{FAST_HTTP}'
        f'[workspaces.acme]\nbase_url = "{base_url}"\ntoken_file = "{token_file}"\n'
        + job("daily", "acme", types=["page"], catch_up="6d", lag="0s")
    )
    path.chmod(0o600)
    return path


async def test_a_token_echoed_by_the_server_is_stored_and_served_nowhere(
    echo_server: str, tmp_path: Path
) -> None:
    """The ledger, /healthz and the log get the server's message with the token redacted,
    including a token that a reload rotated in."""
    from acexport.daemon import Daemon

    token_file = tmp_path / "token"
    token_file.write_text("first-token-0123456789\n")
    token_file.chmod(0o600)
    path = _config(tmp_path, echo_server, token_file)
    stream = io.StringIO()
    configure_logging("json", "info", stream)
    try:
        async with Daemon(load_settings(path), path) as daemon, aiohttp.ClientSession() as http:
            assert not await daemon.run_once()
            token_file.write_text("rotated-token-9876543210\n")
            daemon._load_new_config()  # what SIGHUP does
            assert not await daemon.run_once()
            assert daemon.health_url is not None
            async with http.get(f"{daemon.health_url}/healthz") as response:
                health = await response.text()
    finally:
        structlog.reset_defaults()
    rows = await read_rows(tmp_path / "state")
    reasons = [row.reason or "" for row in rows]
    assert reasons
    assert all("workspace not found for token [REDACTED]" in reason for reason in reasons)
    assert all(len(reason) <= 500 for reason in reasons)
    assert "[REDACTED]" in health
    log = stream.getvalue()
    assert "workspace not found" in log
    for secret in ("first-token-0123456789", "rotated-token-9876543210"):
        assert secret not in health
        assert secret not in log
        assert all(secret not in reason for reason in reasons)


async def test_an_unexpected_exception_is_a_recorded_failure(
    echo_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash nobody foresaw fails the export in the ledger and the metrics; run_once is False."""
    import acexport.lane
    from acexport.daemon import Daemon

    async def crash(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON object")

    monkeypatch.setattr(acexport.lane, "run_export", crash)
    token_file = tmp_path / "token"
    token_file.write_text("some-token-value\n")
    token_file.chmod(0o600)
    path = _config(tmp_path, echo_server, token_file)
    async with Daemon(load_settings(path), path) as daemon, aiohttp.ClientSession() as http:
        with structlog.testing.capture_logs() as logs:
            assert not await daemon.run_once()
        assert daemon.health_url is not None
        async with http.get(f"{daemon.health_url}/metrics") as response:
            metrics = await response.text()
        async with http.get(f"{daemon.health_url}/healthz") as response:
            assert response.status == 503
            problems = json.loads(await response.text())["problems"]
    rows = await read_rows(tmp_path / "state")
    assert len(rows) == 6
    assert {row.state for row in rows} == {"failed"}
    assert all(row.reason and "unexpected RecursionError" in row.reason for row in rows)
    # One AC request serves the six coalesced windows: one crash fails them all (issue
    # 34 item 8: it failed the first and left five "ready", crashing one by one).
    assert [entry["event"] for entry in logs].count("export_crashed") == 1
    assert 'acexport_exports_total{outcome="failed",type="page",workspace="acme"} 6.0' in metrics
    assert "RecursionError" in problems["acme"]


async def test_a_failure_that_cannot_be_recorded_stops_the_daemon_visibly(
    echo_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the crash fails too (a bug there, or a log that raised): the export's
    task ended with an error nobody retrieved, and its window stayed in flight, unsaid.
    Now the daemon fails (daemon_failing, exit 1) and the next start resumes it."""
    import acexport.lane
    from acexport.daemon import Daemon

    async def crash(*args: object, **kwargs: object) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    async def cannot_record(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug in recording the failure")

    monkeypatch.setattr(acexport.lane, "run_export", crash)
    monkeypatch.setattr(acexport.lane.Lane, "_failed", cannot_record)
    token_file = tmp_path / "token"
    token_file.write_text("some-token-value\n")
    token_file.chmod(0o600)
    path = _config(tmp_path, echo_server, token_file)
    async with Daemon(load_settings(path), path) as daemon:
        with structlog.testing.capture_logs() as logs:
            await asyncio.wait_for(daemon.run_once(), 30)
    assert isinstance(daemon.fatal_error, TypeError)
    (failing,) = [entry for entry in logs if entry["event"] == "daemon_failing"]
    assert "a bug in recording the failure" in failing["error"]
    assert {row.state for row in await read_rows(tmp_path / "state")} <= {"queued", "submitted"}


async def test_gzip_bomb_over_http_is_refused_with_nothing_kept(tmp_path: Path) -> None:
    """A Content-Encoding: gzip body that inflates past max_inflate_ratio fails the export."""
    import gzip
    from datetime import UTC, datetime

    from pydantic import SecretStr

    from acexport.ac.client import ExportClient
    from acexport.ac.polling import Backoff
    from acexport.errors import PayloadTooLarge
    from acexport.export import ExportSpec, Timing, run_export
    from acexport.windows import ExportWindow

    bomb = gzip.compress(b'{"id": 1}\n' * 3_000_000, 9)  # 30 MB in about 60 kB

    async def serve(request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"}
        return web.Response(body=bomb, headers=headers)

    window = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
    spec = ExportSpec("acme", "page", window, PurePosixPath("page.jsonl"))
    sink = local_sink(tmp_path / "out", tmp_path / "tmp")
    timing = Timing(poll=Backoff(0.01, 0.05), retry=Backoff(0.01, 0.05), max_attempts=3)
    try:
        async with export_server(serve) as base, aiohttp.ClientSession() as session:
            client = ExportClient(session, base, SecretStr("t0ken"), max_inflate_ratio=50)
            with pytest.raises(PayloadTooLarge, match="inflates"):
                await run_export(spec, client, sink, timing)
    finally:
        sink.close()
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
