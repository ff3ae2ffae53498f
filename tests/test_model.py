"""A model-based test of how the daemon's powers compose (issue 34 item 17).

Hypothesis's stateful testing drives the real daemon (planner, ledger, lanes,
sink, the local output store) in this process against the emulator on 127.0.0.1,
with AC's time and the daemon's planning time on one fake clock. Rules: time
passes, jobs are looked at (`run --once`'s path), the daemon restarts, AC answers
with faults, with an absurd retention refusal, with empty exports, and the config
changes (restatement, coalescing, a second job on the workspace, keep_snapshots,
keep). A command hook is told of every committed file throughout.
After every step the invariants below hold; a failure prints the steps that led
to it and hypothesis's seed (rerun with ``--hypothesis-seed``). One hypothesis
cannot replay (FlakyFailure) prints no steps: the invariants that timing can fail
name the last steps themselves (``story``).

Examples: 50 in the quick suite, 100 longer ones more with ``-m slow`` (``make test``,
which must stay under six minutes on two slow cores), the same at every run;
``MODEL_EXAMPLES=N`` sets both counts (a deeper run before a release), and
``MODEL_RANDOM=1`` with it explores new ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from acexport.ac.serverclock import ServerClock
from acexport.config import load_settings
from acexport.daemon import Daemon
from acexport.emulator.app import _EMULATOR, EmulatorSettings, FaultSettings, make_app
from acexport.emulator.jobs import QueueSettings
from acexport.ledger import ACTIVE, LedgerState, read_rows
from acexport.ledger.connection import ledger_path
from tests.conftest import FakeClock

TOKEN = "model-token"
HOUR = 3600.0


def noted(method: Callable[..., None]) -> Callable[..., None]:
    """A rule that writes itself into the model's ``story`` before it runs."""

    @functools.wraps(method)
    def step(self: DaemonModel, *args: Any, **kwargs: Any) -> None:
        said = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        self.story.append(" ".join([method.__name__, *said]))
        method(self, *args, **kwargs)

    return step


