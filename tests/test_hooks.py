"""Hooks (issue 36): every committed file told, durably, at least once, in order.

Against the emulator and real receivers on loopback: an aiohttp webhook receiver
that fails, times out, throttles and then accepts; command hooks that are real
programs; the daemon killed with deliveries pending.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import stat
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from acexport.config import load_settings
from acexport.daemon import Daemon
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, write_config

WINDOWS = dict(types=["page"], window="1d", catch_up="3d", lag="0s")


class Receiver:
    """A webhook receiver: answers each POST with the next planned answer (then 200)."""

    def __init__(self, answers: list[Callable[[], web.StreamResponse]] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.answers:
            answer = self.answers.pop(0)()
            if isinstance(answer, _Hang):
                await asyncio.sleep(answer.seconds)
                return web.Response(status=200)
            return answer
        self.received.append((json.loads(body), dict(request.headers), body))
        return web.Response(status=204)

    def ids(self) -> list[str]:
        return [event["id"] for event, _, _ in self.received]


class _Hang(web.Response):
    def __init__(self, seconds: float) -> None:
        super().__init__(status=200)
        self.seconds = seconds


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/events"
        yield receiver
    finally:
        await runner.cleanup()


def hook(name: str, **fields: object) -> str:
    lines = [f'name = "{name}"'] + [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "\n[[hooks]]\n" + "\n".join(lines) + "\n"


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def configure(tmp_path: Path, emu: Any, jobs_and_hooks: str, grace: str = "6s") -> Path:
    """A config of the jobs and hooks; run --once tells the hooks within ``grace``."""
    config = write_config(tmp_path, emu, jobs_and_hooks)
    config.write_text(config.read_text().replace('stop_grace = "2s"', f'stop_grace = "{grace}"'))
    return config


async def run_once(config: Path) -> bool:
    async with Daemon(load_settings(config), config) as daemon:
        return await daemon.run_once()


async def test_a_webhook_gets_every_window_once_signed_after_failures_and_throttling(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """500, a timeout, 429 with Retry-After, then 2xx: each committed window is POSTed
    until it is accepted, with its stable id and an HMAC-SHA256 signature of the body."""
    emu = await emulator(processing_s=0.05)
    (tmp_path / "hook-secret").write_text("s3cret-value\n")
    receiver = Receiver(
        [
            lambda: web.Response(status=500, text="down"),
            lambda: _Hang(3),
            lambda: web.Response(status=429, headers={"Retry-After": "1"}),
        ]
    )
    async with receiving(receiver):
        loader = hook("loader", url=receiver.url, secret_file="hook-secret", timeout="1s")
        config = configure(tmp_path, emu, job("daily", "acme", **WINDOWS) + loader)
        assert await run_once(config)
    files = manifests(tmp_path / "exports")
    assert len(files) == 3
    assert len(receiver.received) == 3
    assert len(set(receiver.ids())) == 3
    for event, headers, body in receiver.received:
        expected = hmac.new(b"s3cret-value", body, hashlib.sha256).hexdigest()
        assert headers["X-Acexport-Signature"] == f"sha256={expected}"
        assert headers["X-Acexport-Event"] == event["id"]
        assert event["event"] == "committed" and event["job"] == "daily"
        assert event["mode"] == "windows" and event["revision"] == 1
        assert Path(event["url"]).is_file() and Path(event["manifest"]).is_file()
        manifest = json.loads(Path(event["manifest"]).read_text())
        assert (event["file_sha256"], event["records"]) == (
            manifest["file_sha256"],
            manifest["records"],
        )
        assert event["fromDate"] == manifest["fromDate"]
    # Commit order: the windows in the order their files were committed.
    committed = [event["committedAt"] for event, _, _ in receiver.received]
    assert committed == sorted(committed)
