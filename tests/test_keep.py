"""``keep`` (issue 37 item 1): window files older than a job's keep are deleted at
each look, manifest first, recorded expired, never exported or adopted again."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from acexport.config import Settings, load_settings
from acexport.daemon import Daemon
from acexport.errors import StoreRejected
from acexport.ledger import ExportRecord, Ledger, LedgerState, ledger_path
from tests.conftest import EmulatorFactory, FakeClock, RunningEmulator
from tests.daemon_helpers import job, manifests, run_cli, write_config

DAY = 86400


@dataclass
class DailyKeep3d:
    """One daily job of ``page`` that keeps 3 days, on AC's FakeClock."""

    clock: FakeClock
    emu: RunningEmulator
    config: Path
    settings: Settings

    @classmethod
    async def start(cls, emulator: EmulatorFactory, tmp_path: Path) -> DailyKeep3d:
        clock = FakeClock(time.time())
        emu = await emulator(clock=clock, records=5)
        jobs = job("d", "acme", types=["page"], catch_up="1d", lag="0s", keep="3d")
        config = write_config(tmp_path, emu, jobs)
        return cls(clock, emu, config, load_settings(config))

    def daemon(self) -> Daemon:
        now = lambda: datetime.fromtimestamp(self.clock(), UTC)  # noqa: E731
        return Daemon(self.settings, self.config, clock=now)

    async def rows(self) -> dict[int, ExportRecord]:
        ledger = await Ledger.open(ledger_path(self.config.parent / "state"))
        try:
            return {r.id: r for r in await ledger.all_rows()}
        finally:
            await ledger.close()


async def test_keep_deletes_exactly_the_old_windows_and_nothing_else(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Four days on, the two windows that ended more than keep ago are gone (file
    and manifest), recorded expired, shown in status; the newer ones and a user's
    file stay; a file left by a kill between the two deletes goes at the next look;
    verify stays green and nothing expired is asked of AC again."""
    clock = FakeClock(time.time())
    emu = await emulator(clock=clock, records=5)
    jobs = job("d", "acme", types=["page"], catch_up="2d", lag="0s", keep="4d")
    config = write_config(tmp_path, emu, jobs)
    settings = load_settings(config)
    out = tmp_path / "exports"

    expired_metric: list[str] = []
    page: list[str] = []

    async def run_once() -> None:
        now = lambda: datetime.fromtimestamp(clock(), UTC)  # noqa: E731
        async with Daemon(settings, config, clock=now) as daemon:
            assert await daemon.run_once()
            metrics = daemon.metrics.render().decode()
            page[:] = [await daemon.status_page()]
        expired_metric[:] = [m for m in metrics.splitlines() if "windows_expired_total{" in m]

    await run_once()
    first = {m["fromDate"] for m in manifests(out)}
    assert len(first) == 2
    user_file = out / "workspace=acme" / "notes.txt"
    user_file.write_text("mine\n")
    clock.advance(2 * DAY)
    await run_once()  # two days more, nothing old enough yet (keep 4d from the end)
    assert len(manifests(out)) == 4
    # A kill between the deletes of an expiry: the manifest went, the file stayed.
    oldest = min(manifests(out), key=lambda m: m["fromDate"])
    (leftover,) = out.rglob(oldest["file"])
    Path(str(leftover) + ".manifest.json").unlink()
    clock.advance(2 * DAY)
    asked = len((await emu.jobs())["jobs"])
    await run_once()
    left = {m["fromDate"] for m in manifests(out)}
    assert first.isdisjoint(left)  # both first windows deleted
    assert not leftover.exists()  # and the file the kill left
    assert len(left) == 4
    assert user_file.read_text() == "mine\n"
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and "page_" in p.name) == sorted(
        name for m in manifests(out) for name in (m["file"], m["file"] + ".manifest.json")
    )
    assert len((await emu.jobs())["jobs"]) == asked + 1  # the new days only
    ledger = await Ledger.open(ledger_path(tmp_path / "state"))
    try:
        rows = await ledger.all_rows()
    finally:
        await ledger.close()
    expired = [r for r in rows if r.state is LedgerState.EXPIRED]
    assert len(expired) == 2
    assert expired_metric == ['acexport_windows_expired_total{job="d"} 2.0']
    assert "<p class='expired'>2 older window files expired (keep)</p>" in page[0]
    code, stdout, _ = await run_cli("status", "--config", str(config))
    assert "expired (deleted by keep): 2; oldest kept:" in stdout.decode()
    code, stdout, stderr = await run_cli("verify", "--config", str(config))
    assert code == 0, stdout.decode() + stderr


@pytest.mark.parametrize("other", ["catch_up", "restate"])
def test_keep_not_longer_than_catch_up_or_restate_is_a_config_error(
    tmp_path: Path, other: str
) -> None:
    from acexport.errors import ConfigError

    fields = {"catch_up": "7d", "keep": "7d"} if other == "catch_up" else {
        "catch_up": "1d", "restate": "7d", "keep": "7d"}  # fmt: skip
    path = tmp_path / "acexport.toml"
    lines = "".join(f'{k} = "{v}"\n' for k, v in fields.items())
    path.write_text(
        f'[workspaces.acme]\ntoken = "t"\n[[jobs]]\nname = "d"\nworkspace = "acme"\n{lines}'
    )
    with pytest.raises(ConfigError, match=f"keep .* must exceed {other} "):
        load_settings(path)


async def test_backfill_and_reexport_refuse_windows_keep_would_delete(tmp_path: Path) -> None:
    """Issue 37 item 5: exported only to be deleted by the next look; said, in a dry run
    too, with the edge's date."""
    config = tmp_path / "acexport.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[workspaces.acme]\ntoken = "t"\n'
        '[[jobs]]\nname = "d"\nworkspace = "acme"\ntypes = ["page"]\nkeep = "30d"\n'
    )
    config.chmod(0o600)
    for command in ("backfill", "reexport"):
        code, _, stderr = await run_cli(
            command, "--config", str(config), "--job", "d",
            "--from", "2020-01-01", "--to", "2020-01-03", "--dry-run",
        )  # fmt: skip
        assert code == 2, stderr
        assert "3 windows of that range ended before the job's keep (30d:" in stderr