class DaemonModel(RuleBasedStateMachine):
    """The real daemon, one workspace, against the emulator, on a fake clock."""

    def __init__(self) -> None:
        super().__init__()
        # AC's time is the daemon's here by construction (one fake clock), but an answer
        # read after a step moved the clock carries the Date of before it: the daemon
        # took AC's clock for an hour behind and planned an hour back, keeping a window
        # past its keep (a CI run's FlakyFailure, "clock_skew" in its log). Skew has
        # tests of its own (test_export.py); the model keeps one clock.
        self._one_clock = mock.patch.object(ServerClock, "observe", return_value=None)
        self._one_clock.start()
        self.loop = asyncio.new_event_loop()
        self.work = Path(self._run(asyncio.to_thread(_temp_dir)))
        # Hours after the hour: windows of whole hours end on the clock.
        start = (time.time() // HOUR) * HOUR + 0.5 * HOUR
        self.clock = FakeClock(start)
        self._rows: list[Any] | None = None
        self.runner: web.AppRunner | None = None
        self.base = self._run(self._start_emulator())
        self.options: dict[str, Any] = {
            "restate": None,
            "coalesce_max": "8h",
            "second_job": False,
            "keep_snapshots": 2,
            "max_payload": None,
            "keep": "27h",  # config_changes may drop it
            "compression": "gzip",
        }
        self.write_config()
        self.stack = contextlib.AsyncExitStack()
        self.daemon: Daemon | None = None
        self._run(self._open_daemon())
        self.absurd_refusals = False  # AC refused windows naming "0 months"
        self.looked = False
        self.crash_next_look = False
        self.downloads: dict[str, int] = {}  # emulator job id -> completed downloads
        self.failed_before = 0  # exports failed under the daemons closed so far
        self.failed_at_look = 0  # exports failed in all, at the end of the last look
        self.grown: list[tuple[str, int]] = []  # jobs downloaded more than once in a look
        self.looked_at = 0.0  # the clock at the last look
        self.kept_at_look: str | None = None  # the keep that look ran with
        self.resumed = False  # the last look began with windows at AC
        self.expired: set[tuple[str, str, datetime]] = set()  # (job, type, start) ever expired
        self.story: list[str] = []  # the steps so far, as @noted wrote them

    # -- plumbing ------------------------------------------------------------------
    def _run(self, coroutine: Any) -> Any:
        self._rows = None  # what runs may change the ledger
        return self.loop.run_until_complete(coroutine)

    async def _start_emulator(self) -> str:
        emulator = EmulatorSettings(
            tokens={"acme": TOKEN}, queue=QueueSettings(processing_s=0.0, records=4)
        )
        self.runner = web.AppRunner(make_app(emulator, self.clock), access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    @property
    def emu(self) -> Any:
        assert self.runner is not None
        return self.runner.app[_EMULATOR]

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now, UTC)

    def write_config(self) -> None:
        o = self.options
        jobs = _job("hourly", "page", o) + (
            _job("snap", "identity", {**o, "restate": None, "keep": None})
            if o["second_job"]
            else ""
        )
        (self.work / "acexport.toml").write_text(
            f'[daemon]\nstate_dir = "{self.work / "state"}"\n'
            f'output_dir = "{self.work / "out"}"\nlisten = ""\nstop_grace = "200ms"\n'
            '[http]\npoll_initial = "20ms"\npoll_max = "50ms"\nretry_initial = "10ms"\n'
            'retry_max = "20ms"\nmax_attempts = 4\n'
            + (f"max_payload = {o['max_payload']}\n" if o["max_payload"] else "")
            + f'[output]\ncompression = "{o["compression"]}"\n'
            + f'[workspaces.acme]\nbase_url = "{self.base}"\ntoken = "{TOKEN}"\n'
            'retention = 1200\nsnapshot_from = "2020-01-01"\n'
            + jobs
            # One JSON event a line, as a loader would read them, in one write each: a
            # delivery a stopped daemon left running may append beside the next one's.
            + '[[hooks]]\nname = "told"\n'
            f'command = ["sh", "-c", "printf \'%s\\\\n\' \\"$(cat)\\" >> $0", '
            f'"{self.work / "told.jsonl"}"]\n'
        )
        (self.work / "acexport.toml").chmod(0o600)

    async def _open_daemon(self) -> None:
        settings = load_settings(self.work / "acexport.toml")
        daemon = Daemon(settings, self.work / "acexport.toml", clock=self.now)
        self.daemon = await self.stack.enter_async_context(daemon)

    async def _close_daemon(self) -> None:
        await self.stack.aclose()
        self.stack = contextlib.AsyncExitStack()
        if self.daemon is not None:
            self.failed_before += self.daemon.tally.failed
        self.daemon = None

    def failed(self) -> int:
        """Exports failed since the model began, under every daemon it opened."""
        return self.failed_before + (self.daemon.tally.failed if self.daemon else 0)

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self._close_daemon())
        if self.runner is not None:
            self._run(self.runner.cleanup())
        self.loop.close()
        self._one_clock.stop()
        # One directory per example: CI runs hundreds, and /tmp outlives the run.
        shutil.rmtree(self.work, ignore_errors=True)

    # -- rules ---------------------------------------------------------------------
    @rule(hours=st.sampled_from([1, 3, 7, 26]))
    @noted
    def time_passes(self, hours: int) -> None:
        self.clock.advance(hours * HOUR)

    @rule(hours=st.sampled_from([1, 7, 26]))
    @noted
    def a_later_look(self, hours: int) -> None:
        """Time passes, then a look: the daemon's life, drawn as one step so an example
        of a dozen steps reaches windows old enough to restate and to expire."""
        self.time_passes(hours)
        self.look()

    @rule()
    @noted
    def look(self) -> None:
        assert self.daemon is not None
        # Windows at AC when the look starts are finished first, and expired next look:
        # those the ledger says are, and those a lane took before the clock moved. The
        # lanes run whenever the loop does (an invariant's read is enough): a window
        # claimed while the rows were read stayed "queued" in them, and the keep
        # invariant blamed its export (found by MODEL_RANDOM: done after a look, past keep).
        taken = any(lane.in_flight for lane in self.daemon.lanes.values())
        self._rows = None
        self.resumed = taken or any(r.state in (LedgerState.SUBMITTED, LedgerState.READY)
                                    for r in self.rows())  # fmt: skip
        active = [(r.label(), r.state.value) for r in self.rows() if r.state in ACTIVE]
        self.story.append(f"  active at its start: {active}")
        with contextlib.ExitStack() as patches:
            if self.crash_next_look:
                patches.enter_context(mock.patch("acexport.lane.run_export", _crash))
            self._run(asyncio.wait_for(self.daemon.run_once(), 60))
        self.crash_next_look = False
        self.looked = True
        self.looked_at = self.clock.now
        self.kept_at_look = self.options["keep"]
        jobs = self.emu.queue.describe()["jobs"]
        # A failed export may ask AC again for the same range (a resumed window fails,
        # the look re-plans it; a failed window is tried again after a restart): counted
        # only where all worked since the last look. Downloads between two looks (a look
        # cut short, a restart's resumed rows) count in the next one's (found by
        # MODEL_RANDOM: a payload past max_payload, downloaded in the look, in the look
        # cut short after it, then in the next look once max_payload was lifted).
        quiet = self.emu.faults == FaultSettings() and self.failed() == self.failed_at_look
        self.failed_at_look = self.failed()
        self.grown = [
            (job["id"], job["downloads_completed"])
            for job in jobs
            if quiet and job["downloads_completed"] - self.downloads.get(job["id"], 0) > 1
        ]
        self.downloads = {job["id"]: job["downloads_completed"] for job in jobs}

    @rule()
    @noted
    def a_look_cut_short(self) -> None:
        """The daemon stops while it downloads (AC streams slowly, the stop's grace runs
        out): what it had submitted or had ready stays in the ledger, and the next
        start resumes it, as after a kill."""
        assert self.daemon is not None
        faults = self.emu.faults
        self.emu.faults = FaultSettings(slow_bytes_per_s=100)
        self._run(self._cut_short(self.daemon))
        self.emu.faults = faults
        self._run(self._open_daemon())
        self.looked = False  # in flight until the next look, as after a kill

    async def _cut_short(self, daemon: Daemon) -> None:
        looking = asyncio.ensure_future(daemon.run_once())
        for _ in range(100):  # until a download is under way (or all is done)
            await asyncio.sleep(0.01)
            rows = await read_rows(self.work / "state")
            if looking.done() or any(r.state is LedgerState.READY for r in rows):
                break
        daemon.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(looking, 10)
        await self._close_daemon()

    @rule()
    @noted
    def a_bug_bites_the_next_look(self) -> None:
        """An exception nobody foresaw, in every export of the next look."""
        self.crash_next_look = True

    @rule()
    @noted
    def restart(self) -> None:
        self._run(self._close_daemon())
        self._run(self._open_daemon())

    @rule(
        faults=st.sampled_from(
            [
                FaultSettings(),
                FaultSettings(fail_rate=0.3),
                FaultSettings(throttle_rate=0.3, retry_after_s=0),
                FaultSettings(error_rate=0.3),
                FaultSettings(cut_rate=0.3),
                FaultSettings(truncate_rate=0.3),
            ]
        )
    )
    @noted
    def ac_answers(self, faults: FaultSettings) -> None:
        self.emu.faults = faults

    @rule(absurd=st.booleans())
    @noted
    def retention_refusals(self, absurd: bool) -> None:
        """AC refuses every range "for 0 months" (a controller's nonsense), or not."""
        settings = self.emu.settings
        self.emu.settings = dataclasses.replace(
            settings, retention_months=0 if absurd else None, retention_says=0 if absurd else None
        )
        self.absurd_refusals = self.absurd_refusals or absurd

    @rule(records=st.sampled_from([0, 4, 9]))
    @noted
    def ac_serves(self, records: int) -> None:
        """How many records AC's new exports hold (0: an empty export)."""
        queue = self.emu.queue
        queue.settings = dataclasses.replace(queue.settings, records=records)

    @rule(
        option=st.sampled_from(
            [
                "restate",
                "coalesce_max",
                "second_job",
                "keep_snapshots",
                "max_payload",
                "keep",
                "compression",
            ]
        ),
        data=st.data(),
    )
    @noted
    def config_changes(self, option: str, data: st.DataObject) -> None:
        choices = {
            "restate": [None, "25h"],
            "coalesce_max": ["0s", "3h", "8h"],
            "second_job": [False, True],
            "keep_snapshots": [1, 2],
            "max_payload": [None, 500],  # 500 bytes: one window's payload, not six
            "keep": [None, "27h"],  # longer than restate (25h) and catch_up (6h), plus a window
            "compression": ["gzip", "zstd", "none"],  # done windows keep their files' names
        }[option]
        self.options[option] = data.draw(st.sampled_from(choices))
        self.story.append(f"  {option} = {self.options[option]!r}")
        self.write_config()
        self.restart()  # a reload's effect, as the next start reads it

    # -- invariants ----------------------------------------------------------------
    def rows(self) -> list[Any]:
        """The ledger's rows, read once between two steps (the invariants' reads were a
        third of the model's time): nothing changes it while the loop does not run."""
        if self._rows is None:
            rows = list(self._run(read_rows(self.work / "state")))
            self._rows = rows
        return self._rows

    @invariant()
    def nothing_is_left_in_flight_after_a_look(self) -> None:
        """run --once drains every lane: no row stays queued, submitted or ready (the
        rest of a coalesced request stayed 'ready' for ever when its first crashed)."""
        if self.looked:
            stuck = [(r.type, r.label(), r.state) for r in self.rows() if r.state in ACTIVE]
            assert not stuck, stuck

    @invariant()
    def every_done_file_matches_its_manifest(self) -> None:
        """Every done window's file (and each job's newest snapshot: older ones are
        pruned, their rows kept) matches its manifest, of the row's revision or later."""
        rows = self.rows()
        newest = {}
        for row in rows:
            if row.mode.value == "snapshot" and row.state is LedgerState.DONE:
                key = (row.job, row.type)
                if key not in newest or row.end > newest[key].end:
                    newest[key] = row
        for row in rows:
            if row.state is not LedgerState.DONE or row.destination is None:
                continue
            if row.mode.value == "snapshot" and newest[(row.job, row.type)] is not row:
                continue
            data = Path(row.destination)
            manifest = json.loads(Path(f"{data}.manifest.json").read_text())
            assert manifest["file_bytes"] == data.stat().st_size, row
            assert manifest["file_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
            assert manifest["revision"] >= row.revision, (row, manifest["revision"])
            if row.file_sha256 is not None:
                assert row.file_sha256 == manifest["file_sha256"], row

    @invariant()
    def nothing_is_final_that_ac_did_not_say(self) -> None:
        """Only AC's true answer makes a window final: a "0 months" refusal never does."""
        beyond = [r for r in self.rows() if r.state is LedgerState.BEYOND_RETENTION]
        assert not beyond, [(r.label(), r.reason) for r in beyond]

    @invariant()
    def one_export_at_a_time_per_lane(self) -> None:
        report = self.emu.queue.describe()
        assert report["workspaces"]["acme"]["max_unready"] <= 1

    @invariant()
    def a_job_keeps_its_newest_snapshot(self) -> None:
        """One job's pruning never deletes another job's (or its own newest) snapshot."""
        rows = self.rows()
        for job in {r.job for r in rows}:
            done = [r for r in rows if r.job == job and r.state is LedgerState.DONE
                    and r.mode.value == "snapshot"]  # fmt: skip
            if done:
                newest = max(done, key=lambda r: r.end)
                assert newest.destination is not None, newest
                assert Path(newest.destination).exists(), newest

    @invariant()
    def one_ac_export_is_downloaded_once_a_look(self) -> None:
        """With AC answering cleanly, no AC export is downloaded twice in one look (after
        a restart, each resumed row of a coalesced request downloaded it again)."""
        assert not self.grown, (self.grown, self.story[-16:])

    @precondition(lambda self: self.looked)
    @invariant()
    def no_window_is_stored_twice(self) -> None:
        """Each window's file exists once: no two rows name one file, no orphan data."""
        rows = [r for r in self.rows() if r.state is LedgerState.DONE and r.destination]
        destinations = [r.destination for r in rows]
        assert len(destinations) == len(set(destinations))
        # A file no row names is a window stored twice (a compression change exported
        # done windows again beside their files, which nothing deleted after).
        named = {r.destination for r in self.rows()}
        files = {str(p) for p in (self.work / "out").rglob("*_*") if p.is_file()}
        orphans = {f for f in files if not f.endswith(".manifest.json")} - named
        assert not orphans, orphans

    @invariant()
    def keep_leaves_no_old_window_and_expired_is_final(self) -> None:
        """After a look, no window that ended longer than keep ago is done; an expired
        window's file and manifest are gone, and it is never exported again."""
        rows = self.rows()
        for row in rows:
            key = (row.job, row.type, row.start)
            if row.state is LedgerState.EXPIRED:
                self.expired.add(key)
                if row.destination is not None:
                    assert not Path(row.destination).exists(), row
                    assert not Path(f"{row.destination}.manifest.json").exists(), row
            else:
                assert key not in self.expired, (row.label(), row.state)
        # The keep the last look ran with: one set since (a config change) acts at the
        # next look (found by MODEL_RANDOM: keep set again after looks without it).
        keep = self.kept_at_look
        if self.looked and keep and not self.resumed:
            edge = self.looked_at - int(keep[:-1]) * HOUR
            # Each with what tells how it got there, for a failure hypothesis cannot replay.
            old = [(r.label(), r.revision, r.reason, r.attempts) for r in rows
                   if r.job == "hourly" and r.state is LedgerState.DONE
                   and r.end.timestamp() < edge]  # fmt: skip
            assert not old, (old, self.story[-16:])

    @invariant()
    def every_committed_file_is_told_under_one_id(self) -> None:
        """Each done row's revision has its event committed in the ledger with it (so a
        kill before delivery loses nothing), and each event id delivered names one file."""
        if not self.looked:
            return
        with contextlib.closing(sqlite3.connect(ledger_path(self.work / "state"))) as db:
            committed = set(
                db.execute("SELECT export_id, revision FROM hook_events WHERE body IS NOT NULL")
            )
        untold = [
            (r.label(), r.type, r.revision)
            for r in self.rows()
            if r.state is LedgerState.DONE
            and r.destination is not None
            and (r.id, r.revision) not in committed
        ]
        assert not untold, untold
        told = self.work / "told.jsonl"
        files: dict[str, tuple[object, ...]] = {}
        for line in told.read_text().splitlines() if told.exists() else []:
            if line.strip():
                event = json.loads(line)
                what = (event["job"], event["type"], event["fromDate"], event["revision"],
                        event["file_sha256"])  # fmt: skip
                assert files.setdefault(event["id"], what) == what, (event, files[event["id"]])


async def _crash(*_: object, **__: object) -> None:
    raise ZeroDivisionError("a bug nobody foresaw")


def _job(name: str, type_: str, options: dict[str, Any]) -> str:
    lines = [
        "[[jobs]]",
        f'name = "{name}"',
        'workspace = "acme"',
        f'types = ["{type_}"]',
        'window = "1h"',
        'lag = "0s"',
        'catch_up = "6h"',
        f'coalesce_max = "{options["coalesce_max"]}"',
        f"keep_snapshots = {options['keep_snapshots']}",
    ]
    if options.get("keep"):
        lines.append(f'keep = "{options["keep"]}"')
    if options.get("restate"):
        lines.append(f'restate = "{options["restate"]}"')
    return "\n" + "\n".join(lines) + "\n"


def _temp_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="acexport-model-")


def _examples(default: int) -> int:
    return int(os.environ.get("MODEL_EXAMPLES", default))


# The same examples at every run (CI must not fail on a draw nobody can repeat): set
# MODEL_RANDOM=1, with MODEL_EXAMPLES, to explore new ones; a failure prints its steps.
_QUICK = settings(
    max_examples=_examples(50),
    stateful_step_count=12,
    deadline=None,
    derandomize=not os.environ.get("MODEL_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


TestDaemonModelQuick = DaemonModel.TestCase
TestDaemonModelQuick.settings = _QUICK


@pytest.mark.slow
class TestDaemonModelLong(DaemonModel.TestCase):  # type: ignore[misc,valid-type]
    settings = settings(_QUICK, max_examples=_examples(100), stateful_step_count=20)
