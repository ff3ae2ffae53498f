"""The daemon end to end against the emulator: run --once, lanes, signals, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from acexport.emulator import FaultSettings
from tests.conftest import EmulatorFactory, FakeClock, RunningEmulator
from tests.daemon_helpers import (
    ALL_IN_WINDOWS,
    DaemonProcess,
    asked,
    data_files,
    emulator_sha,
    job,
    manifests,
    write_config,
)

# Every test here runs processes (or a real store) for seconds: not in the quick loop.
pytestmark = pytest.mark.slow

TOKENS = {"alpha": "alpha-token", "beta": "beta-token", "gamma": "gamma-token"}


async def test_run_once_exports_every_window_once_and_reports_a_bad_token(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """3 workspaces x 6 types x 7 days, a token answered with 500 pages: 84 exports, exit 1."""
    emu = await emulator(tokens=TOKENS, processing_s=0.03, records=30)
    jobs = "".join(
        job(f"daily-{ws}", ws, catch_up="7d", lag="0s", modes=ALL_IN_WINDOWS) for ws in TOKENS
    )
    config = write_config(tmp_path, emu, jobs, tokens={**TOKENS, "gamma": "revoked-token"})
    started = time.monotonic()
    first = await DaemonProcess.start(config, "--once")
    assert await first.wait(120) == 1
    assert time.monotonic() - started < 90
    exported = manifests(tmp_path / "exports")
    assert len(exported) == 84
    assert Counter(m["workspace"] for m in exported) == {"alpha": 42, "beta": 42}
    report = await emu.jobs()
    served = emulator_sha(report)
    for manifest in exported:
        assert manifest["payload_sha256"] == served[asked(manifest)]
    assert len(data_files(tmp_path / "exports")) == 84
    rejected = first.events("lane_token_rejected")
    assert rejected
    assert rejected[0]["workspace"] == "gamma"
    assert "check the token" in rejected[0]["error"]
    assert len(first.events("export_token_suspected")) == 1  # the lane's queue fails at once
    assert "revoked-token" not in "\n".join(first.raw)
    assert report["workspaces"]["alpha"]["max_unready"] == 1
    assert report["workspaces"]["beta"]["max_unready"] == 1

    requests_before = {ws: report["workspaces"][ws]["requests"] for ws in ("alpha", "beta")}
    second = await DaemonProcess.start(config, "--once")
    assert await second.wait(60) == 1  # gamma still fails
    after = await emu.jobs()
    assert {ws: after["workspaces"][ws]["requests"] for ws in requests_before} == requests_before
    assert len(manifests(tmp_path / "exports")) == 84


@pytest.mark.parametrize("seats", [2, None])
async def test_every_lane_shares_a_bound_on_the_requests_made_to_ac_at_once(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seats: int | None
) -> None:
    """Issue 35 item 6: a thousand lanes' polls falling due together sent hundreds of
    requests in one turn of the event loop (its lag 200-290 ms). The lanes share
    ``REQUESTS_AT_ONCE`` seats, a request holding one until its data is downloaded:
    with 2, AC never answers more than 2 at once, and every export is still done.
    Without the bound (None: the default of 64) the same six lanes ask more at once."""
    from acexport.config import load_settings
    from acexport.daemon import Daemon

    if seats is not None:
        monkeypatch.setattr("acexport.lane.seats.REQUESTS_AT_ONCE", seats)
    tokens = {f"ws{i}": f"ws{i}-token" for i in range(6)}
    emu = await emulator(tokens=tokens, processing_s=0.05, records=2000,
                         faults=FaultSettings(slow_bytes_per_s=400_000))  # fmt: skip
    jobs = "".join(job(ws, ws, types=["page"], catch_up="1d", lag="0s") for ws in tokens)
    config = write_config(tmp_path, emu, jobs)
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()
    assert len(manifests(tmp_path / "exports")) == 6
    at_once = (await emu.jobs())["most_requests_at_once"]
    assert at_once <= 2 if seats else at_once > 2, at_once


async def test_lane_submits_the_next_export_as_soon_as_data_is_ready(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """8 exports of 1 s on one workspace: AC's slot is never idle for more than 0.5 s.
    (bench/lane_utilisation.py measures the same at scale.)"""
    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=1.0, records=20)
    jobs = job("hourly", "alpha", types=["page"], window="1h", catch_up="8h", lag="0s",
               coalesce_max=0)  # an export per window: the slot passes 8 times  # fmt: skip
    daemon = await DaemonProcess.start(write_config(tmp_path, emu, jobs), "--once")
    assert await daemon.wait(120) == 0
    timeline = sorted(
        (j["timeline"] for j in (await emu.jobs())["jobs"]), key=lambda t: t["created"]
    )
    assert len(timeline) == 8
    gaps = [nxt["created"] - cur["ready"] for cur, nxt in itertools.pairwise(timeline)]
    assert max(gaps) <= 0.5, gaps
    assert (await emu.jobs())["workspaces"]["alpha"]["max_unready"] == 1


async def test_the_learned_processing_time_is_acs_not_the_lanes_own_delays(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AC's time is learned from when requests were sent, not from when the ledger
    was written: with each claim and each ready mark 0.3 s late (a busy ledger), the
    learned spans stay AC's (they grew by those delays, export after export, at a
    thousand lanes: bench/scale.py)."""
    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from acexport.ledger import Ledger

    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.4, records=5)
    jobs = job("hourly", "alpha", types=["page"], window="1h", catch_up="4h", lag="0s",
               coalesce_max=0)  # fmt: skip
    config = write_config(tmp_path, emu, jobs)
    claim, mark_ready = Ledger.claim, Ledger.mark_ready

    async def late_claim(self: Ledger, *args: object, **kwargs: object) -> object:
        claimed = await claim(self, *args, **kwargs)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        return claimed

    async def late_mark_ready(self: Ledger, *args: object, **kwargs: object) -> None:
        await asyncio.sleep(0.3)
        await mark_ready(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Ledger, "claim", late_claim)
    monkeypatch.setattr(Ledger, "mark_ready", late_mark_ready)
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()

    truth = sorted(
        j["timeline"]["ready"] - j["timeline"]["created"] for j in (await emu.jobs())["jobs"]
    )
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        spans = db.execute("SELECT ready_at - submitted_at FROM exports").fetchall()
    learned = sorted(span for (span,) in spans)
    assert len(learned) == len(truth) == 4
    for ours, acs in zip(learned, truth, strict=True):
        # Sent before AC's clock starts and after it stops: a few ms shorter at most,
        # and longer by a poll (poll_max 150 ms) and a busy machine's timer lateness,
        # never by the 0.6 s of delays (before: 1.06 s learned for AC's 0.4 s).
        assert acs - 0.05 <= ours <= acs + 0.35, (learned, truth)


