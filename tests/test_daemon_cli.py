"""`check-config` and `status` as an operator uses them."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, run_cli, write_config


def acexport(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acexport", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_rejects_a_bad_job_naming_it(tmp_path: Path) -> None:
    """A bad cron exits 78 naming the job and the field."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[workspaces.acme]\ntoken_env = "HOME"\n'
        '[[jobs]]\nname = "nightly"\nworkspace = "acme"\nschedule = "99 * * * *"\n'
        '[[jobs]]\nname = "other"\nworkspace = "nobody"\n'
    )
    result = acexport("check-config", "--config", str(config))
    assert result.returncode == 78
    assert "jobs[0] (nightly).schedule" in result.stderr
    assert "the minute field '99'" in result.stderr  # which of the five fields
    result = acexport("check-config", "--config", str(config).replace("c.toml", "none.toml"))
    assert result.returncode == 78


def test_check_config_shows_next_looks_and_due_windows(tmp_path: Path) -> None:
    """A valid config prints each job's next looks and the windows it would export now."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\n'
        '[workspaces.acme]\ntoken_env = "HOME"\ntimezone = "Europe/Berlin"\n'
        '[[jobs]]\nname = "nightly"\nworkspace = "acme"\ncatch_up = "3d"\n'
    )  # every type, as a newcomer's first job
    result = acexport("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "job nightly" in result.stdout
    assert result.stdout.count("+01:00") + result.stdout.count("+02:00") >= 3
    # Three days back, less the 2 h lag: three whole Berlin days, or two in the two
    # hours after Berlin midnight. They are listed, contiguous, oldest first.
    listed = [
        date.fromisoformat(line.strip())
        for line in result.stdout.splitlines()
        if re.fullmatch(r"    \d{4}-\d\d-\d\d", line)
    ]
    assert len(listed) in (2, 3)
    assert all((b - a).days == 1 for a, b in itertools.pairwise(listed))
    count = len(listed)
    assert "windows of 1d (lag 2h, catch-up 3d)" in result.stdout  # durations as written
    assert f"  state dir: {tmp_path}/state" in result.stdout  # what is in force
    # One AC request per type for the consecutive days (issue 26), a tick each at least.
    assert (f"would export now {2 * count} export(s) in {count} window(s), 2 AC request(s) "
            "(at AC's 5-minute tick, 10m or more)") in result.stdout  # fmt: skip
    # Which type goes which way, and why (issue 22).
    assert "page        windows: a time series, AC filters it by eventDate" in result.stdout
    assert "individual  snapshot: an entity table AC filters by createDate" in result.stdout
    assert "snapshots: the newest 7 kept of each type" in result.stdout
    assert "  keep " not in result.stdout
    assert "once more" not in result.stdout

    # What keep and restate will do, with the edge keep deletes before.
    config.write_text(config.read_text() + 'keep = "400d"\nrestate = "3d"\n')
    result = acexport("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "  each window exported once more when it is 3d old" in result.stdout
    assert re.search(r"  keep 400d: files of windows that ended before \d{4}-\d\d-\d\d "
                     r"\d\d:\d\d are deleted at each look", result.stdout)  # fmt: skip

    config.write_text(config.read_text().replace('catch_up = "3d"', 'catch_up = "60d"')
                      .replace('timezone = "Europe/Berlin"', 'timezone = "Europe/Berlin"\n'
                               'retention = 1'))  # fmt: skip
    result = acexport("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "window(s) of the catch-up start before AC's retention (1 months" in result.stdout


@pytest.mark.slow
async def test_status_reports_done_and_failed_windows(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`status --json` shows per job what is done and what failed, with the reason."""
    emu = await emulator(tokens={"alpha": "alpha-token", "beta": "beta-token"}, records=5)
    jobs = job("a", "alpha", types=["page"], catch_up="2d", lag="0s") + job(
        "b", "beta", types=["page"], catch_up="1d", lag="0s"
    )
    config = write_config(tmp_path, emu, jobs, tokens={"alpha": "alpha-token", "beta": "bad-token"})
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 1
    status = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "status",
        "--config",
        str(config),
        "--json",
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await status.communicate()
    assert status.returncode == 1  # something failed: non-zero, for cron and Nagios
    report = json.loads(stdout)
    by_name = {j["name"]: j for j in report["jobs"]}
    assert by_name["a"]["done"] == 2
    assert by_name["a"]["last_exported"]
    assert by_name["a"]["horizon"] == {
        "done": 2, "missing": 0, "in_flight": 0, "retrying": 0, "failed": 0
    }  # fmt: skip
    assert by_name["b"]["done"] == 0
    (failed,) = by_name["b"]["failed"]
    assert "AuthError" in failed["reason"]
    assert "revoked AC token" in failed["reason"]  # AC answered the bad token with a 500 page
    assert (failed["failures"], failed["last_error"]) == (1, failed["reason"])
    assert by_name["b"]["horizon"]["failed"] == 1
    # Every time with its offset (issue 38 item 10); the label as the text report says it.
    start = datetime.fromisoformat(failed["start"])
    assert start.utcoffset() is not None
    assert failed["window"] == start.date().isoformat()
    assert datetime.fromisoformat(failed["end"]) - start == timedelta(days=1)
    assert b"bad-token" not in stdout
    assert report["daemon_pid"] is None

    # For people: one line per failure, no Python reprs, no "next look" without a daemon.
    code, out, _ = await run_cli("status", "--config", str(config))
    human = out.decode()
    assert code == 1
    lines = human.splitlines()
    assert lines[0].startswith("daemon: not running")
    assert any(line.startswith("  FAILED   page ") and "AuthError" in line for line in lines)
    assert "  catch-up horizon:     2 done" in lines
    assert "next look" not in human
    assert "<LedgerState" not in human
    assert "[{" not in human


