"""Lanes over several processes (``daemon.processes``, issue 35 item 6): every window
exported once, by the process that owns its lane, and every lane's events counted by
process 0 (its log, /metrics, /healthz, the exit code); reloads, stops and a worker's
death as with one process. Driven against the emulator, each daemon a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import structlog

from acexport.daemon.shard import Shard, moved_workspaces, owner_of, pin_to_one_cpu
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import (
    ALL_IN_WINDOWS,
    DaemonProcess,
    asked,
    emulator_sha,
    job,
    manifests,
    write_config,
)
from tests.ports import free_port

TOKENS = {f"ws{i}": f"token-{i}" for i in range(6)}


def _jobs(tokens: dict[str, str]) -> str:
    return "".join(
        job(f"daily-{ws}", ws, catch_up="3d", lag="0s", modes=ALL_IN_WINDOWS) for ws in tokens
    )


def test_a_lane_has_one_owner_whatever_asks() -> None:
    """The owner is the lane name's hash: the same in every process, and a reload that
    moves a workspace's lane (a token now shared) is named."""
    lanes = [f"ws{i}" for i in range(200)]
    owners = Counter(owner_of(lane, 2) for lane in lanes)
    assert set(owners) == {0, 1}
    assert min(owners.values()) > 70  # spread, not lopsided
    for lane in lanes:
        assert [Shard(i, 3).owns(lane) for i in range(3)].count(True) == 1
        assert Shard().owns(lane)
    # Two workspaces of two processes now share a token: one lane, so one moves.
    a, b = next((a, b) for a in lanes for b in lanes if owner_of(a, 2) < owner_of(b, 2))
    before, after = {a: a, b: b}, {a: f"{a}+{b}", b: f"{a}+{b}"}
    assert len(moved_workspaces(2, before, after)) == 1
    assert moved_workspaces(2, before, before) == []
    assert moved_workspaces(1, before, after) == []


async def test_run_once_over_two_processes_exports_every_window_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emu = await emulator(tokens=TOKENS, processing_s=0.03, records=20)
    config = write_config(tmp_path, emu, _jobs(TOKENS), extra="processes = 2")
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(120) == 0, "\n".join(daemon.raw[-30:])
    exported = manifests(tmp_path / "exports")
    assert len(exported) == 6 * 6 * 3
    windows = Counter((m["workspace"], m["type"], m["fromDate"]) for m in exported)
    assert len(windows) == 108  # each window once
    served = emulator_sha(await emu.jobs())
    for manifest in exported:
        assert manifest["payload_sha256"] == served[asked(manifest)]
    # Each AC export asked once (a job's 3 days coalesced): none by two processes.
    report = await emu.jobs()
    assert sum(ws["jobs"] for ws in report["workspaces"].values()) == len(
        {asked(m) for m in exported}
    )
    # Both processes exported, and process 0 counted the worker's too.
    started = daemon.events("daemon_started")
    assert len(started) == 2
    assert {line.get("worker") for line in started} == {None, 1}
    assert sorted(lane for line in started for lane in line["lanes"]) == sorted(TOKENS)
    finished = {line.get("worker"): line["exported"] for line in daemon.events("run_once_finished")}
    worker_lanes = [len(line["lanes"]) for line in started if line.get("worker") == 1]
    assert finished == {1: worker_lanes[0] * 18, None: 108}
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = dict(db.execute("SELECT state, count(*) FROM exports GROUP BY state"))
    assert states == {"done": 108}


def _listening(config: Path) -> str:
    port = free_port()
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    return f"http://127.0.0.1:{port}"


