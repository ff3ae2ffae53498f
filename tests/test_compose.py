"""Hardening round 3 (issue 34): the powers of the last round composed: retention
refusals, restatement, coalescing, snapshots and the store as truth, each case a
reproduced defect that fails before its fix. Against the emulator on 127.0.0.1,
real files, the real ledger."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from acexport.errors import ConfigError
from acexport.ledger import LedgerState, read_rows
from acexport.output import owner
from acexport.output.local import LocalStore
from acexport.output.owner import OWNER_KEY, Owner, claim_output, refresh_claim
from acexport.protocol import ExportMode
from acexport.retention import LearnedRetention, effective_months, refusal_fits
from acexport.windows import ExportWindow
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import job, manifests, run_cli, write_config

pytestmark = pytest.mark.slow


# -- item 1: a retention refusal teaches only what can be true ----------------------


def test_a_refusal_fits_only_a_plausible_retention_the_window_lies_before() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    old = now - timedelta(days=420)
    young = now - timedelta(days=4)
    assert refusal_fits(13, old, now)
    assert not refusal_fits(0, old, now)  # "0 months": no workspace keeps nothing
    assert not refusal_fits(500, old, now)
    assert not refusal_fits(13, young, now)  # a 4-day-old window is inside 13 months
    assert refusal_fits(1, now - timedelta(days=40), now)


def test_a_learned_retention_holds_only_under_the_configured_one_it_was_learned_with() -> None:
    assert effective_months(13, LearnedRetention(6, 13)) == 6
    assert effective_months(12, LearnedRetention(6, 13)) == 12  # the operator changed it
    assert effective_months(13, LearnedRetention(0, 13)) == 13
    assert effective_months(13, LearnedRetention(6, None)) == 6  # stored by an older version
    assert LearnedRetention.from_text("6") == LearnedRetention(6, None)
    assert LearnedRetention.from_text("{not json") is None
    learned = LearnedRetention(6, 13, "AC refused page 2025-01-01", "2026-12-06T12:00:00+00:00")
    assert LearnedRetention.from_text(learned.to_text()) == learned


@pytest.mark.parametrize(("says", "answered_as"), [(0, 400), (0, 500), (13, 400)])
async def test_a_refusal_that_cannot_be_true_fails_the_window_visibly_and_teaches_nothing(
    emulator: EmulatorFactory, tmp_path: Path, says: int, answered_as: int
) -> None:
    """Reproduced: AC refusing every window "for 0 months" (or a 2-day-old one "for 13
    months") made every window of the workspace beyond_retention, final, while `run
    --once` and `status` exited 0. Now the windows fail as rejections (exit 1, status
    exit 1), nothing is learned, and the next run asks again."""
    emu = await emulator(
        tokens={"acme": "acme-token"},
        retention_months=0,  # every range is refused...
        retention_says=says,  # ... naming this retention
        retention_as=answered_as,
        records=2,
    )
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="2d", lag="0s"))

    code, _, err = await run_cli("run", "--once", "--config", str(config))

    assert code == 1, err
    rows = await read_rows(tmp_path / "state")
    assert rows
    assert all(r.state is LedgerState.FAILED for r in rows), [r.state for r in rows]
    assert "retention_refusal_ignored" in err
    code, out, _ = await run_cli("status", "--config", str(config))
    assert code == 1
    assert "retention: 1200 months (configured)" in out.decode()
    code, _, _ = await run_cli("run", "--once", "--config", str(config))
    assert code == 1
    again = await read_rows(tmp_path / "state")
    assert all(r.failures == 2 for r in again)  # asked again: nothing was made final


async def test_a_true_refusal_is_learned_and_shown_with_its_reason(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emu = await emulator(tokens={"acme": "acme-token"}, retention_months=2, records=2)
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s"))
    start = (datetime.now(UTC) - timedelta(days=75)).date().isoformat()
    end = (datetime.now(UTC) - timedelta(days=73)).date().isoformat()

    code, _, err = await run_cli(
        "backfill", "--config", str(config), "--job", "p", "--from", start, "--to", end
    )

    assert code == 0, err
    code, out, _ = await run_cli("status", "--config", str(config))
    assert "retention: 2 months (learned from AC" in out.decode()
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert "retention: 2 months (learned from AC" in out.decode()
    config.write_text(config.read_text().replace("retention = 1200", "retention = 14"))
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert "retention: 14 months (AC named 2 months while 1200 were configured" in out.decode()


# -- item 3: a failed coalesced request is never formed identically again -----------


def _requests(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(j["fromDate"], j["toDate"]) for j in report["jobs"]]


async def test_a_failed_coalesced_request_is_asked_for_in_halves_until_windows_succeed(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Reproduced: a coalesced request failing (here PayloadTooLarge: max_payload fits
    one window, not eight) was formed identically at every look, forever, and no
    window ever landed. Now each failure halves the span (8, 4, 2, 1): every window
    lands, no AC request is asked for twice in a row, and status says why."""
    emu = await emulator(tokens={"acme": "acme-token"}, records_per_day=400, format="ndjson")
    jobs = job("p", "acme", types=["page"], catch_up="0s", coalesce_max="8d")
    probe = write_config(tmp_path, emu, jobs, name="probe.toml")
    text = probe.read_text().replace(str(tmp_path / "state"), str(tmp_path / "s0"))
    probe.write_text(text.replace(str(tmp_path / "exports"), str(tmp_path / "e0")))
    args = ("--job", "p", "--from", "2022-01-01", "--to", "2022-01-08")
    code, _, err = await run_cli("backfill", "--config", str(probe), *args)
    assert code == 0, err
    (whole,) = (await emu.jobs())["jobs"]
    limit = whole["bytes"] // 6  # one day's file fits; two do not
    config = write_config(tmp_path, emu, jobs)
    env = {"ACEXPORT_HTTP__MAX_PAYLOAD": str(limit)}

    codes, errs = [], []
    for _ in range(5):
        code, _, err = await run_cli("backfill", "--config", str(config), *args, env=env)
        codes.append(code)
        errs.append(err)
        if code == 0:
            break

    assert codes == [1, 1, 1, 0], err
    rows = await read_rows(tmp_path / "state")
    assert len(rows) == 8
    assert all(r.state is LedgerState.DONE for r in rows)
    asked = _requests(await emu.jobs())[1:]  # after the probe's
    assert all(a != b for a, b in itertools.pairwise(asked)), asked
    assert '"windows": 8, "next_at_most": 4, "event": "coalesced_request_split"' in errs[0]
    code, _, _ = await run_cli("status", "--config", str(config))
    assert code == 0  # nothing failed is left


async def test_spans_are_sized_against_max_payload_at_the_sizes_seen(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Item 3: once the job's windows' payload sizes are known, a coalesced request holds
    no more windows than fit half of http.max_payload, so it does not fail first: here
    four windows of a day each fit, eight days ask AC four times, nothing fails."""
    emu = await emulator(tokens={"acme": "acme-token"}, records_per_day=400, format="ndjson")
    config = write_config(
        tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s", coalesce_max="8d")
    )
    first = ("backfill", "--config", str(config), "--job", "p")
    code, _, err = await run_cli(*first, "--from", "2022-01-01", "--to", "2022-01-08")
    assert code == 0, err
    (whole,) = (await emu.jobs())["jobs"]
    per_day = whole["bytes"] / 8
    env = {"ACEXPORT_HTTP__MAX_PAYLOAD": str(int(per_day * 4.5))}  # half: two days fit

    code, _, err = await run_cli(*first, "--from", "2022-01-09", "--to", "2022-01-16", env=env)

    assert code == 0, err
    asked = _requests(await emu.jobs())[1:]
    assert len(asked) == 4, asked
    assert '"windows": 2, "payload_per_window"' in err
    rows = await read_rows(tmp_path / "state")
    assert all(r.state is LedgerState.DONE and r.failures == 0 for r in rows)


async def test_an_unexpected_error_in_a_coalesced_request_fails_every_window_of_it(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8 (reproduced): a crash inside a coalesced request failed only its first
    window; the others stayed 'ready' (in flight for ever in status) and were resumed
    one by one. Now the whole request's windows fail, visibly."""
    import acexport.lane
    from acexport.config import load_settings
    from acexport.daemon import Daemon

    emu = await emulator(tokens={"acme": "acme-token"}, records=3)
    config = write_config(
        tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s", coalesce_max="8d")
    )

    async def crash(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug nobody foresaw")

    monkeypatch.setattr(acexport.lane, "run_export", crash)
    settings = load_settings(config)
    windows = [
        ExportWindow(datetime(2022, 1, d, tzinfo=UTC), datetime(2022, 1, d + 1, tzinfo=UTC), UTC)
        for d in range(1, 5)
    ]
    async with Daemon(settings, config) as daemon:
        look = await daemon.plan(settings.jobs[0], windows)
        assert len(look.records) == 4
        assert not await daemon.drain()

    rows = await read_rows(tmp_path / "state")
    assert [r.state for r in rows] == [LedgerState.FAILED] * 4
    assert all("ZeroDivisionError" in (r.reason or "") for r in rows)


# -- item 4: an empty restatement keeps the revision it would replace ---------------


async def test_a_restatement_that_shrinks_drastically_keeps_the_previous_revision(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Reproduced: a restatement answered with a valid but empty export replaced a
    50-record window with a 0-record file, exit 0, no warning. Now the revision-1 file
    stays (byte for byte, its manifest too), the row is done at revision 1 and says
    why, `status` shows it, and it is not restated again."""
    full = await emulator(tokens={"acme": "acme-token"}, records=50)
    empty = await emulator(tokens={"acme": "acme-token"}, records=0)
    jobs = job("p", "acme", types=["page"], catch_up="4d", lag="0s", restate="2d",
               coalesce_max="0s")  # fmt: skip
    config = write_config(tmp_path, full, jobs)
    code, _, err = await run_cli("run", "--once", "--config", str(config))
    assert code == 0, err
    rows = await read_rows(tmp_path / "state")
    now = datetime.now(UTC)
    old = min((r for r in rows if r.end <= now - timedelta(days=2)), key=lambda r: r.end)
    assert old.records == 50
    # As if it had been exported as soon as it ended: now old enough to be restated.
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        db.execute(
            "UPDATE exports SET finished_at = ? WHERE id = ?", (old.end.timestamp() + 60, old.id)
        )
    before = {p: p.read_bytes() for p in (tmp_path / "exports").rglob("*") if p.is_file()}
    config.write_text(config.read_text().replace(full.url, empty.url))

    code, _, err = await run_cli("run", "--once", "--config", str(config))

    assert code == 0, err
    assert "restatement_kept_previous" in err
    after = {p: p.read_bytes() for p in (tmp_path / "exports").rglob("*") if p.is_file()}
    assert after == before
    assert not list((tmp_path / "state" / "tmp").rglob("*.part*"))  # its temp files gone
    kept = next(r for r in await read_rows(tmp_path / "state") if r.id == old.id)
    assert (kept.state, kept.revision, kept.records) == (LedgerState.DONE, 1, 50)
    assert kept.file_sha256 == old.file_sha256
    assert "AC served 0 records where it has 50" in (kept.reason or "")
    code, out, _ = await run_cli("status", "--config", str(config))
    assert "KEPT     page" in out.decode()
    asked = len((await empty.jobs())["jobs"])
    code, _, _ = await run_cli("run", "--once", "--config", str(config))
    assert len((await empty.jobs())["jobs"]) == asked  # not restated again


# -- item 7: one AC request, one download, whatever restarts happen -----------------


async def test_a_ready_coalesced_request_is_downloaded_once_after_a_restart(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Reproduced: after a restart, the rows of a ready coalesced request were resumed
    by up to three window tasks at once, each downloading, splitting and committing
    the whole request (`run --once` counted 15 exports for 5 windows). Now the lane runs
    one task per AC request."""
    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from acexport.ledger import Ledger, ledger_path

    emu = await emulator(tokens={"acme": "acme-token"}, records=5)
    config = write_config(
        tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s", coalesce_max="8d")
    )
    settings = load_settings(config)
    windows = [
        ExportWindow(datetime(2022, 1, d, tzinfo=UTC), datetime(2022, 1, d + 1, tzinfo=UTC), UTC)
        for d in range(1, 6)
    ]
    # AC made the request's export (as asked before the kill): its createdDate.
    query = "fromDate=2022-01-01T00:00:00.000Z&toDate=2022-01-06T00:00:00.000Z"
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bearer acme-token"}) as http,
        http.get(f"{emu.url}/api/reports/export/page?{query}") as asked,
    ):
        created = (await asked.json())["createdDate"]
    # The ledger as a killed process left it: one request of five windows, data ready.
    ledger = await Ledger.open(ledger_path(tmp_path / "state"))
    try:
        planned = await ledger.plan("p", "acme", ["page"], windows)
        leader = await ledger.claim(planned[0].id, 0.0)
        assert leader is not None
        group = await ledger.claim_together(
            leader, await ledger.coalescable(leader, timedelta(days=8), 5)
        )
        assert len(group) == 5
        for row in group:
            await ledger.mark_ready(row.id, created)
    finally:
        await ledger.close()

    async with Daemon(settings, config) as daemon:
        assert await daemon.drain()
        succeeded = daemon.tally.succeeded

    assert succeeded == 5
    (asked,) = (await emu.jobs())["jobs"]
    assert asked["downloads_started"] == 1
    rows = await read_rows(tmp_path / "state")
    assert [r.state for r in rows] == [LedgerState.DONE] * 5
    # Issue 38 item 12: AC's createdDate survives the restart into every manifest.
    written = manifests(tmp_path / "exports")
    assert [m["createdDate"] for m in written] == [created] * 5


# -- items 9 and 16: the owner marker tells processes apart, by change not clocks ---


@pytest.fixture
async def local_store(tmp_path: Path) -> AsyncIterator[LocalStore]:
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    store = LocalStore(tmp_path / "out", tmp_path / "tmp")
    async with AsyncExitStack() as stack:
        await store.start(stack)
        yield store


async def test_a_copy_of_the_state_directory_is_another_owner(local_store: LocalStore) -> None:
    """Reproduced: a daemon on a copy of the state directory (the same state id) ran
    beside the original, every window exported twice. A copy elsewhere is refused at
    start; a second process of the same state dir and path (a copy on another host)
    is noticed by the first at its next refresh, which stops it."""
    original = Owner.me("id-1", "/var/lib/acexport", time.time())
    await claim_output(local_store, original)
    copy = Owner.me("id-1", "/srv/copy-of-acexport", time.time())
    with pytest.raises(ConfigError, match="a copy of this state directory"):
        await claim_output(local_store, copy)

    elsewhere = Owner.me("id-1", "/var/lib/acexport", time.time())  # another host
    await claim_output(local_store, elsewhere)  # indistinguishable from a restart here
    with pytest.raises(ConfigError, match="took over"):
        await refresh_claim(local_store, original)
    await refresh_claim(local_store, elsewhere)  # the one that stays keeps refreshing


async def test_the_owner_marker_is_printed_safely_and_judged_by_change(
    local_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproduced: the marker's text reached the terminal raw (ESC, BEL in the exit-78
    message), and a marker stamped in the future (a dead host whose clock ran ahead)
    said "last seen 0s ago" and locked every other daemon out."""
    monkeypatch.setattr(owner, "CHANGE_WATCH_S", 0.4)
    monkeypatch.setattr(owner, "CHANGE_POLL_S", 0.05)
    hostile = Owner("id-2", "/x\x1b[2J\x07", "h\x1b]0;pwned\x07", 7, time.time(), "i")
    await local_store.write_small(OWNER_KEY, hostile.to_json())
    me = Owner.me("id-3", "/var/lib/acexport", time.time())
    with pytest.raises(ConfigError) as refused:
        await claim_output(local_store, me)
    assert "\x1b" not in str(refused.value)
    assert "\x07" not in str(refused.value)

    ahead = dataclasses.replace(hostile, state_dir="/dead", seen_at=time.time() + 86400)
    await local_store.write_small(OWNER_KEY, ahead.to_json())
    await claim_output(local_store, me)  # unchanged while watched: gone, taken over
    assert b'"state_id": "id-3"' in (await local_store.read_small(OWNER_KEY) or b"")

    await local_store.write_small(OWNER_KEY, ahead.to_json())

    async def refreshing() -> None:  # a live daemon whose clock runs a day ahead
        for n in range(20):
            await asyncio.sleep(0.05)
            alive = dataclasses.replace(ahead, seen_at=ahead.seen_at + n)
            await local_store.write_small(OWNER_KEY, alive.to_json())

    task = asyncio.create_task(refreshing())
    with pytest.raises(ConfigError, match="stamped in the future and changed"):
        await claim_output(local_store, dataclasses.replace(me, seen_at=time.time()))
    await task


# -- item 10: a snapshot belongs to its job -----------------------------------------


def test_two_jobs_snapshotting_one_type_under_one_prefix_are_warned_of(tmp_path: Path) -> None:
    """Reproduced: check-config said nothing of two jobs snapshotting one type of one
    workspace under one prefix (the default snapshot_path has no {job}). Each job now
    prunes only its own (next test); check-config says how to keep them apart."""
    from acexport.config import load_settings

    jobs = "".join(
        f'\n[[jobs]]\nname = "{name}"\nworkspace = "acme"\ntypes = ["individual"]\n'
        for name in ("nightly", "hourly")
    )
    base = f'[workspaces.acme]\ntoken = "t"\n[daemon]\nstate_dir = "{tmp_path}"\n'
    path = tmp_path / "acexport.toml"
    path.write_text(base + jobs)
    (shared,) = load_settings(path).shared_snapshot_prefixes()
    assert "'nightly' and 'hourly' both take snapshots of individual" in shared
    assert "add {job} to output.snapshot_path" in shared
    snapshot_path = "workspace={workspace}/type={type}/job={job}/snapshot={to:%Y%m%dT%H%M%S}/x"
    path.write_text(base + f'[output]\nsnapshot_path = "{snapshot_path}"\n' + jobs)
    assert load_settings(path).shared_snapshot_prefixes() == []


async def test_a_jobs_snapshots_are_only_its_own(local_store: LocalStore) -> None:
    """Under one prefix, only the snapshots whose manifest names the job are the job's:
    another job's are never adopted or pruned by it."""
    from acexport.config import OutputSettings
    from acexport.output.layout import OutputLayout
    from acexport.output.manifest import manifest_key
    from acexport.output.snapshots import stored_snapshots

    layout = OutputLayout.from_settings(OutputSettings())
    for job_name, day in (("nightly", 1), ("hourly", 2)):
        window = ExportWindow(
            datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 6, day, tzinfo=UTC), UTC
        )
        key = layout.key_for("acme", "individual", job_name, window, mode=ExportMode.SNAPSHOT)
        await local_store.write_small(key, b'{"id": "1"}\n')
        manifest = {
            "manifest_version": 2, "job": job_name, "workspace": "acme", "type": "individual",
            "mode": "snapshot", "fromDate": window.from_date, "toDate": window.to_date,
            "file": key.name, "file_bytes": 12, "records": 1,
        }  # fmt: skip
        await local_store.write_small(manifest_key(key), json.dumps(manifest).encode())

    mine = await stored_snapshots(local_store, layout, "acme", "individual", "nightly", UTC)

    assert [s.as_of.day for s in mine] == [1]


# -- item 12: verify passes on nothing no more ----------------------------------------


def _verify(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acexport", "verify", "--config", str(config)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_verify_fails_when_it_checked_nothing_the_root_is_gone_or_manifests_are_lost(
    tmp_path: Path,
) -> None:
    """Reproduced: `verify` said "0 files match" and exited 0 with the output root
    missing, or with every manifest lost."""
    out = tmp_path / "exports"
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "s"}"\noutput_dir = "{out}"\n')

    missing = _verify(config)
    assert missing.returncode == 1
    assert f"the output root {out} does not exist" in missing.stdout

    out.mkdir()
    (out / "README.txt").write_text("a user's file: not ours, not a problem\n")
    empty = _verify(config)
    assert empty.returncode == 1
    assert "no file was checked" in empty.stdout

    data = (
        out / "workspace=acme/type=page/date=2022-01-01/page_20220101T0000_20220102T0000.jsonl.gz"
    )
    data.parent.mkdir(parents=True)
    data.write_bytes(b"\x1f\x8b")
    orphan = _verify(config)
    assert orphan.returncode == 1
    assert f"{data}: has no manifest" in orphan.stdout
    assert "README.txt" not in orphan.stdout


# -- item 13: read-only commands read an older ledger ---------------------------------


@pytest.mark.parametrize("version", [1, 3, 6])
def test_read_only_commands_read_a_ledger_of_an_older_schema(tmp_path: Path, version: int) -> None:
    """Reproduced: after an upgrade, `status`, `check-config` and `backfill --dry-run`
    crashed (IndexError) on a ledger a daemon had not yet migrated."""
    from acexport.ledger.schema import _MIGRATIONS

    state = tmp_path / "state"
    state.mkdir()
    with contextlib.closing(sqlite3.connect(state / "state.sqlite3")) as db:
        for number, script in enumerate(_MIGRATIONS[:version], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;")
        db.execute(
            "INSERT INTO exports (workspace, type, window_start, window_end, job, state, "
            "planned_at, updated_at) VALUES ('acme', 'page', '2022-01-01T00:00:00.000Z', "
            "'2022-01-02T00:00:00.000Z', 'j', 'done', 0, 0)"
        )
        db.commit()
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\noutput_dir = "{tmp_path / "out"}"\n'
        '[workspaces.acme]\ntoken = "t"\nretention = 1200\n'
        '[[jobs]]\nname = "j"\nworkspace = "acme"\n'
        'types = ["page"]\n'
    )
    for args in (
        ["status"],
        ["status", "--json"],
        ["check-config"],
        ["backfill", "--job", "j", "--from", "2022-01-01", "--to", "2022-01-03", "--dry-run"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "acexport", *args, "--config", str(config)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert result.returncode in (0, 1), (args, result.stderr)
    assert "would cover 3 exports" in result.stdout  # (its file is not in the store: new)