def test_shipped_configs_are_valid() -> None:
    """config/acexport.example.toml and the demo config shipped in the package load."""
    from acexport.config import load_settings

    root = Path(__file__).resolve().parent.parent
    example = load_settings(root / "config" / "acexport.example.toml")
    assert [job.name for job in example.jobs] == ["nightly"]
    assert example.workspaces["acme"].token_file is not None
    from acexport.commands.demo import SHIPPED_CONFIG

    demo = load_settings(SHIPPED_CONFIG)
    assert all(ws.base_url == "http://127.0.0.1" for ws in demo.workspaces.values())
    covered = {t for job in demo.jobs for t in job.types}
    assert covered == {"event", "identity", "individual", "membership", "page", "segment"}


def _run_once_config(tmp_path: Path) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\noutput_dir = "{tmp_path}/exports"\n'
        'listen = ""\n[workspaces.acme]\ntoken_env = "HOME"\nbase_url = "http://127.0.0.1:9"\n'
    )
    return config


@pytest.mark.slow
def test_unusable_state_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A lock that cannot be opened, or a ledger from a newer acexport: one line, exit 1."""
    import sqlite3

    config = _run_once_config(tmp_path)
    (tmp_path / "state" / "acexport.lock").mkdir(parents=True)
    result = acexport("run", "--once", "--config", str(config))
    assert result.returncode == 1
    assert f"cannot open the lock file {tmp_path}/state/acexport.lock" in result.stderr
    assert "Traceback" not in result.stderr

    (tmp_path / "state" / "acexport.lock").rmdir()
    ledger = tmp_path / "state" / "state.sqlite3"
    with sqlite3.connect(ledger) as db:
        db.execute("PRAGMA user_version = 99")
    result = acexport("run", "--once", "--config", str(config))
    assert result.returncode == 1
    assert "schema version 99, newer than this acexport understands" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_offline_validates_without_the_secrets(tmp_path: Path) -> None:
    """Issue 25 item 8: a config whose token file exists only where the service runs
    (/run/credentials/...) failed check-config in CI and image builds; --offline checks
    everything else, and still refuses a bad job."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\n[workspaces.acme]\n'
        'token_file = "/run/credentials/acexport.service/acme"\n'
        '[[jobs]]\nname = "nightly"\nworkspace = "acme"\n'
    )
    online = acexport("check-config", "--config", str(config))
    assert online.returncode == 78
    assert "cannot read token_file /run/credentials/acexport.service/acme" in online.stderr
    offline = acexport("check-config", "--offline", "--config", str(config))
    assert offline.returncode == 0, offline.stderr
    assert "job nightly of acme" in offline.stdout
    assert "offline: token files and output credentials were not read" in offline.stdout
    config.write_text(config.read_text() + 'window = "7h"\n')
    assert acexport("check-config", "--offline", "--config", str(config)).returncode == 78
    # The shipped examples read their tokens from /run/...: offline, they pass (the
    # Kubernetes ConfigMaps' configs: tests/test_kubernetes.py; the demo's: test_operations).
    root = Path(__file__).resolve().parent.parent
    for example in ("config/acexport.example.toml", "deploy/compose/config.toml"):
        shipped = acexport("check-config", "--offline", "--config", str(root / example))
        assert shipped.returncode == 0, (example, shipped.stderr)