async def _short_exports(
    emulator: EmulatorFactory, tmp_path: Path, hours: int
) -> tuple[RunningEmulator, Path]:
    """One lane's ``hours`` hourly page exports, 0.4 s each at AC, checked as far apart
    as history says: one check for a short export."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.4, records=5)
    jobs = job("hourly", "alpha", types=["page"], window="1h", catch_up=f"{hours}h", lag="0s",
               coalesce_max=0)  # fmt: skip
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace('poll_max = "150ms"', 'poll_max = "5s"'))
    return emu, config


async def test_the_learned_processing_time_leaves_out_the_polls_own_lateness(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A check due when history said the data would be ready, sent late (a busy loop
    wakes its timer late, a full connection pool holds it), finds the data: what is
    learned is the time it was due. Learned as the time it left, each export's
    lateness made the next check later (AC's 1.0 s became 1.4-1.5 s at a thousand
    lanes: bench/scale.py)."""
    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from acexport.lane import Lane

    emu, config = await _short_exports(emulator, tmp_path, hours=4)
    sleep = Lane._sleep

    async def late_sleep(self: Lane, export_id: int, delay_s: float) -> None:
        await sleep(self, export_id, delay_s + 0.2)

    monkeypatch.setattr(Lane, "_sleep", late_sleep)
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()

    truth = [j["timeline"]["ready"] - j["timeline"]["created"] for j in (await emu.jobs())["jobs"]]
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        rows = db.execute("SELECT ready_at - submitted_at FROM exports ORDER BY submitted_at")
        learned = [span for (span,) in rows.fetchall()]
    assert len(learned) == len(truth) == 4
    # The first, without history, is as late as its request: its time is learned.
    # Those after are checked when it says, 0.2 s late, and learn no more than it
    # (before: 0.51, 0.71, 0.91, 0.91 s).
    assert max(learned[1:]) <= learned[0] + 0.05, (learned, truth)
    assert min(learned) >= max(truth) - 0.05, (learned, truth)