async def _done_exports(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """Windows exported, by workspace, as process 0's /metrics counts them."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    done: dict[str, float] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "acexport_exports_total" and sample.labels["outcome"] == "done":
                done[sample.labels["workspace"]] += sample.value
    return done


def _gone(pid: int) -> bool:
    """Ended (a zombie of an ended parent counts: it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.05)


async def test_a_daemon_over_two_processes_counts_every_lane_reloads_and_stops(
    emulator: EmulatorFactory, tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """/metrics, /healthz and the status page are process 0's, with the worker's lanes
    in them; a reload reaches the worker (new workspaces on both); SIGTERM ends both."""
    later = {f"ws{i}": f"token-{i}" for i in range(6, 40)}
    # Two new workspaces, one for each process.
    first_of = {owner: next(ws for ws in later if owner_of(ws, 2) == owner) for owner in (0, 1)}
    added = {ws: later[ws] for ws in first_of.values()}
    emu = await emulator(tokens={**TOKENS, **added}, processing_s=0.03, records=20)
    config = write_config(tmp_path, emu, _jobs(TOKENS), tokens=TOKENS, extra="processes = 2")
    url = _listening(config)
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: len(daemon.events("daemon_started")) == 2)
    worker_pid = daemon.events("worker_started")[0]["pid"]

    async def all_done(expected: dict[str, str]) -> bool:
        done = await _done_exports(session, url)
        return all(done.get(ws) == 18 for ws in expected)

    await _until(lambda: all_done(TOKENS))
    async with session.get(f"{url}/healthz") as response:
        assert response.status == 200
    async with session.get(f"{url}/metrics") as response:
        lanes = {
            line.split('lane="')[1].split('"')[0]
            for line in (await response.text()).splitlines()
            if line.startswith("acexport_lane_queue_depth{")
        }
    assert lanes == set(TOKENS)  # the worker's lanes too
    async with session.get(f"{url}/") as response:
        page = await response.text()
    assert all(ws in page for ws in TOKENS)

    config.write_text(
        write_config(
            tmp_path, emu, _jobs({**TOKENS, **added}), tokens={**TOKENS, **added},
            extra="processes = 2",
        ).read_text().replace('listen = ""', f'listen = "{url.removeprefix("http://")}"')
    )  # fmt: skip
    daemon.send(signal.SIGHUP)
    await _until(lambda: all_done({**TOKENS, **added}))
    reloaded = daemon.events("config_reloaded")
    assert {line.get("worker") for line in reloaded} == {None, 1}

    daemon.send(signal.SIGTERM)
    assert await daemon.wait(30) == 0
    assert _gone(worker_pid)
    assert {line.get("worker") for line in daemon.events("daemon_stopped")} == {None, 1}
    windows = Counter(
        (m["workspace"], m["type"], m["fromDate"]) for m in manifests(tmp_path / "exports")
    )
    assert len(windows) == 8 * 18
    assert set(windows.values()) == {1}


async def test_a_reload_that_would_move_a_lane_to_another_process_is_refused(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Two workspaces that now share a token share a lane, owned by one process: the
    other's lane may still be exporting. The reload is refused in both, as is a change
    of daemon.processes; the daemon goes on with the config it has."""
    pair = next(
        (a, b) for a in TOKENS for b in TOKENS if a < b and owner_of(a, 2) != owner_of(b, 2)
    )
    emu = await emulator(tokens=TOKENS, processing_s=0.03, records=5)
    config = write_config(tmp_path, emu, _jobs(TOKENS), extra="processes = 2")
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: len(daemon.events("daemon_started")) == 2)
    shared = {**TOKENS, pair[1]: TOKENS[pair[0]]}
    text = config.read_text()
    config.write_text(text.replace(f'token = "{TOKENS[pair[1]]}"', f'token = "{shared[pair[1]]}"'))
    daemon.send(signal.SIGHUP)
    await daemon.wait_for(lambda: len(daemon.events("config_reload_rejected")) == 2)
    moved = {line["error"] for line in daemon.events("config_reload_rejected")}
    assert len(moved) == 1
    assert "would move to another of the daemon's processes" in moved.pop()
    config.write_text(text.replace("processes = 2", "processes = 3"))
    daemon.send(signal.SIGHUP)
    await daemon.wait_for(lambda: len(daemon.events("config_reload_rejected")) == 4)
    assert "daemon.processes cannot change" in daemon.events("config_reload_rejected")[-1]["error"]
    assert not daemon.events("config_reloaded")
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(30) == 0


def _cpus_of_threads(pid: int) -> dict[str, str]:
    """Each thread of ``pid``: the CPUs it may run on, as the kernel lists them."""
    allowed = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            status = (task / "status").read_text()
            allowed[task.name] = next(
                line.split(":", 1)[1].strip()
                for line in status.splitlines()
                if line.startswith("Cpus_allowed_list:")
            )
    return allowed


async def test_pinned_processes_each_run_every_thread_on_one_cpu(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """daemon.pin_cpus: process k's threads (the loop's, the ledger's, the sink's made
    later) all on the k-th CPU it was allowed; the windows are exported as ever; a
    reload that changes the setting is refused."""
    emu = await emulator(tokens=TOKENS, processing_s=0.03, records=20)
    extra = "processes = 2\npin_cpus = true"
    config = write_config(tmp_path, emu, _jobs(TOKENS), extra=extra)
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: len(daemon.events("export_done")) >= 30, timeout=120)
    cpus = sorted(os.sched_getaffinity(0))
    expected = {None: cpus[0], 1: cpus[1 % len(cpus)]}
    said = {line.get("worker"): line["cpu"] for line in daemon.events("process_pinned")}
    assert said == expected
    (worker,) = daemon.events("worker_started")
    for pid, cpu in ((daemon.process.pid, expected[None]), (worker["pid"], expected[1])):
        threads = _cpus_of_threads(pid)
        assert len(threads) > 3  # the loop's, the ledger's and the sink's at least
        assert set(threads.values()) == {str(cpu)}, (pid, threads)
    config.write_text(config.read_text().replace("pin_cpus = true", "pin_cpus = false"))
    daemon.send(signal.SIGHUP)
    await daemon.wait_for(lambda: len(daemon.events("config_reload_rejected")) == 2)
    assert "daemon.pin_cpus cannot change" in daemon.events("config_reload_rejected")[-1]["error"]
    await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 108, timeout=120)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(30) == 0


def test_a_process_that_cannot_be_pinned_says_so_and_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cpuset that changed under it (or no affinity at all): a warning, not a stop."""

    def refuse(*_: object) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with structlog.testing.capture_logs() as logs:
        pin_to_one_cpu(Shard(1, 2))
    (said,) = logs
    assert said["event"] == "process_not_pinned"
    assert said["log_level"] == "warning"
    assert said["error"] == "[Errno 22] Invalid argument"


async def test_what_a_worker_says_that_process_0_cannot_read_fails_the_daemon(
    tmp_path: Path,
) -> None:
    """A frame that is not JSON, or a message of no known kind (a bug: both sides are
    this acexport), fails the daemon, naming the worker; neither ends quietly."""
    from acexport.daemon.shard import FRAME, LinkReader
    from acexport.daemon.workers import Heard, Worker, Workers

    failures: list[BaseException] = []
    workers = Workers(2, tmp_path / "acexport.toml", False, 1.0, failures.append)
    broken: list[Exception] = []
    reader = LinkReader(lambda message: None, broken.append)
    reader.data_received(FRAME.pack(5) + b"[oops")
    assert len(broken) == 1
    worker = Worker(1, None, reader)  # type: ignore[arg-type]
    workers.listen(Heard(None, lambda job, count: None, lambda lag: None))  # type: ignore[arg-type]
    workers._hear(worker, ["gossip", 1])
    (failure,) = failures
    assert "worker process 1" in str(failure)
    assert "not a message this acexport sends" in str(failure)


@pytest.mark.parametrize("killed", ["worker", "process 0"])
async def test_a_killed_process_ends_the_other_and_a_restart_loses_nothing(
    emulator: EmulatorFactory, tmp_path: Path, killed: str
) -> None:
    """The worker killed: process 0 stops, exit 1, naming it. Process 0 killed: its
    worker is killed with it (not stopped within its grace), so a daemon started at
    once takes the state, with no worker of the last one exporting beside it. Either
    way a restart exports every window once."""
    emu = await emulator(tokens=TOKENS, processing_s=0.15, records=5)
    config = write_config(tmp_path, emu, _jobs(TOKENS), extra="processes = 2")
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: len(daemon.events("daemon_started")) == 2)
    worker_pid = daemon.events("worker_started")[0]["pid"]
    if killed == "worker":
        os.kill(worker_pid, signal.SIGKILL)
        assert await daemon.wait(30) == 1
        failing = [line["error"] for line in daemon.events("daemon_failing")]
        assert failing == ["worker process 1 exited with -9"]
    else:
        daemon.send(signal.SIGKILL)
        await daemon.wait(30)

        async def gone() -> bool:
            return _gone(worker_pid)

        await _until(gone, 5)

    again = await DaemonProcess.start(config, "--once")
    assert await again.wait(120) == 0, "\n".join(again.raw[-20:])
    windows = Counter(
        (m["workspace"], m["type"], m["fromDate"]) for m in manifests(tmp_path / "exports")
    )
    assert len(windows) == 108
    assert set(windows.values()) == {1}


