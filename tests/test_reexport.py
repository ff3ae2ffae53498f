"""``acexport reexport`` (issue 37 item 2): done windows asked again and replaced as
their next revision, unchanged bytes too; queued for a running daemon or run here."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, run_cli, write_config

pytestmark = pytest.mark.slow

JOBS = job("d", "acme", types=["page"], catch_up="3d", lag="0s", schedule="every 1h")


def by_date(out: Path) -> dict[str, dict[str, object]]:
    return {str(m["fromDate"]): m for m in manifests(out)}


async def test_reexport_while_the_daemon_runs_replaces_each_window_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Three done windows re-exported through the running daemon: revision 2 naming
    the file it replaces, unchanged (AC served the same bytes), one file each, and
    DuckDB counts each row once."""
    emu = await emulator(records_per_day=40, processing_s=0.05)  # rows as AC holds them
    receiver_log = tmp_path / "events.jsonl"
    hook = (
        '\n[[hooks]]\nname = "log"\n'
        f'command = ["sh", "-c", "cat >> {receiver_log}; echo >> {receiver_log}"]\n'
    )
    config = write_config(tmp_path, emu, JOBS + hook)
    daemon = await DaemonProcess.start(config)
    try:
        await daemon.wait_for(lambda: len(manifests(tmp_path / "exports")) == 3)
        first = by_date(tmp_path / "exports")
        dates = sorted(first)
        asked = len((await emu.jobs())["jobs"])
        code, out, err = await run_cli(
            "reexport", "--config", str(config), "--job", "d",
            "--from", dates[0][:10], "--to", dates[-1][:10],
        )  # fmt: skip
        assert code == 0, err
        assert "3 done windows queued as the next revision" in err
        assert "the running daemon" in out.decode()

        def replaced() -> bool:
            return all(m["revision"] == 2 for m in manifests(tmp_path / "exports"))

        try:
            await daemon.wait_for(replaced)
        except BaseException:
            print("\n".join(daemon.raw[-30:]))
            raise
        await daemon.wait_for(lambda: receiver_log.exists() and receiver_log.read_text().count(
            '"revision":2') == 3)  # fmt: skip
    finally:
        daemon.send(signal.SIGTERM)
        assert await daemon.wait() == 0
    now = by_date(tmp_path / "exports")
    assert sorted(now) == dates
    # Coalesced like a backfill: the three windows in one AC request (AC's engine
    # answered it with the export it made for that range, within its 24 hours).
    assert {m["request_windows"] for m in now.values()} == {3}
    assert len((await emu.jobs())["jobs"]) == asked
    for date, manifest in now.items():
        assert manifest["previous_sha256"] == first[date]["file_sha256"]
        assert manifest.get("unchanged") is True, json.dumps([manifest, first[date]])
        assert manifest["file_sha256"] == first[date]["file_sha256"]
    files = [p for p in (tmp_path / "exports").rglob("page_*") if not p.name.endswith(".json")]
    assert len(files) == 3
    glob = f"{tmp_path}/exports/*/type=page/*/*.jsonl.gz"
    (rows,) = duckdb.execute("SELECT count(*) FROM read_json(?)", [glob]).fetchall()[0]
    assert rows == sum(int(m["records"]) for m in now.values())  # type: ignore[call-overload]


async def test_reexport_in_the_foreground_with_a_dry_run_first(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """No daemon: the dry run counts done and new windows, and the AC requests they
    share, without queuing; the real run replaces the done one as revision 2 and
    exports the missing one, and tells the hook before it exits."""
    emu = await emulator(records_per_day=40)
    told = tmp_path / "told.jsonl"
    # A slow loader: its deliveries lag behind the exports they tell of.
    hook = (
        f'\n[[hooks]]\nname = "log"\n'
        f'command = ["sh", "-c", "sleep 0.5; cat >> {told}; echo >> {told}"]\n'
    )
    config = write_config(tmp_path, emu, JOBS + hook)
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 0
    first = by_date(tmp_path / "exports")
    newest = max(first)
    code, out, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d",
        "--from", min(first)[:10], "--to", newest[:10], "--dry-run",
    )  # fmt: skip
    assert "3 done: asked again" in out.decode(), out.decode()
    assert "  1 AC request (up to 31 consecutive windows" in out.decode(), out.decode()
    # One window never exported: a day before the catch-up.
    code, out, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d", "--type", "page",
        "--from", "2022-01-01", "--to", "2022-01-01", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "0 done" in out.decode()
    assert "1 not exported yet" in out.decode()
    code, out, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d",
        "--from", newest[:10], "--to", newest[:10], "--dry-run",
    )  # fmt: skip
    assert "1 done: asked again" in out.decode(), out.decode()
    assert by_date(tmp_path / "exports") == first  # nothing queued by a dry run
    code, _, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d",
        "--from", newest[:10], "--to", newest[:10],
    )  # fmt: skip
    assert code == 0, err
    after = by_date(tmp_path / "exports")
    assert after[newest]["revision"] == 2
    assert after[newest]["previous_sha256"] == first[newest]["file_sha256"]
    assert all(after[d]["revision"] == 1 for d in after if d != newest)
    assert json.loads(json.dumps(after[newest]))["unchanged"] is True
    lines = [line for line in told.read_text().splitlines() if line.strip()]
    assert sorted(json.loads(line)["revision"] for line in lines) == [1, 1, 1, 2]
    code, out, _ = await run_cli("status", "--json", "--config", str(config))
    (hook_status,) = json.loads(out)["hooks"]
    assert (hook_status["pending"], hook_status["delivered"]) == (0, 4)  # none told twice