async def test_a_queued_window_keep_deletes_is_never_asked_of_ac_after_a_restart(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Windows left queued by a stop, older than keep when the daemon starts again, are
    expired by the first look, not exported by a lane that resumed them first (found by
    tests/test_model.py: a lane claimed them before the look reached keep, so AC was
    asked for windows deleted at the next look, and hooks told of files about to go)."""
    kept = await DailyKeep3d.start(emulator, tmp_path)
    async with kept.daemon() as daemon:
        # Planned, then stopped before any lane asked AC: the row stays queued.
        look = await daemon._planner.look(kept.settings.jobs[0])
    (old,) = look.records
    assert old.state is LedgerState.QUEUED
    kept.clock.advance(5 * DAY)  # that window now ended more than keep ago
    async with kept.daemon() as daemon:
        assert await daemon.run_once()
    asked = {j["fromDate"] for j in (await kept.emu.jobs())["jobs"]}
    assert not any(f.startswith(old.start.strftime("%Y-%m-%d")) for f in asked), asked
    assert (await kept.rows())[old.id].state is LedgerState.EXPIRED
    stored = {m["fromDate"][:10] for m in manifests(tmp_path / "exports")}
    assert old.start.strftime("%Y-%m-%d") not in stored


async def test_a_window_that_waits_in_its_lane_past_keep_is_expired_not_asked_of_ac(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A queued window handed to its lane young, which the lane reaches only after its
    job's keep has passed (a long backlog; the model test's clock, moved while the lane
    waited), is expired there, never asked of AC: docs/data.md's promise for a window
    "still waiting in the queue". Before, the lane asked AC for it, stored it and told
    the hooks, and the next look deleted it (found by MODEL_RANDOM)."""
    kept = await DailyKeep3d.start(emulator, tmp_path)
    async with kept.daemon() as daemon:
        look = await daemon._planner.look(kept.settings.jobs[0])
        (waiting,) = look.records
        assert daemon._lanes.enqueue(look.records) == 1  # in its lane, not yet claimed
        kept.clock.advance(5 * DAY)  # the lane reaches it only now
        assert await daemon.drain()
        expired = daemon.metrics.windows_expired.labels("d")._value.get()
    assert (await kept.emu.jobs())["jobs"] == []  # AC was never asked
    assert (await kept.rows())[waiting.id].state is LedgerState.EXPIRED
    assert manifests(tmp_path / "exports") == []
    assert expired == 1  # counted as the looks' expiries are


async def test_a_window_past_keep_the_store_will_not_delete_is_exported_not_spun_on(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lane's claim refuses a window past its keep, and keep cannot expire it: the
    store refuses deletes (an S3 role without DeleteObject). The window is exported, as
    before the claim knew keep, for a later look to expire; ``run --once``'s drain does
    not re-queue it for ever."""

    async def refused(store: object, keys: object) -> None:
        raise StoreRejected("deleting: AccessDenied")

    monkeypatch.setattr("acexport.keep.delete_stored", refused)
    kept = await DailyKeep3d.start(emulator, tmp_path)
    async with kept.daemon() as daemon:
        look = await daemon._planner.look(kept.settings.jobs[0])
        (waiting,) = look.records
        assert daemon._lanes.enqueue(look.records) == 1
        kept.clock.advance(5 * DAY)
        async with asyncio.timeout(30):
            assert await daemon.drain()
    assert len((await kept.emu.jobs())["jobs"]) == 1  # asked once
    assert (await kept.rows())[waiting.id].state is LedgerState.DONE