async def test_the_hooks_hear_of_every_processs_files_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Process 0 alone tells the hooks, of the worker's files as of its own: one event a
    file, each told once, before run --once exits."""
    told = tmp_path / "told"
    told.mkdir()
    hook = (
        '\n[[hooks]]\nname = "told"\n'
        f'command = ["sh", "-c", "cat > \\"$0/$ACEXPORT_EVENT_ID.$$\\"", "{told}"]\n'
    )
    emu = await emulator(tokens=TOKENS, processing_s=0.03, records=5)
    config = write_config(tmp_path, emu, _jobs(TOKENS) + hook, extra="processes = 2")
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(120) == 0, "\n".join(daemon.raw[-30:])
    events = [json.loads(path.read_text()) for path in told.iterdir()]  # one a delivery
    assert len({path.name.split(".")[0] for path in told.iterdir()}) == len(events) == 108
    assert Counter(event["workspace"] for event in events) == dict.fromkeys(TOKENS, 18)


def test_a_lock_held_by_an_ending_worker_is_waited_for_briefly(tmp_path: Path) -> None:
    """The lock file names a daemon that is gone while another process still holds the
    lock (a worker killed with it, still ending): the next daemon waits for it, where
    a lock whose daemon runs is refused at once."""
    import subprocess
    import sys
    import time

    from acexport.lock import StateDirLocked, release_lock, take_lock

    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names no process now
    holder = take_lock(tmp_path)
    (tmp_path / "acexport.lock").write_text(f"{ended.pid}\n")
    # A child holds the lock (its copy of the descriptor) a little longer, as a worker.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(0.5)"], pass_fds=(holder.fileno(),)
    )
    holder.close()
    started = time.monotonic()
    taken = take_lock(tmp_path)
    assert 0.2 < time.monotonic() - started < 5
    child.wait()
    release_lock(taken)

    running = take_lock(tmp_path)  # names this process, which runs
    started = time.monotonic()
    with pytest.raises(StateDirLocked, match=f"pid {os.getpid()}"):
        take_lock(tmp_path)
    assert time.monotonic() - started < 0.5
    release_lock(running)
