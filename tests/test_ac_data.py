"""AC's data as it really is (issue 22): retention, entity snapshots, restatement,
end to end against the emulator over loopback."""

from __future__ import annotations

import gzip
import json
import random
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from acexport.ac.polling import PollPlan
from acexport.config import load_settings
from acexport.daemon import Daemon
from acexport.emulator.data import PayloadSpec, iter_blocks
from acexport.ledger import LedgerState, read_rows
from acexport.windows import iso_ms
from tests.conftest import EmulatorFactory, FakeClock
from tests.daemon_helpers import DaemonProcess, job, manifests, run_cli, write_config


async def acexport(*args: str) -> tuple[int, str, str]:
    code, out, err = await run_cli(*args)
    return code, out.decode(), err


def days_ago(days: int) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).date().isoformat()


@pytest.mark.parametrize("answered_as", [400, 500])
async def test_acs_retention_refusal_ends_the_window_and_is_learned(
    emulator: EmulatorFactory, tmp_path: Path, answered_as: int
) -> None:
    """Issue 22 item 3: AC refusing a window as before its retention (as the newest
    controller's 400, or inside a 500) makes it beyond_retention at once, never retried;
    the months in AC's message are learned, so the later windows before the edge are
    not asked for at all; the windows inside are exported. The backfill succeeds."""
    emu = await emulator(
        tokens={"acme": "acme-token"}, retention_months=2, retention_as=answered_as, records=3
    )
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s"))

    code, _, err = await acexport(
        "backfill", "--config", str(config), "--job", "p", "--from", days_ago(75),
        "--to", days_ago(50),
    )  # fmt: skip

    assert code == 0, err
    rows = await read_rows(tmp_path / "state")
    beyond = [r for r in rows if r.state is LedgerState.BEYOND_RETENTION]
    done = [r for r in rows if r.state is LedgerState.DONE]
    assert len(rows) == 26
    assert len(beyond) + len(done) == 26
    edge = datetime.now(UTC) - timedelta(days=62)  # 2 months: 59 to 62 days
    assert all(r.start < edge + timedelta(days=4) for r in beyond)
    assert all(r.start > edge - timedelta(days=1) for r in done)
    refused = [r for r in beyond if "outside of your data retention period of 2 months" in
               (r.reason or "")]  # fmt: skip
    assert len(refused) == 1, [r.reason for r in beyond]  # only the first was asked for
    assert all(r.attempts <= 1 for r in beyond)
    report = await emu.jobs()
    # The windows inside the retention are due together: one request covers them all.
    asked = [(job["fromDate"], job["toDate"]) for job in report["jobs"]]
    assert asked == [(iso_ms(min(r.start for r in done)), iso_ms(max(r.end for r in done)))]
    assert len(manifests(tmp_path / "exports")) == len(done)
    assert "learned_retention_months" in err


