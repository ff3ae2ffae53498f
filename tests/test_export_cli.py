"""`acexport export` as a user runs it: a subprocess against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EmulatorFactory, RunningEmulator
from tests.daemon_helpers import run_cli

# Every test here runs processes (or a real store) for seconds: not in the quick loop.
pytestmark = pytest.mark.slow


def write_config(
    tmp_path: Path, emu: RunningEmulator, compression: str = "gzip", jobs: str = ""
) -> Path:
    config = tmp_path / "acexport.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
output_dir = "{tmp_path / "exports"}"
log_format = "json"

[http]
poll_initial = "50ms"
poll_max = "200ms"
retry_initial = "20ms"
retry_max = "100ms"

[output]
compression = "{compression}"

[workspaces.acme]
base_url = "{emu.url}"
token_env = "ACME_TOKEN"
timezone = "Europe/Berlin"
{jobs}
"""
    )
    return config


DAILY_PAGE = '[[jobs]]\nname = "daily"\nworkspace = "acme"\ntypes = ["page"]\n'


def export_args(config: Path, start: str, end: str, *extra: str) -> list[str]:
    return [
        *("export", "--config", str(config), "--workspace", "acme", "--type", "page"),
        *("--from", start, "--to", end, *extra),
    ]


async def test_export_into_the_configured_layout(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """With a config, one window of a job lands under the hive layout in the workspace's
    zone, as the job's."""
    emu = await emulator(records=50)
    config = write_config(tmp_path, emu, jobs=DAILY_PAGE)
    code, stdout, stderr = await run_cli(
        "export",
        "--config",
        str(config),
        "--workspace",
        "acme",
        "--type",
        "page",
        "--from",
        "2022-03-27",
        "--to",
        "2022-03-27",
    )
    assert code == 0, stderr
    data = (
        tmp_path
        / "exports/workspace=acme/type=page/date=2022-03-27"
        / "page_20220327T0000_20220328T0000.jsonl.gz"
    )
    manifest = json.loads(Path(str(data) + ".manifest.json").read_text())
    assert stdout.decode().strip() == str(data) + ".manifest.json"
    assert manifest["fromDate"] == "2022-03-26T23:00:00.000Z"  # Berlin midnight, in UTC
    assert manifest["toDate"] == "2022-03-27T21:59:59.999Z"  # a 23-hour DST day
    assert manifest["records"] == 50
    assert manifest["compression"] == "gzip"
    assert manifest["job"] == "daily"  # the daemon adopts it as its own window
    assert list((tmp_path / "state" / "tmp").iterdir()) == []


async def test_a_one_off_export_never_damages_the_daemons_dataset(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 37 item 3: into the config's output, a range that is not exactly one of a
    job's windows is refused (a 3-day file in date=2022-03-01 counted its days twice),
    so is another compression, and so is a window whose file is stored (with --force
    too); each says where to go instead, and nothing is written or asked of AC."""
    emu = await emulator(records=50)
    config = write_config(tmp_path, emu, jobs=DAILY_PAGE)
    code, _, stderr = await run_cli(*export_args(config, "2022-03-01", "2022-03-03"))
    assert code == 2, stderr
    assert "is not one window of a job" in stderr
    assert "--output FILE" in stderr
    code, _, stderr = await run_cli(
        *export_args(config, "2022-03-01", "2022-03-01", "--compression", "zstd")
    )
    assert code == 2, stderr
    assert "in its format and compression (ndjson, gzip)" in stderr
    assert not (tmp_path / "exports").exists()
    assert (await emu.jobs())["jobs"] == []
    code, _, stderr = await run_cli(*export_args(config, "2022-03-01", "2022-03-01"))
    assert code == 0, stderr
    (data,) = (tmp_path / "exports").rglob("*.jsonl.gz")
    before = data.read_bytes()
    for force in ([], ["--force"]):
        code, _, stderr = await run_cli(*export_args(config, "2022-03-01", "2022-03-01", *force))
        assert code == 2, stderr
        assert "never replaces a job's window file" in stderr
        assert "acexport reexport --job daily --from 2022-03-01 --to 2022-03-01 --type" in stderr
    assert data.read_bytes() == before
    assert len((await emu.jobs())["jobs"]) == 1
    # Elsewhere, anything goes.
    elsewhere = tmp_path / "three-days.jsonl"
    code, _, stderr = await run_cli(
        *export_args(config, "2022-03-01", "2022-03-03", "--output", str(elsewhere))
    )
    assert code == 0, stderr
    assert elsewhere.stat().st_size > 0


async def test_export_to_stdout(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """--output - writes verified NDJSON to stdout and leaves no file behind."""
    emu = await emulator(records=40, format="json")
    code, stdout, stderr = await run_cli(
        "export",
        "--base-url",
        emu.url,
        "--token-env",
        "ACME_TOKEN",
        "--type",
        "segment",
        "--from",
        "2022-01-01",
        "--to",
        "2022-01-01",
        "--output",
        "-",
    )
    assert code == 0, stderr
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 40
    assert all("individualCount" in r for r in records)
    assert "acme-token" not in stderr


async def test_disk_full_is_a_clear_error_and_leaves_nothing(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A file-size limit mid-write gives a clear error, exit 1, and no partial files."""
    emu = await emulator(records=20000)
    config = write_config(tmp_path, emu, compression="none", jobs=DAILY_PAGE)
    code, _, stderr = await run_cli(
        "export",
        "--config",
        str(config),
        "--type",
        "page",
        "--from",
        "2022-01-01",
        "--to",
        "2022-01-01",
        fsize_limit=1_000_000,
    )
    assert code == 1
    failure = json.loads(stderr.strip().splitlines()[-1])
    assert failure["event"] == "export_failed"
    assert "disk full?" in failure["error"]
    assert list((tmp_path / "state" / "tmp").iterdir()) == []
    assert not (tmp_path / "exports").exists()


async def test_bad_token_exits_1_naming_the_cause(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A rejected token exits 1 with an auth error, and the token is not printed."""
    emu = await emulator()
    config = write_config(tmp_path, emu, jobs=DAILY_PAGE)
    code, _, stderr = await run_cli(
        "export",
        "--config",
        str(config),
        "--type",
        "page",
        "--from",
        "2022-01-01",
        "--to",
        "2022-01-01",
        env={"ACME_TOKEN": "wrong-token-value"},
    )
    assert code == 1
    assert "AuthError" in stderr
    assert "wrong-token-value" not in stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["--type", "page", "--from", "2022-01-01", "--to", "2022-01-01"],
            "give --config, or --base-url",
        ),
        (
            ["--base-url", "http://127.0.0.1:1", "--type", "page", "--from", "x", "--to", "y"],
            "exactly one of --token-env",
        ),
        (["--type", "visits", "--from", "2022-01-01", "--to", "2022-01-02"], "invalid choice"),
        (
            [
                "--base-url",
                "http://127.0.0.1:1",
                "--token-env",
                "ACME_TOKEN",
                "--type",
                "page",
                "--from",
                "someday",
                "--to",
                "2022-01-01",
                "--output",
                "-",
            ],
            "ISO 8601",
        ),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    """Flags that do not fit exit 2 with a message saying which."""
    result = subprocess.run(
        [sys.executable, "-m", "acexport", "export", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        env={**os.environ, "ACEXPORT_CONFIG": "", "ACME_TOKEN": "t-123"},
    )
    assert result.returncode == 2, result.stderr
    assert fragment in result.stderr


def test_config_errors_exit_78_naming_the_field(tmp_path: Path) -> None:
    """An invalid config exits 78 (EX_CONFIG) naming the file and field."""
    config = tmp_path / "bad.toml"
    config.write_text('[workspaces.acme]\ntoken_env = "T"\ntimezone = "Nowhere/Land"\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "acexport",
            "export",
            "--config",
            str(config),
            "--type",
            "page",
            "--from",
            "2022-01-01",
            "--to",
            "2022-01-01",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 78
    assert str(config) in result.stderr
    assert "workspaces.acme.timezone" in result.stderr


async def spawn_page_export(
    emu: RunningEmulator, output: str, stdout: int | None = None
) -> asyncio.subprocess.Process:
    """`acexport export` of the emulator's 2022-01-01 page window, without a config."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "acexport",
        "export",
        "--base-url",
        emu.url,
        "--token-env",
        "ACME_TOKEN",
        "--type",
        "page",
        "--from",
        "2022-01-01",
        "--to",
        "2022-01-01",
        "--output",
        output,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ACME_TOKEN": "acme-token", "ACEXPORT_HTTP__POLL_INITIAL": "50ms"},
    )


async def test_export_to_a_reader_that_stops_early(emulator: EmulatorFactory) -> None:
    """`acexport export --output - | head` ends with a clear line, not a traceback."""
    emu = await emulator(records=20000)
    read_end, write_end = os.pipe()
    process = await spawn_page_export(emu, "-", stdout=write_end)
    os.close(write_end)
    reader = os.fdopen(read_end, "rb")
    first = await asyncio.to_thread(reader.read, 100)
    reader.close()  # like `head -c 100`
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert first.startswith(b'{"eventDate"')
    assert process.returncode == 1
    assert b"stdout closed before all data was written" in stderr
    assert b"Traceback" not in stderr


USER_FILES = ("2022-01-01-report.csv", "12345-notes.txt", "999999999-abc.part")


def _plant_user_files(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in USER_FILES:
        (directory / name).write_text("keep me")


async def test_export_without_config_touches_no_user_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Files beside --output or in $TMPDIR that start with digits and a dash are left alone."""
    emu = await emulator(records=20)
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmpdir"
    _plant_user_files(out_dir)
    _plant_user_files(tmp_dir)
    common = ["export", "--base-url", emu.url, "--token-env", "ACME_TOKEN", "--type", "page"]
    window = ["--from", "2022-01-01", "--to", "2022-01-01"]
    env = {"TMPDIR": str(tmp_dir)}
    code, _, stderr = await run_cli(*common, *window, "--output", str(out_dir / "p.jsonl"), env=env)
    assert code == 0, stderr
    code, stdout, stderr = await run_cli(*common, *window, "--output", "-", env=env)
    assert code == 0, stderr
    assert len(stdout.splitlines()) == 20
    assert sorted(p.name for p in tmp_dir.iterdir()) == sorted(USER_FILES)
    expected = sorted([*USER_FILES, "p.jsonl", "p.jsonl.manifest.json"])
    assert sorted(p.name for p in out_dir.iterdir()) == expected


async def test_sigterm_during_export_leaves_no_part_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`acexport export` stopped by SIGTERM mid-download exits 143 (128 + SIGTERM, as a
    shell reports it; Ctrl-C gives 130) and leaves no temp file."""
    from acexport.emulator import FaultSettings

    emu = await emulator(records=40000, faults=FaultSettings(slow_bytes_per_s=300_000))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    process = await spawn_page_export(emu, str(out_dir / "p.jsonl"))
    await emu.wait_for(lambda report: any(job["bytes_sent"] for job in report["jobs"]))
    process.terminate()
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 143
    assert b"interrupted" in stderr
    assert list(out_dir.iterdir()) == []  # no data, no .part, no private temp dir


async def test_ctrl_c_during_export_exits_130(emulator: EmulatorFactory, tmp_path: Path) -> None:
    """Issue 24 item 11: Ctrl-C (SIGINT) exits 130 as shells expect, not 1."""
    emu = await emulator(processing_s=600)
    process = await spawn_page_export(emu, str(tmp_path / "p.jsonl"))
    await emu.wait_for(lambda report: bool(report["jobs"]))
    process.send_signal(signal.SIGINT)
    _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == -signal.SIGINT  # a shell reports 130, make an interrupt
    assert b"interrupted" in stderr
    assert list(tmp_path.iterdir()) == []


def test_a_bad_flag_value_is_one_line_naming_the_flag_exit_2(tmp_path: Path) -> None:
    """Issue 24 item 11: a value pydantic refuses is one line naming the flag (no
    'validation error for WorkspaceSettings', no pydantic URL), exit 2."""
    for flag, value, expected in (
        ("--base-url", "ftp://example.com", "--base-url: expected an http(s) URL"),
        ("--timezone", "Mars/Olympus", "--timezone: unknown time zone 'Mars/Olympus'"),
    ):
        args = ["--base-url", "http://127.0.0.1:9", flag, value]
        if flag == "--base-url":
            args = [flag, value]
        result = subprocess.run(
            [sys.executable, "-m", "acexport", "export", *args, "--token-env", "ACME_TOKEN",
             "--type", "page", "--from", "2022-01-01", "--to", "2022-01-01",
             "--output", str(tmp_path / "x.jsonl")],
            capture_output=True, text=True, env={**os.environ, "ACME_TOKEN": "t"}, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"acexport export: {expected}")
        assert "pydantic" not in result.stderr
        assert "validation error" not in result.stderr


def test_a_one_off_export_to_a_closed_port_fails_in_seconds_naming_host_and_port(
    tmp_path: Path,
) -> None:
    """Issue 24 item 12: a typo'd port retried for minutes; a one-off export whose first
    request finds nothing listening fails at once, naming host and port (the daemon,
    for which AC may be back soon, still retries)."""
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "acexport", "export", "--base-url", f"http://127.0.0.1:{port}",
         "--token-env", "ACME_TOKEN", "--type", "page", "--from", "2022-01-01",
         "--to", "2022-01-01", "--output", str(tmp_path / "x.jsonl"), "-q"],
        capture_output=True, text=True, env={**os.environ, "ACME_TOKEN": "t"}, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert time.monotonic() - started < 10
    assert f"cannot connect to http://127.0.0.1:{port}" in result.stderr
    assert list(tmp_path.iterdir()) == []


async def test_an_existing_output_file_is_replaced_only_with_force(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 item 12: an existing --output file is refused (exit 2) unless --force."""
    emu = await emulator(records=3)
    target = tmp_path / "p.jsonl"
    target.write_text("mine\n")
    args = ("export", "--base-url", emu.url, "--token-env", "ACME_TOKEN", "--type", "page",
            "--from", "2022-01-01", "--to", "2022-01-01", "--output", str(target),
            "-q")  # fmt: skip
    code, _, err = await run_cli(*args)
    assert code == 2
    assert f"{target} exists: give --force to replace it" in err
    assert target.read_text() == "mine\n"
    code, _, err = await run_cli(*args, "--force")
    assert code == 0, err
    assert target.read_text().count("\n") == 3


@pytest.mark.parametrize(
    ("length", "start"),
    [("1d", "2026-03-29T00:00"), ("1h", "2026-03-29T03:00"), ("7d", "2026-03-23T00:00")],
)
def test_the_reexport_a_refusal_suggests_names_exactly_the_window(length: str, start: str) -> None:
    """What a one-off export's refusal tells to run asks for that window and no other,
    a DST day included (Berlin, 2026-03-29 has 23 hours)."""
    from datetime import datetime as dt
    from zoneinfo import ZoneInfo

    from acexport.commands.export import _range_args
    from acexport.config.values import parse_duration
    from acexport.windows import aligned_windows, parse_bound

    zone = ZoneInfo("Europe/Berlin")
    size = parse_duration(length)
    first = dt.fromisoformat(start).replace(tzinfo=zone)
    window = aligned_windows(zone, size, first, first + 2 * size)[0]
    words = _range_args(window).split()
    assert (words[0], words[2]) == ("--from", "--to")
    asked = aligned_windows(
        zone, size, parse_bound(words[1], zone, end=False), parse_bound(words[3], zone, end=True)
    )
    assert asked == [window]