async def test_a_submission_held_on_its_way_to_ac_does_not_make_its_check_early(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short export is checked once, when history says its data is ready: counted
    from AC's answer to the submission, not from when it was sent. A submission held
    on its way (a full connection pool, AC's own queue: 0.4 s here, every other
    export) reaches AC that much later, and so does its data. Counted from the send,
    its check came 0.4 s early and missed; at a thousand lanes, 70-97% of the exports
    whose submission was held 0.4 s or more missed, and each miss raised the time
    learned for the next."""
    from acexport.ac.client import ExportClient
    from acexport.config import load_settings
    from acexport.daemon import Daemon

    emu, config = await _short_exports(emulator, tmp_path, hours=6)
    request = ExportClient.request
    submissions = itertools.count()

    @contextlib.asynccontextmanager
    async def held(self: ExportClient, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if not getattr(self, "submitted", False):  # an export's first request
            self.submitted = True  # type: ignore[attr-defined]
            if next(submissions) % 2:
                await asyncio.sleep(0.4)
        async with request(self, *args, **kwargs) as answer:
            yield answer

    monkeypatch.setattr(ExportClient, "request", held)
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()

    ac_jobs = sorted((await emu.jobs())["jobs"], key=lambda j: j["timeline"]["created"])
    assert len(ac_jobs) == 6
    # The first has no history (it is polled); every one after: submitted, then found
    # by its one check (before: 3 requests for each held one, and growing).
    assert [j["requests"] for j in ac_jobs[1:]] == [2] * 5, ac_jobs


async def test_the_next_export_reaches_ac_only_once_the_ready_mark_is_durable(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An export's ready mark is in the ledger before AC sees the lane's next export,
    however slow the ledger (0.3 s here): after a crash, the ledger must never show two
    exports waiting on AC at once. (Kept from a change that handed the slot over as the
    mark was asked for, and was slower at 1,000 lanes: bench/README.md.)"""
    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from acexport.ledger import Ledger

    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.1, records=5)
    jobs = job("hourly", "alpha", types=["page"], window="1h", catch_up="5h", lag="0s",
               coalesce_max=0)  # fmt: skip
    config = write_config(tmp_path, emu, jobs)
    mark_ready = Ledger.mark_ready
    marked: list[float] = []

    async def slow_mark(self: Ledger, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.3)
        await mark_ready(self, *args, **kwargs)
        marked.append(time.time())

    monkeypatch.setattr(Ledger, "mark_ready", slow_mark)
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()

    created = sorted(j["timeline"]["created"] for j in (await emu.jobs())["jobs"])
    assert len(created) == len(marked) == 5
    for mark, next_created in zip(marked, created[1:], strict=False):
        assert next_created >= mark, (marked, created)


