"""Hooks (issue 36): every committed file told, durably, at least once, in order.

Against the emulator and real receivers on loopback: an aiohttp webhook receiver
that fails, times out, throttles and then accepts; command hooks that are real
programs; the daemon killed with deliveries pending.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import stat
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from acexport.config import load_settings
from acexport.daemon import Daemon
from acexport.hooks import woken_within
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, run_cli, run_once_at, write_config
from tests.ports import free_port

WINDOWS = {"types": ["page"], "window": "1d", "catch_up": "3d", "lag": "0s"}


class Receiver:
    """A webhook receiver: answers each POST with the next planned answer (then 200)."""

    def __init__(self, answers: list[Callable[[], web.StreamResponse]] | None = None) -> None:
        self.answers = list(answers or [])
        self.received: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        self.url = ""
        self.base = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.answers:
            answer = self.answers.pop(0)()
            if isinstance(answer, _Hang):
                await asyncio.sleep(answer.seconds)
                return web.Response(status=200)
            return answer
        self.received.append((json.loads(body), dict(request.headers), body))
        return web.Response(status=204)

    def ids(self) -> list[str]:
        return [event["id"] for event, _, _ in self.received]


class _Hang(web.Response):
    def __init__(self, seconds: float) -> None:
        super().__init__(status=200)
        self.seconds = seconds


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post("/events", receiver.handle)
    app.router.add_post("/api/v1/lineage", receiver.handle)  # an OpenLineage collector
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        receiver.url = f"{receiver.base}/events"
        yield receiver
    finally:
        await runner.cleanup()


def hook(name: str, **fields: object) -> str:
    lines = [f'name = "{name}"'] + [f"{k} = {json.dumps(v)}" for k, v in fields.items()]
    return "\n[[hooks]]\n" + "\n".join(lines) + "\n"


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def loader(
    tmp_path: Path, *, fails_while: Path | None = None, hangs_while: Path | None = None
) -> Path:
    """A loader command that appends each event to seen.jsonl: exit 1 while
    ``fails_while`` exists, two minutes of work while ``hangs_while`` does."""

    def exists(flag: Path | None) -> str:
        return "False" if flag is None else f"os.path.exists({str(flag)!r})"

    return script(
        tmp_path / "load.py",
        f"""
        import os, sys, time
        event = sys.stdin.read()
        if {exists(fails_while)}:
            sys.exit(1)
        if {exists(hangs_while)}:
            time.sleep(120)
        open({str(tmp_path / "seen.jsonl")!r}, "a").write(event + "\\n")
        """,
    )


def configure(tmp_path: Path, emu: Any, jobs_and_hooks: str, grace: str = "6s") -> Path:
    """A config of the jobs and hooks; run --once tells the hooks within ``grace``."""
    config = write_config(tmp_path, emu, jobs_and_hooks)
    config.write_text(config.read_text().replace('stop_grace = "2s"', f'stop_grace = "{grace}"'))
    return config


async def run_once(config: Path) -> bool:
    async with Daemon(load_settings(config), config) as daemon:
        return await daemon.run_once()


@pytest.mark.slow
async def test_a_webhook_gets_every_window_once_signed_after_failures_and_throttling(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """500, a timeout, 429 with Retry-After, then 2xx: each committed window is POSTed
    until it is accepted, with its stable id and an HMAC-SHA256 signature of the body."""
    emu = await emulator(processing_s=0.05)
    (tmp_path / "hook-secret").write_text("s3cret-value\n")
    receiver = Receiver(
        [
            lambda: web.Response(status=500, text="down"),
            lambda: _Hang(3),
            lambda: web.Response(status=429, headers={"Retry-After": "1"}),
        ]
    )
    async with receiving(receiver):
        loader = hook("loader", url=receiver.url, secret_file="hook-secret", timeout="1s")
        config = configure(tmp_path, emu, job("daily", "acme", **WINDOWS) + loader)
        assert await run_once(config)
    files = manifests(tmp_path / "exports")
    assert len(files) == 3
    assert len(receiver.received) == 3
    assert len(set(receiver.ids())) == 3
    for event, headers, body in receiver.received:
        expected = hmac.new(b"s3cret-value", body, hashlib.sha256).hexdigest()
        assert headers["X-Acexport-Signature"] == f"sha256={expected}"
        assert headers["X-Acexport-Event"] == event["id"]
        assert event["event"] == "committed"
        assert event["job"] == "daily"
        assert event["mode"] == "windows"
        assert event["revision"] == 1
        assert Path(event["url"]).is_file()
        assert Path(event["manifest"]).is_file()
        manifest = json.loads(Path(event["manifest"]).read_text())
        assert (event["file_sha256"], event["records"]) == (
            manifest["file_sha256"],
            manifest["records"],
        )
        assert event["fromDate"] == manifest["fromDate"]
        assert event["format"] == manifest["format"] == "ndjson"
    # Commit order: the windows in the order their files were committed.
    committed = [event["committedAt"] for event, _, _ in receiver.received]
    assert committed == sorted(committed)


async def test_a_command_hook_gets_the_event_on_stdin_and_is_retried_until_it_exits_0(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A command that exits 1 the first time, then 0; its variables name the file; the
    token's variable is not in its environment; filters leave other hooks out."""
    emu = await emulator(processing_s=0.05)
    seen = tmp_path / "seen.jsonl"
    program = script(
        tmp_path / "load.py",
        f"""
        import json, os, sys
        event = json.load(sys.stdin)
        first = not os.path.exists({str(tmp_path / "tried")!r})
        open({str(tmp_path / "tried")!r}, "a").close()
        if first:
            print("the warehouse is busy")
            sys.exit(1)
        names = [n for n in os.environ if n.startswith("ACEXPORT_")]
        row = {{"event": event, "env": {{n: os.environ[n] for n in names}},
               "token": os.environ.get("ACME_TOKEN")}}
        with open({str(seen)!r}, "a") as out:
            out.write(json.dumps(row) + "\\n")
        """,
    )
    others = tmp_path / "others.jsonl"
    elsewhere = script(
        tmp_path / "other.py", f"import sys; open({str(others)!r}, 'a').write(sys.stdin.read())\n"
    )
    hooks = (
        hook("load", command=[str(program)], jobs=["daily"])
        + hook("only-other-job", command=[str(elsewhere)], jobs=["other"])
        + hook("only-snapshots", command=[str(elsewhere)], on=["snapshot"])
    )
    config = configure(
        tmp_path,
        emu,
        job("daily", "acme", **WINDOWS)
        + job("other", "acme", types=["event"], window="1d", catch_up="1d", lag="0s")
        + hooks,
    )
    config.write_text(
        config.read_text().replace('token = "acme-token"', 'token_env = "ACME_TOKEN"')
    )
    os.environ["ACME_TOKEN"] = "acme-token"
    try:
        assert await run_once(config)
    finally:
        del os.environ["ACME_TOKEN"]
    rows = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(rows) == 3  # the daily job's three windows, the first after a retry
    for row in rows:
        event, env = row["event"], row["env"]
        assert row["token"] is None  # the token's variable is not the hook's business
        assert env["ACEXPORT_EVENT_ID"] == event["id"]
        assert env["ACEXPORT_FILE"] == event["url"]
        assert Path(env["ACEXPORT_FILE"]).is_file()
        assert env["ACEXPORT_MANIFEST"] == event["url"] + ".manifest.json"
        assert (env["ACEXPORT_JOB"], env["ACEXPORT_TYPE"]) == ("daily", "page")
        assert env["ACEXPORT_FROM"] == event["fromDate"]
        assert env["ACEXPORT_REVISION"] == "1"
    other_events = [json.loads(line) for line in others.read_text().splitlines()]
    assert [e["job"] for e in other_events] == ["other"]  # one window of the other job


