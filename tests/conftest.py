"""Shared fixtures: the emulator on a real loopback socket, and library shims."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest.mock import Mock

import aiohttp
import aioresponses.core
import pytest
from aiohttp import ClientResponse, web

from acexport.emulator import EmulatorSettings, FaultSettings, QueueSettings, make_app
from acexport.emulator.process import EmulatorClient
from tests.seaweed import Seaweed, running_seaweed


class _CompatClientResponse(ClientResponse):
    """aioresponses 0.7.9 builds responses without aiohttp 3.14's ``stream_writer``.

    Upstream issue pnuckowski/aioresponses#289; drop this once a fixed release is out.
    """

    def __init__(self, *args: Any, stream_writer: Any = None, **kwargs: Any) -> None:
        writer = stream_writer if stream_writer is not None else Mock(output_size=0)
        super().__init__(*args, stream_writer=writer, **kwargs)


aioresponses.core.ClientResponse = _CompatClientResponse  # type: ignore[misc]


class FakeClock:
    """The emulator's time, moved by the test instead of waited for."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RunningEmulator:
    """An emulator serving on 127.0.0.1; ``url`` is its base URL."""

    url: str
    app: web.Application
    tokens: dict[str, str]

    def export_url(self, type_: str) -> str:
        return f"{self.url}/api/reports/export/{type_}"

    async def jobs(self) -> dict[str, Any]:
        """The emulator's report (``/_emulator/jobs``), through the shared client."""
        return await asyncio.to_thread(EmulatorClient(self.url).report)

    async def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """The first /_emulator/jobs report for which ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                report = await self.jobs()
                if predicate(report):
                    return report
                await asyncio.sleep(0.05)

    async def control(self, path: str, body: dict[str, Any]) -> None:
        await asyncio.to_thread(EmulatorClient(self.url).control, path, body)


EmulatorFactory = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture(autouse=True)
def _no_daemon_left_running() -> Iterator[None]:
    yield
    from tests.daemon_helpers import DaemonProcess  # it imports this module

    DaemonProcess.kill_left_running()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session for the test, closed after it."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorFactory]:
    """Start emulators with the given settings; each is stopped after the test.

    Keyword arguments: ``tokens`` (workspace -> token), ``faults`` (a
    FaultSettings), ``clock`` (a FakeClock to drive time), and any field of
    QueueSettings or EmulatorSettings (``gzip``, ``redirect``, ``ranges``,
    ``auth_failure``, ``status_code``, ``retention_months``, ...). With none, it
    answers as the real service does (ZIP, chunked, 500 on a bad token), with no
    processing time.
    """
    runners: list[web.AppRunner] = []
    server_errors = _ErrorRecords()
    logging.getLogger("aiohttp").addHandler(server_errors)

    async def start(
        tokens: dict[str, str] | None = None,
        faults: FaultSettings | None = None,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> RunningEmulator:
        tokens = tokens or {"acme": "acme-token"}
        queue_fields = {f.name for f in dataclasses.fields(QueueSettings)}
        queue = {k: v for k, v in options.items() if k in queue_fields}
        queue.setdefault("processing_s", 0.0)
        settings = EmulatorSettings(
            tokens=tokens,
            queue=QueueSettings(**queue),
            faults=faults or FaultSettings(),
            **{k: v for k, v in options.items() if k not in queue_fields},
        )
        app = make_app(settings, clock)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return RunningEmulator(f"http://127.0.0.1:{port}", app, tokens)

    yield start
    for runner in runners:
        await runner.cleanup()
    logging.getLogger("aiohttp").removeHandler(server_errors)
    assert not server_errors.records, "the emulator logged errors: " + "; ".join(
        record.getMessage() for record in server_errors.records
    )


class _ErrorRecords(logging.Handler):
    """Collects errors the server logs (a handler crash is not seen by the client)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    """A real S3 engine on loopback for the whole session; tests take a bucket each."""
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as store:
        yield store