async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Killed with SIGKILL several times, the daemon still exports every window exactly once."""
    emu = await emulator(
        tokens={"alpha": "alpha-token", "beta": "beta-token"},
        processing_s=0.25,
        records=3000,
        faults=FaultSettings(slow_bytes_per_s=4_000_000),
    )
    jobs = job("a", "alpha", catch_up="4d", lag="0s", modes=ALL_IN_WINDOWS) + job(
        "b", "beta", catch_up="4d", lag="0s", modes=ALL_IN_WINDOWS
    )
    config = write_config(tmp_path, emu, jobs)
    rng = random.Random(4)
    for _ in range(4):
        daemon = await DaemonProcess.start(config)
        await asyncio.sleep(rng.uniform(0.8, 2.0))
        assert daemon.process.returncode is None, "\n".join(daemon.raw[-20:])
        daemon.send(signal.SIGKILL)
        assert await daemon.wait() == -signal.SIGKILL
    final = await DaemonProcess.start(config, "--once")
    assert await final.wait(180) == 0, "\n".join(final.raw[-20:])

    exported = manifests(tmp_path / "exports")
    assert len(exported) == 2 * 6 * 4
    keys = Counter((m["workspace"], m["type"], m["fromDate"]) for m in exported)
    assert set(keys.values()) == {1}
    report = await emu.jobs()
    served = emulator_sha(report)
    for manifest in exported:
        assert manifest["payload_sha256"] == served[asked(manifest)]
    everything = [p.name for p in (tmp_path / "exports").rglob("*") if p.is_file()]
    assert not [name for name in everything if name.startswith(".") or name.endswith(".part")]
    assert len(everything) == 2 * 2 * 6 * 4  # data + manifest, nothing else
    assert list((tmp_path / "state" / "tmp").iterdir()) == []
    for workspace in ("alpha", "beta"):
        assert report["workspaces"][workspace]["max_unready"] == 1


async def test_sighup_adds_a_job_and_a_broken_config_keeps_the_old_one(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """SIGHUP starts an added job without a restart; a broken config is rejected, jobs go on."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.02, records=10)
    first_job = job(
        "pages", "alpha", types=["page"], catch_up="2d", lag="0s", schedule="every 300ms"
    )
    debug = 'log_level = "debug"'  # a look that queues nothing is logged at debug
    config = write_config(tmp_path, emu, first_job, extra=debug)
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 2)

    added = first_job + job(
        "segments", "alpha", types=["segment"], catch_up="3d", lag="0s",
        modes={"segment": "windows"},
    )  # fmt: skip
    write_config(tmp_path, emu, added, extra=debug)
    daemon.send(signal.SIGHUP)
    await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 5)
    assert daemon.events("config_reloaded")

    config.write_text(config.read_text().replace('window = "1d"', "") + "\n[[jobs]]\nname = 3\n")
    daemon.send(signal.SIGHUP)
    await daemon.wait_for(lambda: bool(daemon.events("config_reload_rejected")))
    rejected_at = len(daemon.lines)
    await daemon.wait_for(
        lambda: any(
            line.get("event") == "job_looked" and line.get("job") == "pages"
            for line in daemon.lines[rejected_at:]
        )
    )
    assert "jobs[2]" in daemon.events("config_reload_rejected")[0]["error"]
    daemon.send(signal.SIGTERM)
    assert await daemon.wait() == 0