async def test_deliveries_pending_at_a_kill_are_delivered_after_the_restart_with_the_same_ids(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """SIGKILL while the receiver refuses: the events wait in the ledger; the next run
    delivers each of them once accepted, with the id it was first tried with."""
    emu = await emulator(processing_s=0.05)
    refusing = Receiver([lambda: web.Response(status=503)] * 1000)
    async with receiving(refusing):
        config = configure(
            tmp_path, emu, job("daily", "acme", **WINDOWS) + hook("loader", url=refusing.url)
        )
        daemon = await DaemonProcess.start(config)
        await daemon.wait_for(lambda: len(daemon.events("hook_retried")) >= 3)
        tried = {line["id"] for line in daemon.events("hook_retried")}
        daemon.send(signal.SIGKILL)
        await daemon.wait()
    accepting = Receiver()
    async with receiving(accepting):
        text = config.read_text().replace(refusing.url, accepting.url)
        config.write_text(text)
        assert await run_once(config)
    assert len(manifests(tmp_path / "exports")) == 3
    assert sorted(accepting.ids()) == sorted(set(accepting.ids()))
    assert len(accepting.ids()) == 3
    assert tried <= set(accepting.ids())


async def test_a_refused_event_fails_at_once_and_status_metrics_and_healthz_say_so(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A 4xx other than 408/429 is final: the event fails with the answer kept;
    ``status`` shows the hook's failures and exits 1, /metrics counts them, /healthz
    answers 200 "degraded" (a restart would not help)."""
    emu = await emulator(processing_s=0.05)
    receiver = Receiver([lambda: web.Response(status=422, text="unknown job")] * 10)
    async with receiving(receiver):
        config = configure(
            tmp_path, emu, job("daily", "acme", **WINDOWS) + hook("loader", url=receiver.url)
        )
        async with Daemon(load_settings(config), config) as daemon:
            assert await daemon.run_once()
            await daemon.hooks.refresh(force=True)
            metrics = daemon.metrics.render().decode()
            code, health = daemon.health.report()
            page = await daemon.status_page()
    assert receiver.received == []
    assert 'acexport_hook_deliveries_total{hook="loader",outcome="failed"} 3.0' in metrics
    assert 'acexport_hook_pending{hook="loader"} 0.0' in metrics
    assert code == 200
    assert health["status"] == "degraded"
    assert "unknown job" in health["problems"]["hook loader"]
    assert "/healthz says degraded:" in page
    assert "<tr><td>loader</td><td>0</td><td></td><td>0</td><td>3</td>" in page
    code, stdout, _ = await run_cli("status", "--config", str(config))
    text = stdout.decode()
    assert code == 1, text
    assert "hook loader (url): 0 pending; 0 delivered, 3 failed" in text
    assert "HTTP 422: unknown job" in text
    code, stdout, _ = await run_cli("status", "--json", "--config", str(config))
    (report,) = json.loads(stdout)["hooks"]
    assert (report["failed"], report["pending"], report["kind"]) == (3, 0, "url")


async def test_an_event_older_than_max_age_fails_and_nothing_blocks_the_exports(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A receiver that never answers 2xx: the exports finish on time; each event is
    retried until max_age, then failed."""
    emu = await emulator(processing_s=0.05)
    receiver = Receiver([lambda: web.Response(status=503)] * 1000)
    async with receiving(receiver):
        config = configure(
            tmp_path,
            emu,
            job("daily", "acme", **WINDOWS) + hook("loader", url=receiver.url, max_age="1s"),
        )
        async with Daemon(load_settings(config), config) as daemon:
            assert await daemon.run_once()
            backlogs = await daemon.hooks.refresh(force=True)
    assert len(manifests(tmp_path / "exports")) == 3
    assert backlogs["loader"].failed == 3
    assert backlogs["loader"].pending == 0
    assert "max_age" in (backlogs["loader"].last_error or "")


@pytest.mark.slow
def test_check_config_lists_hooks_and_refuses_a_missing_secret_or_program(
    tmp_path: Path,
) -> None:
    import subprocess

    def check(hooks: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "acexport.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
            '[workspaces.acme]\ntoken = "acme-token"\n'
            '[[jobs]]\nname = "daily"\nworkspace = "acme"\ntypes = ["page"]\n' + hooks
        )
        config.chmod(0o600)
        return subprocess.run(
            [sys.executable, "-m", "acexport", "check-config", "--config", str(config)],
            capture_output=True,
            text=True,
            env={**os.environ, "ACEXPORT_CONFIG": ""},
            check=False,
        )

    done = check(hook("loader", url="https://hooks.example.com/in", jobs=["daily"], on=["window"]))
    assert done.returncode == 0, done.stderr
    assert "hook loader: url https://hooks.example.com/in" in done.stdout
    assert "on window files of daily; retried for 1d" in done.stdout
    done = check(hook("loader", url="https://hooks.example.com/in", secret_file="missing"))
    assert done.returncode == 78
    assert "hook 'loader': cannot read secret_file" in done.stderr
    done = check(hook("load", command=["./not-there.sh"]))
    assert done.returncode == 78
    assert "is not an executable program" in done.stderr
    done = check(hook("load", url="http://hooks.example.com/in"))
    assert done.returncode == 78
    assert "not https" in done.stderr
    done = check(hook("load", url="https://hooks.example.com/in", jobs=["nightly"]))
    assert "unknown job 'nightly'" in done.stderr
    done = check(hook("load", url="https://x.example.com", command=["true"]))
    assert "exactly one of command, url or openlineage" in done.stderr


async def test_an_event_is_committed_with_its_row_and_each_revision_has_its_own_id(
    tmp_path: Path,
) -> None:
    """The ledger alone: a staged event is not due until the statement that marks its
    row done commits it (its body from that row); staging twice changes nothing; a
    revision kept unchanged is unstaged; revision 2 is another event."""
    from datetime import UTC, datetime, timedelta

    from acexport.ledger import Ledger, event_id
    from acexport.windows import ExportWindow

    ledger = await Ledger.open(tmp_path / "state.sqlite3")
    try:
        start = datetime(2026, 11, 1, tzinfo=UTC)
        window = ExportWindow(start, start + timedelta(days=1))
        (row,) = await ledger.plan("daily", "acme", ["page"], [window])
        await ledger.stage_events([(row, ["a", "b"])])
        await ledger.stage_events([(row, ["a", "b"])])  # a retried export
        assert await ledger.next_delivery("a") is None  # staged, not committed
        done = {"records": 7, "payload_bytes": 9, "payload_sha256": "p", "requests": 1}
        await ledger.mark_done(
            row.id, destination="/out/x.jsonl", file_bytes=5, file_sha256="f" * 64,
            created_date=None, **done,
        )  # fmt: skip
        head = await ledger.next_delivery("a")
        assert head is not None
        body = json.loads(head.body)
        assert body["id"] == event_id(row)
        assert (body["revision"], body["records"], body["url"]) == (1, 7, "/out/x.jsonl")
        assert (body["fromDate"], body["mode"]) == ("2026-11-01T00:00:00.000Z", "windows")
        await ledger.delivered("a", head.seq)
        assert await ledger.next_delivery("a") is None
        assert (await ledger.next_delivery("b")) is not None  # each hook its own queue
        # Restated: revision 2 is another event; a kept (unchanged) one is unstaged.
        await ledger._rows("UPDATE exports SET state = 'queued', revision = 2 WHERE id = ?", row.id)
        (again,) = await ledger.all_rows()
        assert event_id(again) != event_id(row)
        await ledger.stage_events([(again, ["a"])])
        await ledger.unstage_events(again.id, 2)
        await ledger.mark_done(
            row.id, destination="/out/x.jsonl", file_bytes=5, file_sha256="f" * 64,
            created_date=None, **done,
        )  # fmt: skip
        assert await ledger.next_delivery("a") is None
        backlog = (await ledger.hook_backlogs(0))["a"]
        assert (backlog.pending, backlog.delivered) == (0, 1)
    finally:
        await ledger.close()


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "hooks"


def test_the_docs_show_the_hook_recipes_as_they_are() -> None:
    page = (EXAMPLES.parent.parent / "docs" / "hooks.md").read_text()
    for recipe in sorted(EXAMPLES.glob("*.py")):
        lines = recipe.read_text().rstrip("\n").splitlines()
        shown = "\n".join(f"    {line}" if line else "" for line in lines)
        assert shown in page, f"docs/hooks.md does not show {recipe.name} as it is"


async def test_the_readme_recipes_load_duckdb_tell_airflow_and_dagster_and_verify_webhooks(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """The recipes as written: DuckDB holds each row once though every event came
    twice; Airflow and Dagster got an event per window; the receiver checked every
    signature."""
    import duckdb

    emu = await emulator(processing_s=0.05)
    stack: dict[str, list[tuple[str, dict[str, str], Any]]] = {"airflow": [], "dagster": []}

    async def airflow(request: web.Request) -> web.Response:
        stack["airflow"].append((request.path, dict(request.headers), await request.json()))
        return web.json_response({"id": 1}, status=200)

    async def dagster(request: web.Request) -> web.Response:
        stack["dagster"].append((request.path, dict(request.headers), await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/v2/assets/events", airflow)
    app.router.add_post("/report_asset_materialization/{key:.*}", dagster)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    stack_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    (tmp_path / "hook-secret").write_text("a-shared-secret\n")
    port = free_port()
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / "webhook_receiver.py"), str(port),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "HOOK_SECRET_FILE": str(tmp_path / "hook-secret")},
    )  # fmt: skip
    warehouse = tmp_path / "warehouse.duckdb"
    python = sys.executable
    load = [python, str(EXAMPLES / "load_into_duckdb.py"), str(warehouse)]
    airflow_hook = [python, str(EXAMPLES / "airflow_asset_event.py"), stack_url, "7"]
    dagster_hook = [python, str(EXAMPLES / "dagster_materialization.py"), stack_url, "acme/page"]
    hooks = (
        hook("duckdb", command=load)
        + hook("duckdb-again", command=load)  # every event twice: at least once
        + hook("airflow", command=airflow_hook)
        + hook("dagster", command=dagster_hook)
        + hook("webhook", url=f"http://127.0.0.1:{port}/", secret_file="hook-secret")
    )
    os.environ["AIRFLOW_TOKEN"] = "airflow-token"
    try:
        await _wait_listening(port)
        config = configure(tmp_path, emu, job("daily", "acme", **WINDOWS) + hooks)
        assert await run_once(config)
    finally:
        del os.environ["AIRFLOW_TOKEN"]
        receiver.terminate()
        printed, _ = await receiver.communicate()
        await runner.cleanup()
    files = manifests(tmp_path / "exports")
    assert len(files) == 3
    with duckdb.connect(str(warehouse)) as db:
        (rows,) = db.execute("SELECT count(*) FROM page").fetchall()[0]
        windows = db.execute("SELECT count(DISTINCT _window) FROM page").fetchall()[0][0]
    assert rows == sum(m["records"] for m in files)  # each row once: the twin skipped
    assert windows == 3
    assert len(stack["airflow"]) == 3
    for _, headers, body in stack["airflow"]:
        assert headers["Authorization"] == "Bearer airflow-token"
        assert body["asset_id"] == 7
        assert body["extra"]["acexport"]["type"] == "page"
    paths = {path for path, _, _ in stack["dagster"]}
    assert paths == {"/report_asset_materialization/acme/page"}
    partitions = sorted(body["partition"] for _, _, body in stack["dagster"])
    assert partitions == sorted(m["fromDate"][:10] for m in files)
    lines = printed.decode().splitlines()
    assert len(lines) == 3  # every signature checked: a bad one would be a 401, failed
    assert all(line.split()[1] == "page" for line in lines)


async def _wait_listening(port: int) -> None:
    async with asyncio.timeout(10):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


async def test_an_openlineage_hook_posts_a_complete_run_event_per_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Built by the openlineage-python client: the output dataset named by the output
    root and the file's path, rows and bytes as output statistics, the revision as the
    dataset version, the event's id as the run's."""
    emu = await emulator(processing_s=0.05)
    receiver = Receiver()
    async with receiving(receiver):
        config = configure(
            tmp_path,
            emu,
            job("daily", "acme", **WINDOWS) + hook("lineage", openlineage=receiver.base),
        )
        assert await run_once(config)
    files = {m["file_sha256"]: m for m in manifests(tmp_path / "exports")}
    assert len(receiver.received) == 3
    root = str(tmp_path / "exports")
    names = set()
    for event, _, _ in receiver.received:
        assert event["eventType"] == "COMPLETE"
        assert event["schemaURL"].endswith("OpenLineage.json#/$defs/RunEvent")
        assert event["job"] == {"namespace": "acexport", "name": "daily.page", "facets": {}}
        (output,) = event["outputs"]
        assert output["namespace"] == root
        assert (tmp_path / "exports" / output["name"]).is_file()
        names.add(output["name"])
        stats = output["outputFacets"]["outputStatistics"]
        assert stats["rowCount"] in {m["records"] for m in files.values()}
        assert output["facets"]["version"]["datasetVersion"] == "1"
    assert len(names) == 3
    assert len({event["run"]["runId"] for event, _, _ in receiver.received}) == 3


@pytest.mark.slow
async def test_a_dead_receiver_delays_no_export_and_its_events_wait_in_the_ledger(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Every attempt hangs until the hook's timeout: all 48 windows are committed as
    fast as with no hook, run --once leaves after the stop grace, and the events wait,
    pending, for the next run."""
    emu = await emulator(processing_s=0.05)
    receiver = Receiver([lambda: _Hang(5)] * 1000)
    hourly = {"types": ["page"], "window": "1h", "catch_up": "48h", "lag": "0s"}
    async with receiving(receiver):
        config = configure(
            tmp_path,
            emu,
            job("hourly", "acme", **hourly) + hook("slow", url=receiver.url, timeout="2s"),
            grace="1s",
        )
        started = asyncio.get_running_loop().time()
        async with Daemon(load_settings(config), config) as daemon:
            assert await daemon.run_once()
            elapsed = asyncio.get_running_loop().time() - started
            backlogs = await daemon.hooks.refresh(force=True)
    assert len(manifests(tmp_path / "exports")) == 48
    assert elapsed < 10
    assert backlogs["slow"].pending == 48
    assert receiver.received == []


async def test_a_restated_window_is_told_again_as_revision_2_with_its_own_id(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """AC's data of a window changed: its replacement file is an event of revision 2,
    a new id, naming the new file's hash (a restatement whose file is kept as it was
    is unstaged: tests/test_hooks.py's ledger test)."""
    import time

    from tests.conftest import FakeClock

    clock = FakeClock(time.time())
    emu = await emulator(clock=clock, records=6, restate_rate=1.0)
    receiver = Receiver()
    async with receiving(receiver):
        jobs = job("d", "acme", types=["page", "event"], catch_up="2d", lag="0s", restate="2d")
        config = configure(tmp_path, emu, jobs + hook("loader", url=receiver.url))

        async def run_once() -> None:
            await run_once_at(config, clock)

        await run_once()
        first = {(e["type"], e["fromDate"]): e for e, _, _ in receiver.received}
        assert len(first) == 4
        clock.advance(3 * 86400)
        await run_once()
    later = [event for event, _, _ in receiver.received[4:]]
    again = [e for e in later if (e["type"], e["fromDate"]) in first]  # not the new days'
    restated = {(e["type"], e["fromDate"]): e for e in again}
    assert len(restated) == len(again)  # each told once
    assert {key[0] for key in restated} >= {"page"}  # page rows changed (restate_rate=1)
    for key, event in restated.items():
        # Only new files are told: each names a revision-2 file, with a new id.
        assert event["revision"] == 2
        assert event["id"] != first[key]["id"]
        manifest = json.loads(Path(event["manifest"]).read_text())
        assert manifest["revision"] == 2
        assert manifest["previous_sha256"] == first[key]["file_sha256"]
        assert event["file_sha256"] == manifest["file_sha256"] != first[key]["file_sha256"]


def _command_hook(command: list[str], timeout: str = "10s") -> Any:
    from acexport.config.hooks import HookSettings

    return HookSettings.model_validate({"name": "c", "command": command, "timeout": timeout})


async def test_a_chatty_command_keeps_only_its_outputs_tail_in_memory(tmp_path: Path) -> None:
    """A loader that prints 50 MB and fails: its last words are the error, and the
    daemon held no more of its output than it keeps (it read it all into memory)."""
    import tracemalloc

    from acexport.hooks.senders import OUTPUT_KEPT, run_command

    chatty = script(
        tmp_path / "chatty.py",
        """
        import sys
        sys.stdin.read()
        for _ in range(50):
            sys.stdout.write("row " * 262144)
        sys.stdout.write("the last words")
        sys.exit(3)
        """,
    )
    tracemalloc.start()
    try:
        attempt = await run_command(_command_hook([str(chatty)]), b"{}", {}, frozenset())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not attempt.delivered
    assert attempt.detail.startswith("exit 3: …")
    assert attempt.detail.endswith("row the last words")
    assert len(attempt.detail) < OUTPUT_KEPT
    assert peak < 4 << 20, peak


async def test_a_child_holding_a_commands_output_is_not_waited_for_beyond_the_timeout(
    tmp_path: Path,
) -> None:
    """Exit 0 is delivered even when a child it started still holds the output open:
    that child is stopped at the hook's timeout, not waited for for ever."""
    from acexport.hooks.senders import run_command

    forking = script(
        tmp_path / "forking.py",
        """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("loaded")
        """,
    )
    started = asyncio.get_running_loop().time()
    attempt = await run_command(_command_hook([str(forking)], "1s"), b"{}", {}, frozenset())
    assert attempt.delivered
    assert asyncio.get_running_loop().time() - started < 10
    hanging = script(tmp_path / "hanging.py", "import time\ntime.sleep(60)\n")
    attempt = await run_command(_command_hook([str(hanging)], "300ms"), b"{}", {}, frozenset())
    assert not attempt.delivered
    assert attempt.detail == "timed out after 0.3s"


async def test_an_event_names_its_files_format_after_the_config_changed_it(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Parquet files committed while a receiver was down are told as parquet after the
    output switched to JSON Lines (the event said the config's format at sending)."""
    pytest.importorskip("pyarrow")
    emu = await emulator(processing_s=0.05)
    seen = tmp_path / "seen.jsonl"
    down = tmp_path / "down"
    down.touch()
    program = loader(tmp_path, fails_while=down)
    jobs = job("daily", "acme", **WINDOWS) + hook("load", command=[str(program)])
    config = write_config(tmp_path, emu, jobs, extra='[output]\nformat = "parquet"\n')
    assert await run_once(config)
    down.unlink()
    config.write_text(config.read_text().replace('format = "parquet"', 'format = "ndjson"'))
    assert await run_once(config)
    events = [json.loads(line) for line in seen.read_text().splitlines()]
    assert len(events) == 3
    assert {(e["format"], Path(e["url"]).suffix) for e in events} == {("parquet", ".parquet")}


async def test_a_daemon_stopped_past_max_age_still_tries_its_events_once(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Committed while the loader failed, then the daemon stopped for two days: on its
    return the loader works, and it is told (each event was failed unsent before)."""
    import sqlite3

    from acexport.ledger.connection import ledger_path

    emu = await emulator(processing_s=0.05)
    seen = tmp_path / "seen.jsonl"
    broken = tmp_path / "broken"
    broken.touch()
    program = loader(tmp_path, fails_while=broken)
    jobs = job("daily", "acme", **WINDOWS) + hook("load", command=[str(program)], max_age="1h")
    config = write_config(tmp_path, emu, jobs)
    assert await run_once(config)
    two_days = 2 * 86400
    with sqlite3.connect(ledger_path(tmp_path / "state")) as db:
        db.execute("UPDATE hook_events SET committed_at = committed_at - ?", (two_days,))
        db.execute("UPDATE hook_deliveries SET committed_at = committed_at - ?, next_at = 0",
                   (two_days,))  # fmt: skip
    db.close()
    broken.unlink()
    async with Daemon(load_settings(config), config) as daemon:
        assert await daemon.run_once()
        backlogs = await daemon.hooks.refresh(force=True)
    assert len(seen.read_text().split()) == 3
    assert (backlogs["load"].delivered, backlogs["load"].failed) == (3, 0)


async def test_a_command_starting_as_the_daemon_stops_is_killed_and_none_starts_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker thread inside Popen when the daemon kills its commands: the kill waits
    for the start and kills it, and no command starts after (one that did told its
    event after the stop, and the next start told it again)."""
    import subprocess
    import threading

    from acexport.config.hooks import HookSettings
    from acexport.hooks import senders

    told = tmp_path / "told"
    program = script(
        tmp_path / "tell.py",
        f"""
        import sys, time
        event = sys.stdin.read()
        time.sleep(1)
        open({str(told)!r}, "w").write(event)
        """,
    )
    spawning = threading.Event()
    real_popen = subprocess.Popen

    def slow_popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        spawning.set()
        time.sleep(0.3)  # widens the window the kill must not slip through
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(senders.subprocess, "Popen", slow_popen)
    hook = HookSettings(name="load", command=[str(program)], timeout="10s")
    running = senders.RunningCommands()
    sending = asyncio.create_task(senders.run_command(hook, b"{}", {}, frozenset(), running))
    assert await asyncio.to_thread(spawning.wait, 5)
    running.kill_all()
    attempt = await asyncio.wait_for(sending, 10)
    assert not attempt.delivered
    after = await senders.run_command(hook, b"{}", {}, frozenset(), running)
    assert (after.delivered, after.detail) == (False, "not run: the daemon is stopping")
    assert not told.exists()


async def test_a_stopping_daemon_kills_a_running_command_and_tells_its_event_later(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A loader that takes minutes: the daemon leaves within its stop grace, not the
    hook's timeout (it waited for the command), and the next run tells the event
    again, under the same id."""
    import sqlite3

    from acexport.ledger.connection import ledger_path

    emu = await emulator(processing_s=0.05)
    seen = tmp_path / "seen.jsonl"
    slow = tmp_path / "slow"
    slow.touch()
    program = loader(tmp_path, hangs_while=slow)
    one_day = {**WINDOWS, "catch_up": "1d"}
    jobs = job("daily", "acme", **one_day) + hook("load", command=[str(program)], timeout="5m")
    config = configure(tmp_path, emu, jobs, grace="300ms")
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(20) == 0  # it waited 120 s for the command
    assert not seen.exists()
    with sqlite3.connect(ledger_path(tmp_path / "state")) as db:
        (staged,) = db.execute("SELECT event_id FROM hook_events").fetchone()
    db.close()
    slow.unlink()
    assert await run_once(config)
    (told,) = [json.loads(line) for line in seen.read_text().splitlines()]
    assert told["id"] == staged


async def test_a_hooks_stop_is_never_lost_when_a_wake_comes_with_it() -> None:
    """A hook's task sleeps until woken; an export's wake and the daemon's stop in the
    same turn left it running (Python 3.11's wait_for returned the wake, swallowing
    the cancellation), so the daemon's exit waited for it for ever."""
    wake = asyncio.Event()
    sleeping = asyncio.create_task(woken_within(wake, 30))
    await asyncio.sleep(0)  # asleep now
    wake.set()
    sleeping.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(asyncio.CancelledError):
            await sleeping
    # Woken alone, it returns at once and is ready to sleep again.
    wake.set()
    async with asyncio.timeout(5):
        await woken_within(wake, 30)
    assert not wake.is_set()