async def test_a_backfill_past_the_configured_retention_asks_for_nothing_before_it(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A backfill reaching back 13 months and a week (retention 13) says how many exports start
    before the retention, records them, and asks AC only for the rest; `status` shows
    them, and a second run changes nothing."""
    emu = await emulator(tokens={"acme": "acme-token"}, records=2)
    config = write_config(tmp_path, emu, job("p", "acme", types=["page", "event"],
                                               catch_up="0s"))  # fmt: skip
    config.write_text(config.read_text().replace("retention = 1200", 'retention = "13 months"'))
    args = ("backfill", "--config", str(config), "--job", "p")
    code, _, err = await acexport(*args, "--from", days_ago(405), "--to", days_ago(390))

    assert code == 0, err
    rows = await read_rows(tmp_path / "state")
    beyond = sum(r.state is LedgerState.BEYOND_RETENTION for r in rows)
    done = sum(r.state is LedgerState.DONE for r in rows)
    assert beyond > 0
    assert done > 0
    assert beyond + done == 32
    assert f"{beyond} of 32 exports in that range start before AC's data retention" in err
    assert len((await emu.jobs())["jobs"]) == 2  # a coalesced request of each type

    code, out, _ = await acexport("status", "--config", str(config))
    assert f"before AC's data retention (never asked for): {beyond}" in out
    code, _, err = await acexport(*args, "--from", days_ago(405), "--to", days_ago(390))
    assert code == 0
    assert len((await emu.jobs())["jobs"]) == 2  # a coalesced request of each type


@pytest.mark.slow
async def test_entity_snapshots_end_to_end_with_pruning(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 22 item 1, against the emulator: a job of all six types (as a newcomer
    writes it) exports windows of event and page and snapshots of the four entity
    tables under snapshot=<as of>/, manifest mode "snapshot", from the retention's
    start to the look; only the newest keep_snapshots stay (older directories gone);
    `status` names each type's newest snapshot."""
    emu = await emulator(tokens={"acme": "acme-token"}, records=4)
    jobs = job("all", "acme", catch_up="1d", lag="0s", schedule="every 1s", keep_snapshots=2)
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace("retention = 1200", "retention = 13"))
    daemon = await DaemonProcess.start(config)
    snapshot_types = ("identity", "individual", "membership", "segment")

    def snapshots_made() -> int:
        return sum(e.get("count", 0) for e in daemon.events("snapshots_pruned"))

    await daemon.wait_for(lambda: snapshots_made() >= 8, timeout=60)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait() == 0
    done = [e for e in daemon.events("export_done") if e["type"] == "segment"]
    assert len({e["as_of"] for e in done}) == len(done) >= 3  # which snapshot, in each line

    out = tmp_path / "exports" / "workspace=acme"
    for type_ in snapshot_types:
        dirs = sorted(p.name for p in (out / f"type={type_}").iterdir())
        assert len(dirs) == 2, dirs  # the newest two; older ones pruned, directories too
        assert all(d.startswith("snapshot=") for d in dirs)
    found = manifests(tmp_path / "exports")
    snaps = [m for m in found if m["mode"] == "snapshot"]
    assert {m["type"] for m in snaps} == set(snapshot_types)
    assert {m["type"] for m in found if m["mode"] == "windows"} == {"event", "page"}
    retention_start = {m["fromDate"] for m in snaps}
    assert len(retention_start) == 1
    (start,) = retention_start
    assert datetime.fromisoformat(start) < datetime.now(UTC) - timedelta(days=390)

    code, out_text, _ = await acexport("status", "--config", str(config))
    assert code == 0
    rows = await read_rows(tmp_path / "state")
    newest = max(r.end for r in rows if r.type == "segment" and r.state is LedgerState.DONE)
    # The config's zone is UTC: the as-of time with its offset (issue 38 item 10).
    assert f"segment snapshot as of: {newest.isoformat(timespec='minutes')}" in out_text