async def test_a_reload_asked_for_as_a_run_once_ends_does_not_end_it_by_the_signal(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """SIGHUPs sent every 2 ms from its start to its exit: `run --once` does its work and
    exits 0, printing nothing but its log. asyncio gives SIGHUP its default action back
    as the loop closes, after closing the socket a signal wakes the loop through: one
    that came then, or while the interpreter exited, ended the process by the signal
    (-1; the soak's `had_exited_-1`), or printed "Exception ignored when trying to write
    to the signal wakeup fd" (8 runs of 8 of this test exited -1 before the fix)."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.2, records=5)
    # lag 0: two days are whole at any hour (with the default 2 h, one from 00:00 to 02:00)
    jobs = job("pages", "alpha", types=["page"], catch_up="2d", lag="0s")
    config = write_config(tmp_path, emu, jobs)
    daemon = await DaemonProcess.start(config, "--once")
    await daemon.wait_for(lambda: bool(daemon.events("daemon_started")))
    exited = asyncio.ensure_future(daemon.process.wait())
    sent = 0
    while not exited.done():
        # Not Popen.send_signal: it reaps an ended process first, and asyncio, finding
        # it reaped, reports 255.
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.process.pid, signal.SIGHUP)
            sent += 1
        await asyncio.wait([exited], timeout=0.002)
    not_logged = [line for line in daemon.raw if not line.startswith("{")]
    assert await daemon.wait() == 0, "\n".join(not_logged)
    assert not_logged == []
    assert daemon.events("run_once_finished")[0]["exported"] == 2
    assert sent > 50  # from its start to its exit, through the loop's close


async def test_sigterm_mid_download_leaves_no_partial_file_and_resumes(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """SIGTERM during a slow download: exit 0 in bounded time, nothing partial; restart resumes."""
    emu = await emulator(
        tokens={"alpha": "alpha-token"},
        processing_s=0.05,
        records=40000,  # about 1 MB of ZIP: two seconds at this rate
        faults=FaultSettings(slow_bytes_per_s=500_000),
    )
    jobs = job("p", "alpha", types=["page"], catch_up="1d", lag="0s")
    config = write_config(tmp_path, emu, jobs, extra='log_level = "debug"')  # export_ready
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: bool(daemon.events("export_ready")))
    await asyncio.sleep(0.5)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(10) == 0
    assert data_files(tmp_path / "exports") == []
    assert list((tmp_path / "state" / "tmp").iterdir()) == []

    await emu.control("faults", {"slow_bytes_per_s": None})
    again = await DaemonProcess.start(config, "--once")
    assert await again.wait(60) == 0
    assert again.events("exports_resumed")
    report = await emu.jobs()
    assert len(report["jobs"]) == 1  # resumed the same AC export, did not submit a new one
    assert manifests(tmp_path / "exports")[0]["payload_sha256"] == report["jobs"][0]["sha256"]


async def test_second_daemon_on_the_same_state_dir_exits_naming_the_holder(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """One daemon per state directory: a second `run` exits 1 with the holder's pid."""
    emu = await emulator(tokens={"alpha": "alpha-token"})
    config = write_config(
        tmp_path, emu, job("p", "alpha", types=["page"], catch_up="0s", coalesce_max=0)
    )
    first = await DaemonProcess.start(config)
    await first.wait_for(lambda: bool(first.events("daemon_started")))
    second = await DaemonProcess.start(config)
    assert await second.wait() == 1
    assert f"pid {first.process.pid}" in "\n".join(second.raw)
    first.send(signal.SIGTERM)
    assert await first.wait() == 0


async def test_backfill_runs_alone_or_hands_windows_to_the_daemon(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Without a daemon, backfill exports in the foreground; with one, the daemon does."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, processing_s=0.02, records=5)
    config = write_config(
        tmp_path, emu, job("p", "alpha", types=["page"], catch_up="0s", coalesce_max=0)
    )
    alone = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "backfill",
        "--config",
        str(config),
        "--job",
        "p",
        "--from",
        "2022-01-01",
        "--to",
        "2022-01-03",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await alone.wait() == 0
    assert len(manifests(tmp_path / "exports")) == 3

    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: bool(daemon.events("daemon_started")))
    queued = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "backfill",
        "--config",
        str(config),
        "--job",
        "p",
        "--from",
        "2022-02-01",
        "--to",
        "2022-02-02",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await queued.communicate()
    assert queued.returncode == 0
    assert b"running daemon" in out
    await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 5)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait() == 0


async def test_full_disk_under_the_ledger_is_a_clear_error(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """If the state database cannot be written (file-size limit), run exits 1 saying so."""
    import resource

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=2000)
    config = write_config(tmp_path, emu, job("p", "alpha", types=["page"], catch_up="1d", lag="0s"))

    def tiny_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "run",
        "--once",
        "--config",
        str(config),
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=tiny_files,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    text = stderr.decode()
    assert "Traceback" not in text
    assert "state.sqlite3 failed" in text
    assert "disk full?" in text
    assert data_files(tmp_path / "exports") == []


def windows_done_once(tmp_path: Path) -> int:
    """How many windows the ledger planned, each done with one file. Counted, not
    assumed: two runs of an hour-windowed job that straddle the hour's turn plan one
    window more (a run of make test at 03:00 failed so)."""
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = [state for (state,) in db.execute("SELECT state FROM exports")]
    assert set(states) == {"done"}, states
    assert len(manifests(tmp_path / "exports")) == len(states)
    return len(states)


async def exit_code_in_ac_time(daemon: DaemonProcess, clock: FakeClock, step_s: float) -> int:
    """``daemon``'s exit code, AC's FakeClock moved ``step_s`` every 50 ms meanwhile: AC's
    processing, in its own time, until the daemon is done."""
    async with asyncio.timeout(60):
        while daemon.process.returncode is None:
            clock.advance(step_s)
            await asyncio.sleep(0.05)
    return await daemon.wait()