def test_queueing_a_backfill_for_a_running_daemon_reads_no_token(tmp_path: Path) -> None:
    """Issue 24 item 6: with a daemon holding the state directory, backfill only records
    the windows, yet it demanded every workspace's token (an unrelated one's missing
    file: exit 78). It reads none now; without a daemon the tokens are still needed."""
    from acexport.lock import take_lock

    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\noutput_dir = "{tmp_path}/out"\n'
        'listen = ""\n[workspaces.acme]\ntoken_env = "HOME"\nretention = 1200\n'
        '[workspaces.other]\ntoken_file = "/nonexistent/other-token"\n'
        '[[jobs]]\nname = "p"\nworkspace = "acme"\ntypes = ["page"]\n'
    )
    args = ("backfill", "--config", str(config), "--job", "p", "--from", "2022-01-01",
            "--to", "2022-01-03")  # fmt: skip
    alone = acexport(*args)
    assert alone.returncode == 78
    assert "/nonexistent/other-token" in alone.stderr
    with take_lock(tmp_path / "state"):
        queued = acexport(*args)
    assert queued.returncode == 0, queued.stderr
    assert "queued 3 exports of job p; the running daemon" in queued.stdout


def test_a_listen_port_in_use_is_a_temporary_failure_not_a_config_error(tmp_path: Path) -> None:
    """Issue 25 item 5: the port held by another process (the previous instance still
    stopping) exited 78, which systemd's RestartPreventExitStatus=78 never restarts.
    It is EX_TEMPFAIL (75), restarted; an address that cannot be bound stays 78."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = _run_once_config(tmp_path)
        config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
        result = acexport("run", "--once", "--config", str(config))
    assert result.returncode == 75, result.stderr
    assert f"daemon.listen: 127.0.0.1:{port} is in use by another process" in result.stderr
    assert "Traceback" not in result.stderr

    config.write_text(config.read_text().replace(f"127.0.0.1:{port}", "192.0.2.1:9464"))
    result = acexport("run", "--once", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert "daemon.listen: cannot listen on 192.0.2.1:9464" in result.stderr


def test_allocator_settings_yield_to_the_operators_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """acexport tunes glibc's malloc, but a MALLOC_* variable the operator set wins."""
    import ctypes

    from acexport import cli

    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda _name: FakeLibc())
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    cli.tune_malloc()
    assert calls == [(-3, 4 << 20), (-1, 64 << 20)]  # no M_ARENA_MAX (-8)