async def test_restatement_replaces_a_changed_window_once_and_keeps_an_unchanged_one(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 22 item 2: with restate = "2d", a window exported while young is exported
    once more when 2 days old (AC's first file expired: a new export). Page data that
    AC recomputed replaces the file atomically, manifest revision 2 with the previous
    sha; event data that did not change keeps its file and says so; a later look
    restates nothing again. Time is the emulator's FakeClock, shared with the daemon."""
    clock = FakeClock(time.time())
    emu = await emulator(tokens={"acme": "acme-token"}, clock=clock, records=6, restate_rate=1.0)
    jobs = job("d", "acme", types=["page", "event"], catch_up="1d", lag="0s", restate="2d")
    config = write_config(tmp_path, emu, jobs)
    settings = load_settings(config)

    def now() -> datetime:
        return datetime.fromtimestamp(clock(), UTC)

    async def run_once() -> list[dict[str, object]]:
        with capture_logs() as logs:
            async with Daemon(settings, config, clock=now) as daemon:
                assert await daemon.run_once()
        return logs

    await run_once()
    first = {(m["type"], m["fromDate"]): m for m in manifests(tmp_path / "exports")}
    assert len(first) == 2
    clock.advance(3 * 86400)

    logs = await run_once()

    after = {(m["type"], m["fromDate"]): m for m in manifests(tmp_path / "exports")}
    (page_key,) = [k for k in first if k[0] == "page"]
    (event_key,) = [k for k in first if k[0] == "event"]
    page, event = after[page_key], after[event_key]
    assert (page["revision"], page["previous_sha256"]) == (2, first[page_key]["file_sha256"])
    assert page["file_sha256"] != first[page_key]["file_sha256"]
    assert event == first[event_key]  # unchanged: the file and its manifest stay
    assert [e["event"] for e in logs].count("restated_unchanged") == 1
    assert [e["count"] for e in logs if e["event"] == "windows_restated"] == [2]
    rows = {(r.type, r.start): r for r in await read_rows(tmp_path / "state")}
    day = {t: r.revision for (t, s), r in rows.items() if s.isoformat()[:10] == page_key[1][:10]}
    # The changed page window is revision 2; the unchanged event window stays revision 1,
    # as its kept file's manifest says (it said 2: found by tests/test_model.py).
    assert day == {"page": 2, "event": 1}
    by_range = [j for j in (await emu.jobs())["jobs"] if j["fromDate"] == page_key[1]]
    # Asked twice: the first export, then a new one after it expired, recomputed.
    assert [j["revision"] for j in by_range if j["type"] == "page"] == [0, 1]

    clock.advance(3 * 86400)
    await run_once()  # restates the second run's window, not the first's again
    again = [j for j in (await emu.jobs())["jobs"] if j["fromDate"] == page_key[1]]
    assert len(again) == len(by_range)
    assert manifests(tmp_path / "exports").count(page) == 1


@pytest.mark.slow
async def test_ten_nightly_runs_of_every_type_against_acs_engine(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 22 item 6: a nightly job of all six types, as a newcomer writes it, run on
    ten days of AC's engine (rows exist whatever is asked, entities change between
    days). Every window and snapshot is AC's own rendering (records and sha256); the
    windows hold each event and page row of the ten days exactly once; the newest
    snapshot holds every entity created since snapshot_from in its state of that
    night, changes a creation-date window would never have seen; seven are kept."""
    first_night = datetime(2026, 11, 2, 2, 30, tzinfo=UTC)
    clock = FakeClock(first_night.timestamp())
    emu = await emulator(tokens={"acme": "acme-token"}, clock=clock, records_per_day=2400)
    config = write_config(tmp_path, emu, job("nightly", "acme", catch_up="1d"))
    config.write_text(
        config.read_text().replace("retention = 1200", 'snapshot_from = "2026-11-01"')
    )
    settings = load_settings(config)
    for night in range(10):
        clock.now = (first_night + timedelta(days=night)).timestamp()
        async with Daemon(
            settings, config, clock=lambda: datetime.fromtimestamp(clock(), UTC)
        ) as d:
            assert await d.run_once()

    report = await emu.jobs()
    served = {(j["type"], j["fromDate"], j["toDate"]): j for j in report["jobs"]}
    written = manifests(tmp_path / "exports")
    for manifest in written:
        # A time series' window is cut out of a request through its end (the next
        # window's first page hour is in it too): the manifest names that request.
        asked = (
            manifest.get("request_fromDate", manifest["fromDate"]),
            manifest.get("request_toDate", manifest["toDate"]),
        )
        job_ = served[(manifest["type"], *asked)]
        assert manifest["payload_sha256"] == job_["sha256"]
        if manifest["mode"] == "windows":
            assert manifest["records"] <= job_["records"]
        else:
            assert manifest["records"] == job_["records"]
    windows = [m for m in written if m["mode"] == "windows"]
    assert sorted({m["type"] for m in windows}) == ["event", "page"]
    assert len(windows) == 20  # ten days of each

    def ids(type_: str, key: str) -> list[str]:
        rows = []
        for manifest in (m for m in windows if m["type"] == type_):
            path = next((tmp_path / "exports").rglob(manifest["file"]))
            rows += [
                json.loads(line)[key] for line in gzip.decompress(path.read_bytes()).splitlines()
            ]
        return rows

    # Every event of the ten days (those of the last millisecond of a day too: AC's
    # timestamps have microseconds), and none twice.
    whole = PayloadSpec("acme", "event", int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1000),
                        int(datetime(2026, 11, 11, tzinfo=UTC).timestamp() * 1000), 0, 0,
                        records_per_day=2400)  # fmt: skip
    expected = [
        record["id"]
        for block in iter_blocks(whole)
        for record in map(json.loads, block.splitlines())
        if record["eventDate"] < "2026-11-11"
    ]
    assert sorted(ids("event", "id")) == sorted(expected)  # no row lost, none twice
    # Page rows are hourly: the boundary hour's rows are in the next day's file only.
    pages = list(zip(ids("page", "eventDate"), ids("page", "sessionId"), strict=True))
    assert len(pages) == len(set(pages)) == 10 * 600
    assert min(pages)[0].startswith("2026-11-01 00:00:00")

    snapshots = [m for m in written if m["type"] == "individual"]
    assert len(snapshots) == 7  # keep_snapshots
    newest = max(snapshots, key=lambda m: m["toDate"])
    assert newest["fromDate"] == "2026-11-01T00:00:00.000Z"
    path = next((tmp_path / "exports").rglob(newest["file"]))
    people = [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
    # 1% of the events: 24 a day for ten days, and those of the 11th before 02:30.
    assert len(people) == newest["records"]
    assert 24 * 10 + 2 <= len(people) <= 24 * 10 + 3
    changed = [p for p in people if p["modifiedDate"][:10] > p["createDate"][:10]]
    assert len(changed) > len(people) // 10


async def test_a_snapshot_is_pruned_without_listing_the_store_once_its_series_is_known(
    tmp_path: Path,
) -> None:
    """Issue 35 item 6: every snapshot's prune listed its prefix and read its manifests
    (12% of the daemon's CPU at a thousand workspaces). The planner's first listing
    is learned (``KnownSnapshots``) and each commit adds to it: later prunes keep the
    newest ``keep_snapshots`` on real files without a listing. A series whose listing
    showed a prune stopped half way is not learned: its next prune lists, removes
    what was left, and from then on needs no listing either."""
    from types import SimpleNamespace

    from acexport.config import OutputSettings
    from acexport.lane.snapshots import prune_snapshots_after
    from acexport.output.layout import OutputLayout
    from acexport.output.local import LocalStore
    from acexport.output.manifest import manifest_key
    from acexport.output.snapshots import KnownSnapshots, listed_snapshots
    from acexport.protocol import ExportMode
    from acexport.windows import ExportWindow

    store = LocalStore(tmp_path / "out", tmp_path / "tmp")
    layout = OutputLayout.from_settings(OutputSettings())
    start, zone = datetime(2025, 1, 1, tzinfo=UTC), ZoneInfo("UTC")
    listings: list[str] = []
    listed_under = store.listed_under

    async def counted(prefix: str) -> dict[str, int]:
        listings.append(prefix)
        return await listed_under(prefix)

    store.listed_under = counted  # type: ignore[method-assign]

    def put(type_: str, day: int, *, with_manifest: bool = True) -> SimpleNamespace:
        """A snapshot committed as the sink does: its file, then its manifest."""
        window = ExportWindow(start, datetime(2026, 1, day, tzinfo=UTC))
        key = layout.key_for("acme", type_, "j", window, mode=ExportMode.SNAPSHOT)
        path = tmp_path / "out" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * day)
        if with_manifest:
            (tmp_path / "out" / manifest_key(key)).write_text(json.dumps({
                "manifest_version": 2, "job": "j", "workspace": "acme", "type": type_,
                "mode": "snapshot", "fromDate": window.from_date, "toDate": window.to_date,
                "file_bytes": day}))  # fmt: skip
        manifest = SimpleNamespace(file_bytes=day)
        return SimpleNamespace(key=key, window=window, manifest=manifest, location=str(path))

    def days_stored(type_: str) -> list[int]:
        return sorted(p.stat().st_size for p in (tmp_path / "out").rglob(f"{type_}_*[!n]"))

    put("individual", 1)
    put("segment", 1, with_manifest=False)  # a prune stopped between its two deletes
    put("segment", 2)
    known = KnownSnapshots()
    await listed_snapshots(store, layout, "j", "acme", ["individual", "segment"], zone, known)
    settings = SimpleNamespace(
        jobs_by_name={"j": SimpleNamespace(keep_snapshots=2)}, output=OutputSettings()
    )
    ctx = SimpleNamespace(settings=lambda: settings, sink=SimpleNamespace(store=store),
                          snapshots=known)  # fmt: skip

    async def commit(type_: str, day: int) -> None:
        committed = put(type_, day)
        record = SimpleNamespace(job="j", workspace="acme", type=type_)
        await prune_snapshots_after(ctx, record, zone, committed)

    for day in range(2, 7):
        await commit("individual", day)
        assert days_stored("individual") == [max(1, day - 1), day]
    assert listings == []  # learned from the planner's listing, kept by the commits

    await commit("segment", 3)  # not learned: listed once, the leftover removed
    assert days_stored("segment") == [2, 3]
    assert len(listings) == 1
    for day in (4, 5):
        await commit("segment", day)
    assert days_stored("segment") == [4, 5]
    assert len(listings) == 1


@pytest.mark.slow
async def test_acs_worker_tick_is_honoured_with_few_requests(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 22 item 5/6: AC's worker starts exports only at its ticks (here every
    second instead of 5 minutes). acexport submits the next export as the last one is
    ready, each costs a tick, and its polls learn that: after the first, few requests
    per export; never two exports waiting on AC at once."""
    emu = await emulator(tokens={"acme": "acme-token"}, tick_s=1.0, processing_s=0.05, records=5)
    jobs = job("h", "acme", types=["page"], window="1h", catch_up="5h", lag="0s", coalesce_max=0)
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace('poll_initial = "50ms"', 'poll_initial = "100ms"')
                      .replace('poll_max = "150ms"', 'poll_max = "1s"'))  # fmt: skip
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 0

    report = await emu.jobs()
    jobs_ = sorted(report["jobs"], key=lambda j: j["timeline"]["created"])
    assert len(jobs_) == 5
    assert all(j["timeline"]["started"] % 1.0 == pytest.approx(0.0, abs=1e-6) for j in jobs_)
    assert report["workspaces"]["acme"]["max_unready"] == 1
    later = sorted(j["requests"] for j in jobs_[1:])
    # Measured: 2 each (one status, one download); a fixed 100 ms poll asks about 10
    # times per tick.
    assert later[len(later) // 2] <= 3, later
    # The second export learns from the first, whose time was the random phase of the
    # tick at the start: a first export ready at once says "0.05 s" and the second,
    # which takes a whole tick, backs off from there (10 requests were seen). Each
    # export asks at most what its plan, fed the same history, asks; a little more
    # only for the daemon's view of time being a few ms off the emulator's.
    spans = [j["timeline"]["ready"] - j["timeline"]["created"] for j in jobs_]
    for n, export in enumerate(jobs_[1:], start=1):
        history = sorted(spans[max(0, n - 5) : n])
        planned = planned_requests(history[len(history) // 2], spans[n], initial_s=0.1, max_s=1.0)
        assert export["requests"] <= planned + 2, (n, export["requests"], planned, spans)


class _MostRequests(random.Random):
    """Jitter always at its low end: the most requests a plan can make."""

    def uniform(self, a: float, b: float) -> float:
        return a


def planned_requests(
    expected_s: float, ready_after_s: float, initial_s: float, max_s: float
) -> int:
    """Status requests a ``PollPlan`` with this history makes until the export is
    ready, and the download."""
    plan = PollPlan(initial_s, max_s, expected_s, rng=_MostRequests())
    elapsed, requests = 0.0, 0
    while elapsed < ready_after_s:
        elapsed += plan.next_delay(elapsed)
        requests += 1
    return requests + 1


async def test_pruning_removes_what_a_crash_mid_prune_left_but_not_a_commit_under_way(
    tmp_path: Path,
) -> None:
    """A prune deletes a snapshot's manifest, then its file: a kill between the two
    left a file outside any manifest, forever. The next prune removes such files that
    sort before the oldest kept snapshot; a newer file without its manifest yet (a
    commit under way) stays. Empty snapshot directories go too."""
    from acexport.config import OutputSettings
    from acexport.output.layout import OutputLayout
    from acexport.output.local import LocalStore
    from acexport.output.manifest import manifest_key
    from acexport.output.snapshots import nothing_to_prune, prune_snapshots, stored_snapshots
    from acexport.protocol import ExportMode
    from acexport.windows import ExportWindow

    store = LocalStore(tmp_path / "out", tmp_path / "tmp")
    layout = OutputLayout.from_settings(OutputSettings())
    start = datetime(2025, 1, 1, tzinfo=UTC)

    def put(day: int, *, with_manifest: bool) -> Path:
        window = ExportWindow(start, datetime(2026, 1, day, tzinfo=UTC))
        key = layout.key_for("acme", "individual", "j", window, mode=ExportMode.SNAPSHOT)
        path = tmp_path / "out" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * day)
        if with_manifest:
            (tmp_path / "out" / manifest_key(key)).write_text(json.dumps({
                "manifest_version": 2, "job": "j", "workspace": "acme", "type": "individual",
                "mode": "snapshot", "fromDate": window.from_date, "toDate": window.to_date,
                "file_bytes": day}))  # fmt: skip
        return path

    leftover = put(1, with_manifest=False)
    oldest, kept_a, kept_b = (put(day, with_manifest=True) for day in (2, 3, 4))
    under_way = put(5, with_manifest=False)
    stored = await stored_snapshots(store, layout, "acme", "individual", "j", ZoneInfo("UTC"))
    assert len(stored) == 3

    prefix = layout.snapshot_prefix("acme", "individual", "j")
    listed = await store.listed_under(prefix)
    pruned, leftovers = await prune_snapshots(store, layout, prefix, stored, keep=2, listed=listed)

    assert not nothing_to_prune(layout, listed, keep=9)  # a file without its manifest
    assert [p.key.name for p in pruned] == [oldest.name]
    assert leftovers == 1
    gone = [leftover, leftover.parent, oldest, oldest.parent]
    assert [p for p in gone if p.exists()] == []
    assert all(p.exists() for p in (kept_a, kept_b, under_way))

    # The shortcut after a commit (no manifest read): only with no more snapshots than
    # kept, each with its manifest; a user's file in the tree does not count.
    under_way.unlink()
    (kept_a.parent / "notes.txt").write_text("mine")
    listed = await store.listed_under(prefix)
    assert nothing_to_prune(layout, listed, keep=2)
    assert not nothing_to_prune(layout, listed, keep=1)