def hourly_pages_ready_for_1s(tmp_path: Path, emu: RunningEmulator) -> Path:
    """Workspace alpha's hourly pages, one AC request each, logged at debug (the tests
    count export_submitted), with ready data held downloadable for 1 s."""
    jobs = job("p", "alpha", types=["page"], window="1h", catch_up="2h", lag="0s",
               coalesce_max=0)  # fmt: skip
    config = write_config(tmp_path, emu, jobs, extra='log_level = "debug"')
    config.write_text(config.read_text().replace("[http]\n", '[http]\ndownload_window = "1s"\n'))
    return config


async def test_ready_data_that_expired_while_down_is_resubmitted_holding_the_slot(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A download interrupted long enough ago to have expired goes back through the slot."""
    emu = await emulator(
        tokens={"alpha": "alpha-token"},
        processing_s=0.1,
        records=3000,
        expiry_s=1.0,
        faults=FaultSettings(slow_bytes_per_s=300_000),
    )
    config = hourly_pages_ready_for_1s(tmp_path, emu)
    daemon = await DaemonProcess.start(config)
    # The first export is downloading (ready), the second has been submitted.
    await daemon.wait_for(lambda: len(daemon.events("export_submitted")) == 2)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(10) == 0
    await asyncio.sleep(1.5)  # the first export's ready data expires at AC
    await emu.control("faults", {"slow_bytes_per_s": None})
    again = await DaemonProcess.start(config, "--once")
    assert await again.wait(60) == 0
    assert windows_done_once(tmp_path) >= 2
    report = await emu.jobs()
    assert report["workspaces"]["alpha"]["max_unready"] == 1


async def test_a_restart_gives_the_slot_to_the_export_at_ac_before_expired_ready_data(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Found by the soak (seed 41, max_unready 2): a daemon stopped while downloading
    one export (ready) with the next one submitted. By the next start the first's data
    had expired at AC while the second was still being prepared; resumed ready first,
    the expired one took the slot and was asked of AC again beside the second. The
    export AC holds its slot for goes first. AC's time is a FakeClock, moved here."""
    clock = FakeClock()
    emu = await emulator(
        tokens={"alpha": "alpha-token"},
        processing_s=4.0,
        expiry_s=2.0,
        records=3000,
        clock=clock,
        faults=FaultSettings(slow_bytes_per_s=20_000),
    )
    # Ready data is asked for through the slot at once: only AC's expiry decides.
    config = hourly_pages_ready_for_1s(tmp_path, emu)
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: bool(daemon.events("export_submitted")))
    clock.advance(4.5)  # the first is ready (at 4 s, until 6 s); its download is slow
    await daemon.wait_for(lambda: len(daemon.events("export_submitted")) == 2)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(10) == 0
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = sorted(state for (state,) in db.execute("SELECT state FROM exports"))
    assert states == ["ready", "submitted"], states
    clock.advance(2.0)  # the first's data expired; the second is ready at 8.5 s
    await emu.control("faults", {"slow_bytes_per_s": None})
    asked = (await emu.jobs())["workspaces"]["alpha"]["requests"]
    again = await DaemonProcess.start(config, "--once")
    # AC's time stands still until the restarted daemon's first request has reached AC.
    await emu.wait_for(lambda report: report["workspaces"]["alpha"]["requests"] > asked)
    assert await exit_code_in_ac_time(again, clock, step_s=0.5) == 0
    assert windows_done_once(tmp_path) >= 2
    report = await emu.jobs()
    assert report["workspaces"]["alpha"]["max_unready"] == 1