@pytest.mark.slow
async def test_ctrl_c_during_a_backfill_exits_130_and_says_what_stays_queued(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 items 5 and 11: Ctrl-C stops a foreground backfill with exit 130 and a
    line saying how many of its exports stay queued (for `acexport run` or the next
    backfill); they are in the ledger, none lost."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5, processing_s=600)
    config = write_config(tmp_path, emu, job("a", "alpha", types=["page"], catch_up="0s"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "acexport", "backfill", "--config", str(config), "--job", "a",
        "--from", "2022-01-01", "--to", "2022-01-04",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    await emu.wait_for(lambda report: bool(report["jobs"]))
    process.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(process.communicate(), 20)
    # Ended by SIGINT itself after the clean stop (issue 38 item 5): a shell says 130.
    assert process.returncode == -signal.SIGINT, err
    assert "interrupted: 4 of this backfill's 4 exports stay queued" in err.decode()
    from acexport.ledger import read_rows

    rows = await read_rows(tmp_path / "state")
    assert len(rows) == 4
    assert {str(r.state) for r in rows} <= {"queued", "submitted"}  # resumed where they were


@pytest.mark.slow
async def test_backfill_dry_run_says_what_it_would_queue_and_queues_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 item 5: --dry-run counts what would be asked for, what is done already
    and what lies before AC's retention, estimates AC's time, and writes nothing."""
    from acexport.ledger import read_rows

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=2)
    config = write_config(tmp_path, emu, job("a", "alpha", types=["page"], catch_up="0s"))
    code, _, err = await run_cli(
        "backfill", "--config", str(config), "--job", "a", "--from", "2022-01-01",
        "--to", "2022-01-02",
    )  # fmt: skip
    assert code == 0, err
    before = await read_rows(tmp_path / "state")
    code, out, err = await run_cli(
        "backfill", "--config", str(config), "--job", "a", "--from", "2022-01-01",
        "--to", "2022-01-06", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    text = out.decode()
    assert "would cover 6 exports (6 windows x 1 type: page)" in text
    # Four consecutive days of page: one request (issue 26 item 5).
    assert "  4 to ask AC for, in 1 AC request (up to 31 consecutive windows" in text
    assert "  2 already done" in text
    assert "  0 before AC's data retention" in text
    assert "of AC's time at the" in text  # the processing times seen
    assert "nothing was queued (--dry-run)" in text
    assert await read_rows(tmp_path / "state") == before
    config.write_text(config.read_text() + 'coalesce_max = "2d"\n')
    code, out, err = await run_cli(
        "backfill", "--config", str(config), "--job", "a", "--from", "2022-01-01",
        "--to", "2022-01-06", "--dry-run",
    )  # fmt: skip
    assert "  4 to ask AC for, in 2 AC requests (up to 2 consecutive" in out.decode()


async def test_backfill_cancel_drops_queued_windows_not_those_at_ac(tmp_path: Path) -> None:
    """Issue 24 item 5: --cancel drops the job's queued and failed windows in the range
    (all without one); one AC is working on is left, and said so."""
    from datetime import UTC, datetime, timedelta

    from acexport.ledger import Ledger, ledger_path, read_rows
    from acexport.windows import ExportWindow

    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\noutput_dir = "{tmp_path / "out"}"\n'
        '[workspaces.alpha]\nbase_url = "http://127.0.0.1:9"\ntoken = "t"\n'
        + job("a", "alpha", types=["page"])
    )
    config.chmod(0o600)
    (tmp_path / "state").mkdir(mode=0o700)
    day = datetime(2022, 1, 1, tzinfo=UTC)
    windows = [ExportWindow(day + timedelta(days=i), day + timedelta(days=i + 1)) for i in range(5)]
    ledger = await Ledger.open(ledger_path(tmp_path / "state"))
    rows = await ledger.plan("a", "alpha", ["page"], windows)
    await ledger.claim(rows[0].id, 0)  # submitted: AC works on it
    await ledger.mark_failed(rows[1].id, "AuthError: x")
    await ledger.close()

    result = acexport("backfill", "--config", str(config), "--job", "a", "--cancel",
                      "--from", "2022-01-01", "--to", "2022-01-03")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dropped 2 queued or failed exports of job a" in result.stdout
    assert "1 in flight at AC are left to finish" in result.stdout
    assert len(await read_rows(tmp_path / "state")) == 3
    result = acexport("backfill", "--config", str(config), "--job", "a", "--cancel")
    assert "dropped 2 queued or failed exports" in result.stdout
    assert [str(r.state) for r in await read_rows(tmp_path / "state")] == ["submitted"]


def test_a_large_backfill_asks_on_a_terminal_and_no_queues_nothing(tmp_path: Path) -> None:
    """Issue 24 item 5: over 100 exports, a terminal is asked first; "n" queues nothing."""
    import os
    import pty

    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\noutput_dir = "{tmp_path / "out"}"\n'
        '[workspaces.alpha]\nbase_url = "http://127.0.0.1:9"\ntoken = "t"\nretention = 1200\n'
        + job("a", "alpha", types=["page", "event"])
    )
    config.chmod(0o600)
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "acexport", "backfill", "--config", str(config), "--job", "a",
         "--from", "2022-01-01", "--to", "2022-03-31"],
        stdin=child, stderr=child, stdout=subprocess.DEVNULL, close_fds=True,
    )  # fmt: skip
    os.close(child)
    asked = b""
    while b"[y/N]" not in asked:
        asked += os.read(main, 1024)
    os.write(main, b"n\n")
    assert process.wait(20) == 0
    assert b"queue 180 exports of job a (90 windows x 2 types)?" in asked
    from acexport.ledger import read_rows

    assert asyncio.run(read_rows(tmp_path / "state")) == []
    os.close(main)


@pytest.mark.slow
async def test_a_backfill_on_a_terminal_prints_one_readable_line_per_result(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 items 7 and 8, in a pseudo-terminal of 80 columns: each result is one
    line (`HH:MM:SS done    alpha page 2022-01-02  2 rec  ...`), never glued to the
    progress bar (each line clears the bar's line first; the bar redraws after); the bar
    ends at N/N with a summary line."""
    import os
    import pty
    import re

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=2)
    jobs = job("a", "alpha", types=["page"], catch_up="0s", coalesce_max=0)  # a line each
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace('log_format = "json"', 'log_format = "auto"'))
    main, child = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "acexport", "backfill", "--config", str(config), "--job", "a",
        "--from", "2022-01-01", "--to", "2022-01-03",
        stdin=child, stdout=child, stderr=child, env={**os.environ, "COLUMNS": "80"},
    )  # fmt: skip
    os.close(child)
    shown = bytearray()
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.run_in_executor(None, os.read, main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    assert await process.wait() == 0
    os.close(main)
    text = shown.decode()
    # What a person sees: each \r\x1b[K starts the line again.
    screen = [re.sub(r"\x1b\[[0-9;]*m", "", line.split("\r\x1b[K")[-1].split("\r")[-1])
              for line in text.replace("\r\n", "\n").split("\n")]  # fmt: skip
    done = [line for line in screen if " done    alpha page 2022-01-0" in line]
    assert len(done) == 3, screen
    for line in done:
        assert re.fullmatch(r"\d\d:\d\d:\d\d done    alpha page 2022-01-0[123]  2 rec  \d+ B"
                            r"  \d+\.\d s", line), line  # fmt: skip
        assert len(line) <= 80
    assert any(re.search(r"3/3 done", line) for line in text.split("\r")), text
    assert any(line.startswith("3 exported, 0 failed in ") for line in screen), screen


def test_every_subcommand_help_has_a_description_option_texts_and_examples() -> None:
    """Issue 24 item 13: each --help opens with what the command does, gives every option
    a text, and ends with examples."""
    from acexport.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subcommands.choices.items():
        if name == "emulator":  # its own module's parser, documented in docs/development.md
            continue
        assert sub.description, name
        assert sub.epilog, name
        assert sub.epilog.startswith("examples:\n"), name
        assert "acexport " + name in sub.epilog, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


@pytest.mark.slow
async def test_log_flags_outrank_the_config(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """Issue 24 item 13: -v shows debug lines and --log-format console the terminal's
    rendering, over the config's [daemon] (json, info); --log-level names a level."""
    from acexport.cli import build_parser, logging_overrides

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=2)
    config = write_config(tmp_path, emu, job("a", "alpha", types=["page"], catch_up="1d", lag="0s"))
    _, _, shown = await run_cli("run", "--once", "--config", str(config), "-v",
                                "--log-format", "console")  # fmt: skip
    assert "[debug" in shown
    assert '"level"' not in shown  # not JSON, as the config says
    flags = ["export", "--type", "page", "--from", "2022-01-01", "--to", "2022-01-01"]
    parsed = build_parser().parse_args([*flags, "--log-level", "warning"])
    assert logging_overrides(parsed) == {"ACEXPORT_DAEMON__LOG_LEVEL": "warning"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[[job]]\nname = "n"\nworkspace = "acme"\n', "job: unknown field; did you mean 'jobs'?"),
        (
            '[[jobs]]\nname = "n"\nworkspace = "acme"\nschedual = "@daily"\n',
            "jobs[0] (n).schedual: unknown field; did you mean 'schedule'?",
        ),
        ('[daemon]\nlisen = ""\n', "daemon.lisen: unknown field; did you mean 'listen'?"),
        ("[htp]\n", "htp: unknown field; did you mean 'http'?"),
    ],
)
def test_an_unknown_key_or_section_gets_a_did_you_mean(
    tmp_path: Path, text: str, expected: str
) -> None:
    """Issue 24 item 14: a misspelt key or section is named with the closest real one."""
    config = tmp_path / "c.toml"
    config.write_text('[workspaces.acme]\ntoken_env = "HOME"\n' + text)
    result = acexport("check-config", "--config", str(config), "--offline")
    assert result.returncode == 78
    assert expected in result.stderr


