"""Helpers for daemon tests: configs pointing at the emulator, subprocess control, checks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from acexport.output.local import LocalStore
from acexport.output.sink import Sink
from tests.conftest import RunningEmulator

FAST_HTTP = """
[http]
poll_initial = "50ms"
poll_max = "150ms"
retry_initial = "20ms"
retry_max = "100ms"
max_attempts = 30
"""


def write_config(
    tmp_path: Path,
    emu: RunningEmulator,
    jobs: str,
    tokens: dict[str, str] | None = None,
    extra: str = "",
    name: str = "acexport.toml",
) -> Path:
    """A config with one workspace per emulator token (or ``tokens``) and the given jobs."""
    # A retention of a century: the tests export 2022's windows (retention's own tests
    # set the emulator's).
    workspaces = "".join(
        f'\n[workspaces.{ws}]\nbase_url = "{emu.url}"\ntoken = "{token}"\nretention = 1200\n'
        for ws, token in (tokens or emu.tokens).items()
    )
    path = tmp_path / name
    # The output is spelt once: output.url in ``extra``, else daemon.output_dir.
    output_dir = "" if "\nurl = " in extra else f'output_dir = "{tmp_path / "exports"}"\n'
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n{output_dir}'
        f'log_format = "json"\nstop_grace = "2s"\npickup_interval = "200ms"\nlisten = ""\n'
        f"{extra}\n{FAST_HTTP}{workspaces}\n{jobs}"
    )
    path.chmod(0o600)
    return path


# The entity types exported in windows, as time series are: for tests of the window
# machinery over every type (entity tables are snapshots by default).
ALL_IN_WINDOWS = dict.fromkeys(["identity", "individual", "membership", "segment"], "windows")


def job(name: str, workspace: str, **fields: object) -> str:
    lines = [f'name = "{name}"', f'workspace = "{workspace}"']
    lines += [f"{key} = {_toml(value)}" for key, value in fields.items()]
    return "\n[[jobs]]\n" + "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


class DaemonProcess:
    """`acexport run` in a subprocess; its stderr (JSON log lines) is collected.
    One a failed test leaves running is killed after it (``kill_left_running``)."""

    started: list[DaemonProcess] = []  # noqa: RUF012 - every test's, until killed

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        assert process.stderr is not None
        self._reader = asyncio.create_task(self._read(process.stderr))

    @classmethod
    async def start(
        cls, config: Path, *args: str, preexec_fn: Callable[[], None] | None = None
    ) -> DaemonProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "acexport",
            "run",
            "--config",
            str(config),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ACEXPORT_CONFIG": ""},
            preexec_fn=preexec_fn,
        )
        daemon = cls(process)
        cls.started.append(daemon)
        return daemon

    @classmethod
    def kill_left_running(cls) -> None:
        """A daemon whose test failed before stopping it went on exporting, and retrying
        once the emulator was gone, for as long as the session ran (and took the CPU
        that later tests and benchmarks measured)."""
        for daemon in cls.started:
            if daemon.process.returncode is None:  # not reaped: the pid is still its own
                with contextlib.suppress(ProcessLookupError):
                    os.kill(daemon.process.pid, signal.SIGKILL)
        cls.started.clear()

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(text))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self.process.returncode is not None:
                    raise AssertionError("daemon exited: " + "\n".join(self.raw[-20:]))
                await asyncio.sleep(0.05)

    def send(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._reader
        return code


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".json"))


def manifests(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*.manifest.json"))]


def asked(manifest: dict[str, Any]) -> tuple[str, str, str]:
    """(workspace, type, fromDate) of the AC request a file came from: a time series'
    window names the request it was cut out of (one of many windows, or through its end)."""
    from_date = manifest.get("request_fromDate", manifest["fromDate"])
    return manifest["workspace"], manifest["type"], from_date


def emulator_sha(report: dict[str, Any]) -> dict[tuple[str, str, str], str]:
    """(workspace, type, fromDate) -> sha256 of the data the emulator served."""
    return {
        (j["workspace"], j["type"], j["fromDate"]): j["sha256"]
        for j in report["jobs"]
        if j["state"] == "READY"
    }


def local_sink(out: Path, temp: Path, compression: str = "none") -> Sink:
    """A sink committing into the directory ``out`` (its LocalStore), temp files in ``temp``."""
    return Sink(temp, compression, LocalStore(out, temp))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def export_server(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An 'AC' on loopback whose export route answers with ``answer``; its base URL."""
    app = web.Application()
    app.router.add_get("/api/reports/export/{type}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def run_cli(
    *args: str, env: dict[str, str] | None = None, fsize_limit: int | None = None
) -> tuple[int, bytes, str]:
    """``acexport ARGS`` in a subprocess: exit code, stdout, stderr (under a file-size
    limit if given); a token in ACME_TOKEN and quick polling for configless runs."""

    def limit() -> None:
        if fsize_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Without a config file, polling would start at the 15 s default.
        env={
            **os.environ,
            "ACME_TOKEN": "acme-token",
            "ACEXPORT_HTTP__POLL_INITIAL": "100ms",
            **(env or {}),
        },
        preexec_fn=limit,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stdout, stderr.decode()


async def run_once_at(config: Path, clock: Callable[[], float]) -> None:
    """``run --once`` in this process, the daemon's time read from ``clock`` (epoch
    seconds: a FakeClock the test moves), every export succeeding."""
    from datetime import UTC, datetime

    from acexport.config import load_settings
    from acexport.daemon import Daemon

    now = lambda: datetime.fromtimestamp(clock(), UTC)  # noqa: E731
    async with Daemon(load_settings(config), config, clock=now) as daemon:
        assert await daemon.run_once()