async def test_two_daemons_on_one_output_the_second_is_refused_naming_the_first(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 21 item 3: two state dirs, one output dir. The second daemon exits 78
    naming the first's state dir; once the first stops cleanly, it starts. A marker
    left by a daemon that is gone (stale) is taken over with a warning."""
    emu = await emulator(tokens={"alpha": "alpha-token"})
    jobs = job("p", "alpha", types=["page"], catch_up="0s")
    first_config = write_config(tmp_path, emu, jobs)
    other = tmp_path / "other"
    other.mkdir()
    second_config = write_config(other, emu, jobs)
    text = second_config.read_text().replace(str(other / "exports"), str(tmp_path / "exports"))
    second_config.write_text(text)

    first = await DaemonProcess.start(first_config)
    await first.wait_for(lambda: bool(first.events("daemon_started")))
    marker = tmp_path / "exports" / ".acexport-owner.json"
    assert json.loads(marker.read_text())["state_dir"] == str(tmp_path / "state")
    second = await DaemonProcess.start(second_config)
    assert await second.wait() == 78
    said = "\n".join(second.raw)
    assert "written by another acexport" in said
    assert str(tmp_path / "state") in said
    first.send(signal.SIGTERM)
    assert await first.wait() == 0
    assert not marker.exists()  # released at a clean stop

    owner = {"state_id": "gone", "state_dir": "/elsewhere", "host": "h", "pid": 1}
    marker.write_text(json.dumps({**owner, "seen_at": time.time() - 3600}))
    again = await DaemonProcess.start(second_config)
    await again.wait_for(lambda: bool(again.events("daemon_started")))
    (warning,) = again.events("output_owner_taken_over")
    assert "/elsewhere" in warning["previous"]
    assert json.loads(marker.read_text())["state_dir"] == str(other / "state")
    again.send(signal.SIGTERM)
    assert await again.wait() == 0


async def test_sigterm_ends_exports_waiting_between_polls_at_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 21 item 15: exports that only sleep until their next poll held the whole
    stop_grace (docker stop's 10 s, then SIGKILL); they are cancelled at once, their
    ledger rows kept for the next start to resume."""
    emu = await emulator(tokens={"alpha": "alpha-token", "beta": "beta-token"}, processing_s=60)
    jobs = "".join(job(f"p-{ws}", ws, types=["page"], catch_up="1d", lag="0s") for ws in emu.tokens)
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace('stop_grace = "2s"', 'stop_grace = "30s"'))
    daemon = await DaemonProcess.start(config)
    await emu.wait_for(lambda report: len(report["jobs"]) == 2)
    stopped_at = time.monotonic()
    daemon.send(signal.SIGTERM)
    assert await daemon.wait(40) == 0
    assert time.monotonic() - stopped_at < 5  # not the 30 s grace
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = [state for (state,) in db.execute("SELECT state FROM exports")]
    assert states == ["submitted", "submitted"]  # resumed, not resubmitted, next time


async def test_data_found_ready_after_a_restart_keeps_the_slot_until_downloaded(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Found by the soak (max_unready 2): an export stopped while AC worked on it was
    found ready by the next start and announced as fresh, giving its slot to the next
    export; its data, ready at AC for most of the window already, expired while the
    download was being retried, and the re-request submitted it again beside the next
    one. Data this process never saw AC working on now keeps the slot. AC's time is the
    emulator's FakeClock, moved by the test."""
    clock = FakeClock()
    emu = await emulator(
        tokens={"alpha": "alpha-token"}, processing_s=4.0, expiry_s=3.0, clock=clock
    )
    jobs = job("p", "alpha", types=["page"], window="1h", catch_up="2h", lag="0s",
               coalesce_max=0)  # fmt: skip
    config = write_config(tmp_path, emu, jobs, extra='log_level = "debug"')  # export_submitted
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: bool(daemon.events("export_submitted")))
    daemon.send(signal.SIGTERM)  # the first export waits between polls: stopped at once
    assert await daemon.wait(10) == 0
    await emu.control("faults", {"truncate_rate": 1.0})  # every download ends early
    clock.advance(4.5)  # ready at AC (after 4 s), expiring at 7 s
    again = await DaemonProcess.start(config, "--once")
    await again.wait_for(lambda: bool(again.events("export_retrying")))
    clock.advance(3.0)  # its data expires at AC while the download is retried
    await again.wait_for(lambda: bool(again.events("export_expired_resubmitted")))
    await emu.control("faults", {"truncate_rate": 0.0})
    assert await exit_code_in_ac_time(again, clock, step_s=1.0) == 0
    assert windows_done_once(tmp_path) >= 2
    assert (await emu.jobs())["workspaces"]["alpha"]["max_unready"] == 1