def test_cron_nicknames_and_a_config_without_jobs(tmp_path: Path) -> None:
    """Issue 24 item 14: @daily and @hourly are cron as crontab(5) knows them; a config
    with no jobs is valid but warned about."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path}/state"\n[workspaces.acme]\ntoken_env = "HOME"\n'
        '[[jobs]]\nname = "d"\nworkspace = "acme"\nschedule = "@daily"\n'
        '[[jobs]]\nname = "h"\nworkspace = "acme"\nschedule = "@hourly"\nwindow = "1h"\n'
    )
    result = acexport("check-config", "--config", str(config), "--offline")
    assert result.returncode == 0, result.stderr
    looks = [line for line in result.stdout.splitlines() if "next looks" in line]
    assert "T00:00:00+00:00" in looks[0]
    assert looks[1].count(":00:00+00:00") == 3
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n')
    result = acexport("check-config", "--config", str(config), "--offline")
    assert result.returncode == 0
    assert "warning: no [[jobs]]" in result.stdout


@pytest.mark.parametrize("log_format", ["json", "console"])
async def test_a_log_nobody_reads_any_more_loses_no_export(
    emulator: EmulatorFactory, tmp_path: Path, log_format: str
) -> None:
    """`acexport run 2>&1 | tee x.log`, and tee killed (or a log on a full disk): every
    line written from then on fails. The lines are dropped; the exports go on and end
    as ever, exit 0. (Before, each lane's task died of the first failed line and the
    run ended 1 or never; then the interpreter's last flush of the log exited 120.)"""
    tokens = {f"ws{i}": f"token-{i}" for i in range(4)}
    emu = await emulator(tokens=tokens, processing_s=0.2, records=5)
    jobs = "".join(job(f"daily-{ws}", ws, catch_up="3d", lag="0s") for ws in tokens)
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace('"json"', f'"{log_format}"'))
    read_end, write_end = os.pipe()
    daemon = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "acexport", "run", "--once", "--config", str(config)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=write_end,
        # Buffered, as outside a terminal: what the stream refused is still pending at exit.
        env={**os.environ, "ACEXPORT_CONFIG": "", "PYTHONUNBUFFERED": ""},
    )
    os.close(write_end)
    try:
        said = b""
        async with asyncio.timeout(30):
            while b"daemon_started" not in said:
                said += await asyncio.to_thread(os.read, read_end, 65536)
        os.close(read_end)  # the reader goes away: each write now fails (EPIPE)
        assert await asyncio.wait_for(daemon.wait(), 60) == 0
    finally:
        if daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        states = dict(db.execute("SELECT state, count(*) FROM exports GROUP BY state"))
    assert set(states) == {"done"}
    assert states["done"] == len(list((tmp_path / "exports").rglob("*.manifest.json"))) > 4 * 6
