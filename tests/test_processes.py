"""Lanes over several processes (``daemon.processes``, issue 35 item 6): every window
exported once, by the process that owns its lane, and every lane's events counted by
process 0 (its log, /metrics, /healthz, the exit code); reloads, stops and a worker's
death as with one process. Driven against the emulator, each daemon a real process."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from acexport.daemon.shard import Shard, moved_workspaces, owner_of
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


def _jobs(tokens: dict[str, str], **fields: object) -> str:
    return "".join(
        job(f"daily-{ws}", ws, catch_up="3d", lag="0s", modes=ALL_IN_WINDOWS, **fields)
        for ws in tokens
    )


def test_a_lane_has_one_owner_whatever_asks() -> None:
    """The owner is the lane name's hash: the same in every process, and a reload that
    moves a workspace's lane (a token now shared) is named."""
    lanes = [f"ws{i}" for i in range(200)]
    owners = Counter(owner_of(lane, 2) for lane in lanes)
    assert set(owners) == {0, 1} and min(owners.values()) > 70  # spread, not lopsided
    for lane in lanes:
        assert [Shard(i, 3).owns(lane) for i in range(3)].count(True) == 1
        assert Shard().owns(lane)
    before = {"a": "a", "b": "b"}
    after = {"a": "a+b", "b": "a+b"}  # now one token: one lane, one owner
    moved = moved_workspaces(2, before, after)
    assert moved == [w for w in "ab" if owner_of(w, 2) != owner_of("a+b", 2)]
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
    assert len(started) == 2 and {line.get("worker") for line in started} == {None, 1}
    assert sorted(lane for line in started for lane in line["lanes"]) == sorted(TOKENS)
    finished = {line.get("worker"): line["exported"] for line in daemon.events("run_once_finished")}
    worker_lanes = [len(line["lanes"]) for line in started if line.get("worker") == 1]
    assert finished == {1: worker_lanes[0] * 18, None: 108}
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = dict(db.execute("SELECT state, count(*) FROM exports GROUP BY state"))
    assert states == {"done": 108}