async def test_reexport_of_an_entity_type_takes_a_new_snapshot_now(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Snapshot types have no windows to ask again: reexport takes a new snapshot, as
    of now, beside the one the daemon took (the job keeps its newest keep_snapshots)."""
    emu = await emulator(records=5)
    jobs = job("d", "acme", types=["page", "individual"], catch_up="1d", lag="0s")
    config = write_config(tmp_path, emu, jobs)
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 0
    before = [m for m in manifests(tmp_path / "exports") if m["type"] == "individual"]
    assert len(before) == 1
    # As-of times are whole seconds: the next second's snapshot is another file.
    as_of = datetime.fromisoformat(before[0]["toDate"].replace("Z", "+00:00"))
    async with asyncio.timeout(5):
        while True:
            if datetime.now(UTC) >= as_of + timedelta(seconds=1):
                break
            await asyncio.sleep(0.05)
    code, _, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d", "--type", "individual",
        "--from", "2022-01-01", "--to", "2022-01-01",
    )  # fmt: skip
    assert code == 0, err
    assert "a new snapshot of individual taken" in err
    after = [m for m in manifests(tmp_path / "exports") if m["type"] == "individual"]
    assert len(after) == 2
    assert max(m["toDate"] for m in after) > before[0]["toDate"]


def data_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob("page_*") if not p.name.endswith(".json"))


async def test_a_compression_change_exports_nothing_again_and_a_reexport_replaces_the_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """gzip, then zstd: the done windows stay as they are (their manifests prove them;
    they had been exported again beside their .gz files, which nothing ever deleted
    since the ledger named the new ones), and a reexport of one replaces its .gz file
    with a .zst one: every window is one file, whatever the output was when it came."""
    emu = await emulator(records_per_day=40)
    config = write_config(tmp_path, emu, JOBS, extra='[output]\ncompression = "gzip"\n')
    out = tmp_path / "exports"
    code, _, err = await run_cli("run", "--once", "--config", str(config))
    assert code == 0, err
    first = by_date(out)
    assert len(first) == 3
    assert all(name.endswith(".jsonl.gz") for name in data_files(out))
    downloads = sum(j["downloads_completed"] for j in (await emu.jobs())["jobs"])

    config.write_text(config.read_text().replace('"gzip"', '"zstd"'))
    code, _, err = await run_cli("run", "--once", "--config", str(config))
    assert code == 0, err
    assert sum(j["downloads_completed"] for j in (await emu.jobs())["jobs"]) == downloads
    assert by_date(out) == first
    assert len(manifests(out)) == 3
    assert "exports_missing_from_store" not in err
    newest = max(first)
    # A one-off export into the output adds no .zst file beside a window's .gz one.
    code, _, err = await run_cli(
        "export", "--config", str(config), "--workspace", "acme", "--type", "page",
        "--from", newest[:10], "--to", newest[:10],
    )  # fmt: skip
    assert code == 2, err
    assert "never replaces a job's window file" in err
    assert len(manifests(out)) == 3

    code, _, err = await run_cli(
        "reexport", "--config", str(config), "--job", "d",
        "--from", newest[:10], "--to", newest[:10],
    )  # fmt: skip
    assert code == 0, err
    after = by_date(out)
    assert sorted(after) == sorted(first)
    assert len(manifests(out)) == 3
    assert after[newest]["compression"] == "zstd"
    assert after[newest]["revision"] == 2
    names = data_files(out)
    assert len(names) == 3, names
    assert sum(name.endswith(".jsonl.zst") for name in names) == 1, names
    code, report, err = await run_cli("verify", "--config", str(config))
    assert code == 0, report.decode() + err


async def test_a_new_path_template_exports_the_catch_up_again_and_deletes_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """output.path changed: the catch-up's done windows are not at their new keys, so
    they are exported again there. Their old files are left where they were (a loader
    was told of them, and not of a move): the operator moves or deletes them."""
    emu = await emulator(records_per_day=40)
    config = write_config(tmp_path, emu, JOBS)
    out = tmp_path / "exports"
    code, _, err = await run_cli("run", "--once", "--config", str(config))
    assert code == 0, err
    old = sorted(str(p.relative_to(out)) for p in out.glob("workspace=*/**/*.gz"))
    assert len(old) == 3
    moved = '[output]\npath = "{workspace}/{type}/{from:%Y-%m-%d}"\n'
    config.write_text(config.read_text().replace("[http]", moved + "[http]", 1))
    code, _, err = await run_cli("run", "--once", "--config", str(config))
    assert code == 0, err
    assert "exports_missing_from_store" in err
    assert len(list(out.glob("acme/page/*.gz.manifest.json"))) == 3
    assert sorted(str(p.relative_to(out)) for p in out.glob("workspace=*/**/*.gz")) == old