async def test_a_foreground_backfill_exports_its_own_windows_and_names_the_rest(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 item 4: a foreground backfill ran every export the state directory had
    queued (a 4-window backfill ran 4,365 leftovers; the bar said 12/4). It exports its
    own windows, ends with a summary line, and says what else is pending."""
    from acexport.ledger import LedgerState, read_rows
    from acexport.lock import take_lock
    from tests.daemon_helpers import run_cli

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    config = write_config(
        tmp_path, emu, job("p", "alpha", types=["page"], catch_up="0s", coalesce_max=0)
    )
    args = ("backfill", "--config", str(config), "--job", "p")
    with take_lock(tmp_path / "state"):  # a daemon holds it: February is only queued
        code, _, _ = await run_cli(*args, "--from", "2022-02-01", "--to", "2022-02-03")
    assert code == 0

    code, _, err = await run_cli(*args, "--from", "2022-01-01", "--to", "2022-01-02")

    assert code == 0, err
    asked = sorted(j["fromDate"][:10] for j in (await emu.jobs())["jobs"])
    assert asked == ["2022-01-01", "2022-01-02"]
    assert "2 exported, 0 failed in" in err
    assert "3 other exports are pending" in err
    rows = await read_rows(tmp_path / "state")
    assert sum(r.state is LedgerState.QUEUED for r in rows) == 3


async def test_info_lines_are_news_only(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 24 item 9: an export AC takes long over says so once at info (waiting,
    then ready); a quick one only its result; the lane says it caught up once."""
    from structlog.testing import capture_logs

    import acexport.export.run
    from acexport.config import load_settings
    from acexport.daemon import Daemon

    monkeypatch.setattr(acexport.export.run, "LONG_WAIT_S", 0.3)  # "over a minute", scaled
    emu = await emulator(tokens={"acme": "acme-token"}, records=2, processing_s=0.8)
    jobs = job("d", "acme", types=["page"], catch_up="2d", lag="0s", coalesce_max=0)
    config = write_config(tmp_path, emu, jobs)
    with capture_logs() as logs:
        async with Daemon(load_settings(config), config) as daemon:
            assert await daemon.run_once()
    info = [line["event"] for line in logs if line["log_level"] == "info"]
    assert info.count("export_done") == 2
    assert info.count("export_waiting_at_ac") == 2  # once per export, not per poll
    assert info.count("export_ready") == 2
    assert info.count("lane_caught_up") == 1
    assert "export_submitted" not in info


async def test_a_reload_that_fixes_the_token_retries_the_failed_windows_at_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 38 item 1 (reproduced): after writing a correct token and `kill -HUP`,
    /healthz stayed 503 and the failed windows waited for the next scheduled look (a
    nightly job's is tomorrow). A reload that changes a workspace's token retries its
    failed windows at once, and /healthz recovers with them."""
    import aiohttp

    from tests.ports import free_port

    emu = await emulator(tokens={"alpha": "alpha-token"})
    nightly = job("pages", "alpha", types=["page"], catch_up="2d", lag="0s",
                  schedule="30 2 * * *")  # fmt: skip
    config = write_config(tmp_path, emu, nightly, tokens={"alpha": "wrong-token"})
    port = free_port()
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    daemon = await DaemonProcess.start(config)
    await daemon.wait_for(lambda: bool(daemon.events("lane_token_rejected")))
    health = f"http://127.0.0.1:{port}/healthz"
    async with aiohttp.ClientSession() as http:
        # The line is logged as the failure is recorded, before /healthz hears of it.
        async with asyncio.timeout(10):
            while True:
                async with http.get(health) as answer:
                    if answer.status == 503:
                        break
                await asyncio.sleep(0.05)
        config.write_text(config.read_text().replace("wrong-token", "alpha-token"))
        daemon.send(signal.SIGHUP)
        await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 2, timeout=20)
        assert daemon.events("failed_windows_retried")
        async with http.get(health) as answer:
            assert answer.status == 200, await answer.text()
    daemon.send(signal.SIGTERM)
    assert await daemon.wait() == 0
