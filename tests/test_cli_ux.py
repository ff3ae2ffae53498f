"""The command line's rough edges a new user met (issue 38 item 9), as they typed them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acexport import cli
from acexport.commands import early
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import job, run_cli, write_config


def acexport(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acexport", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_a_misspelt_command_gets_a_suggestion() -> None:
    result = acexport("stauts")
    assert result.returncode == 2
    assert "unknown command 'stauts'; did you mean 'status'?" in result.stderr


def test_a_misspelt_flag_gets_its_commands_usage() -> None:
    result = acexport("status", "--jsn")
    assert result.returncode == 2
    assert result.stderr.startswith("usage: acexport status ")
    assert "unrecognized arguments: --jsn" in result.stderr


@pytest.mark.parametrize(("start", "end"), [("2026-11-05", "2026-11-01")])
def test_a_backfill_range_the_wrong_way_round_says_so(tmp_path: Path, start: str, end: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "s"}"\n[workspaces.acme]\ntoken = "t"\n'
        '[[jobs]]\nname = "p"\nworkspace = "acme"\ntypes = ["page"]\n'
    )
    config.chmod(0o600)
    result = acexport("backfill", "--config", str(config), "--job", "p", "--from", start,
                      "--to", end, "--dry-run")  # fmt: skip
    assert result.returncode == 2
    assert f"--from {start} is after --to {end}" in result.stderr
    one = acexport("backfill", "--config", str(config), "--job", "p", "--from", end,
                   "--to", end, "--dry-run")  # fmt: skip
    assert "would cover 1 export (1 window x 1 type: page)" in one.stdout, one.stderr
    assert "in 1 AC request" in one.stdout


def test_commands_that_need_no_token_read_none(tmp_path: Path) -> None:
    """Issue 38 item 3 (reproduced): on a systemd host the token is the service's
    credential (`token_file = "acme"`, under $CREDENTIALS_DIRECTORY), and `backfill
    --dry-run` from a shell failed with 78 reading /etc/acexport/acme. Dry runs, cancels
    and status read no token; a backfill that exports does, and names the file."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "s"}"\n[workspaces.acme]\ntoken_file = "acme"\n'
        'retention = 1200\n[[jobs]]\nname = "p"\nworkspace = "acme"\ntypes = ["page"]\n'
    )
    backfill = ("backfill", "--config", str(config), "--job", "p")
    dry = acexport(*backfill, "--from", "2022-01-01", "--to", "2022-01-02", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would cover 2 exports" in dry.stdout
    cancel = acexport(*backfill, "--cancel")
    assert cancel.returncode == 0, cancel.stderr
    status = acexport("status", "--config", str(config))
    assert status.returncode == 1  # behind: nothing exported yet; not 78 for a token
    assert "BEHIND" in status.stdout
    real = acexport(*backfill, "--from", "2022-01-01", "--to", "2022-01-02")
    assert real.returncode == 78
    assert str(tmp_path / "acme") in real.stderr
    # ... and says how to run it as the service would (docs/deploying.md, systemd).
    assert "systemd-run -P --property=LoadCredential=acme:/etc/acexport/credentials/acme" in (
        real.stderr
    )


@pytest.mark.slow
def test_the_demo_says_how_to_watch_it_and_that_command_works(tmp_path: Path) -> None:
    """Issue 38 item 2 (reproduced): while `make demo` ran, `acexport status` said "no
    config file given or found"; with the demo's config it read /var/lib/acexport. The
    demo prints the command lines that address it; status pointed at a state directory
    that does not exist says so instead of an empty, healthy-looking report."""
    # No health port: the demo's fixed 9464 is the compose recipe's too (image-test).
    quiet = {**os.environ, "ACEXPORT_DAEMON__LISTEN": ""}
    demo = subprocess.run(
        [sys.executable, "-m", "acexport", "demo", "--once"],
        capture_output=True, text=True, check=False, timeout=120, cwd=tmp_path, env=quiet,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    lines = demo.stderr.splitlines()
    status = next(line.strip() for line in lines if line.strip().endswith(".toml")
                  and " status --config " in line)  # fmt: skip
    watched = subprocess.run(
        ["bash", "-c", status.replace("acexport ", f"{sys.executable} -m acexport ", 1)],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "job " in watched.stdout
    missing = subprocess.run(
        ["bash", "-c", status.replace(str(tmp_path / "state" / "demo"), str(tmp_path / "nope"))
         .replace("acexport ", f"{sys.executable} -m acexport ", 1)],
        capture_output=True, text=True, check=False, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 1
    assert f"no state directory at {tmp_path / 'nope'}" in missing.stderr


def test_the_image_build_context_leaves_out_state_wheels_and_secrets() -> None:
    """Issue 38 item 11: `.dockerignore` let deploy/compose/*.token, state/ and dist/ into
    the build context (a token sent to a remote builder, megabytes of state)."""
    import fnmatch

    root = Path(__file__).resolve().parent.parent
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:  # docker's rule: a pattern matches a path or a parent
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in patterns)

    for path in ("deploy/compose/acme.token", "state/demo/state.sqlite3", "dist/a.whl",
                 "daemon/acexport.egg-info/PKG-INFO", ".venv/bin/python"):  # fmt: skip
        assert ignored(path), path
    for path in ("daemon/acexport/cli.py", "pyproject.toml", "deploy/compose/config.toml"):
        assert not ignored(path), path


@pytest.mark.slow
def test_run_once_gives_up_on_an_unreachable_ac_within_the_bound(tmp_path: Path) -> None:
    """Issue 38 item 7 (reproduced): `run --once` took 3 min 49 s to give up on AC at a
    wrong port, where `export` failed at once. Nothing listening for
    http.unreachable_after (60 s by default; 2 s here, retries kept going) fails the
    window, naming host and port."""
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "s"}"\noutput_dir = "{tmp_path / "o"}"\n'
        'listen = ""\n[http]\nretry_initial = "100ms"\nretry_max = "300ms"\n'
        'max_attempts = 1000\nunreachable_after = "2s"\n'
        f'[workspaces.acme]\nbase_url = "http://127.0.0.1:{port}"\ntoken = "t"\n'
        'retention = 1200\n[[jobs]]\nname = "p"\nworkspace = "acme"\ntypes = ["page"]\n'
        'catch_up = "1d"\nlag = "0s"\n'  # a window is due at any hour of the day
    )
    config.chmod(0o600)
    started = time.monotonic()
    result = acexport("run", "--once", "--config", str(config))
    assert result.returncode == 1, result.stderr[-2000:]
    assert time.monotonic() - started < 20
    assert f"127.0.0.1:{port}" in result.stderr
    assert "export_unreachable" in result.stderr


async def test_a_dry_run_counts_what_the_store_holds_as_the_real_run_does(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 38 item 15 (reproduced): for a window whose file was deleted from the
    store, `backfill --dry-run` said "2 already done ... 0 to ask AC" from the ledger,
    and the real backfill then queued 1. Both say the same now."""
    emu = await emulator(tokens={"acme": "acme-token"}, records=3)
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s"))
    args = ("backfill", "--config", str(config), "--job", "p", "--from", "2022-01-01",
            "--to", "2022-01-02")  # fmt: skip
    code, _, err = await run_cli(*args)
    assert code == 0, err
    gone = next((tmp_path / "exports").rglob("page_20220102*.jsonl.gz"))
    gone.unlink()
    Path(f"{gone}.manifest.json").unlink()

    code, out, _ = await run_cli(*args, "--dry-run")

    assert code == 0
    assert "  1 to ask AC for, in 1 AC request" in out.decode()
    assert "  1 already done" in out.decode()
    asked = len((await emu.jobs())["jobs"])
    code, _, err = await run_cli(*args)
    assert code == 0, err
    assert "1 exported" in err
    assert len((await emu.jobs())["jobs"]) == asked + 1


# -- item 14: shell completion ------------------------------------------------------


def _completion_script(shell: str) -> str:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "acexport", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _complete(words: list[str]) -> list[str]:
    """What the generated bash script completes for ``words`` (the last one being typed)."""
    import shlex
    import shutil
    import subprocess

    script = _completion_script("bash")
    program = (
        f"{script}\nCOMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n_acexport\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    )
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-c", program], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completes_commands_options_choices_and_files(tmp_path: Path) -> None:
    """Generated from the parser: a new option or choice is completed without edits."""
    assert _complete(["acexport", "st"]) == ["status"]
    assert "check-config" in _complete(["acexport", ""])
    assert _complete(["acexport", "backfill", "--dr"]) == ["--dry-run"]
    assert _complete(["acexport", "export", "--format", ""]) == ["ndjson", "parquet"]
    assert _complete(["acexport", "emulator", "--format", ""]) == ["zip", "ndjson", "json"]
    assert _complete(["acexport", "export", "--type", "pa"]) == ["page"]
    (tmp_path / "acexport.toml").write_text("")
    assert _complete(["acexport", "run", "--config", str(tmp_path / "acex")]) == [
        str(tmp_path / "acexport.toml")
    ]


def test_zsh_completion_is_the_bash_function_through_bashcompinit() -> None:
    import shutil
    import subprocess

    script = _completion_script("zsh")
    assert script.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -o default -F _acexport acexport" in script
    zsh = shutil.which("zsh")
    if zsh is not None:  # where zsh is installed, it loads the script
        subprocess.run([zsh, "-c", script], check=True)


# -- item 4: a foreground backfill runs only its own windows ------------------------


@pytest.mark.slow
async def test_a_foreground_backfill_runs_only_its_own_windows(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Another job's export was at AC when its daemon was killed: a foreground
    backfill of a small job exports its own window only (its count never above its
    total), and leaves the other for `run`."""
    import asyncio
    import signal

    from acexport.ledger import ACTIVE, LedgerState, read_rows
    from tests.daemon_helpers import DaemonProcess

    emu = await emulator(processing_s=2.0, records=5)
    jobs = job("big", "acme", types=["event"], catch_up="1d", lag="0s") + job(
        "small", "acme", types=["page"], catch_up="0s", lag="0s", schedule="every 24h"
    )
    config = write_config(tmp_path, emu, jobs)
    state = tmp_path / "state"
    daemon = await DaemonProcess.start(config)
    async with asyncio.timeout(30):  # until big's export is at AC (polling the ledger)
        while True:
            if any(r.state is LedgerState.SUBMITTED for r in await read_rows(state)):
                break
            await asyncio.sleep(0.05)
    daemon.send(signal.SIGKILL)
    await daemon.wait()
    code, _, stderr = await run_cli(
        "backfill", "--config", str(config), "--job", "small",
        "--from", "2022-01-01", "--to", "2022-01-01", "--yes",
    )  # fmt: skip
    assert code == 0, stderr
    assert "1 exported, 0 failed" in stderr
    rows = await read_rows(state)
    assert [r.job for r in rows if r.state in ACTIVE] == ["big"]  # left for `run`
    assert "1 other exports are pending" in stderr


# -- item 6 (part): check-config loads the output format's engine ------------------


def test_check_config_says_when_parquet_lacks_duckdb(tmp_path: Path) -> None:
    """Valid before, and 78 only at `run`: the engine is loaded by check-config now."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "duckdb.py").write_text("raise ImportError('no duckdb here')\n")
    config = tmp_path / "acexport.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[output]\nformat = "parquet"\n'
        '[workspaces.acme]\ntoken = "t"\n'
    )
    config.chmod(0o600)
    import os

    done = subprocess.run(
        [sys.executable, "-m", "acexport", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{shadow}:{os.environ.get('PYTHONPATH', '')}"},
        check=False,
    )
    assert done.returncode == 78, done.stdout + done.stderr
    assert "pip install 'acexport[parquet]'" in done.stderr


async def test_check_config_online_proves_tokens_and_the_store(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 38 item 6: --online asks AC once per token (a range its retention refuses:
    no export made) and writes a probe object; each problem is one line, exit 78."""
    # (AC's controllers answer a bad token 401; its engine a 500, said as such.)
    emu = await emulator(tokens={"acme": "acme-token"}, retention_months=13, auth_failure=401)
    config = write_config(tmp_path, emu, job("a", "acme", types=["page"]))
    config.write_text(config.read_text().replace("retention = 1200", "retention = 13"))
    code, stdout, stderr = await run_cli("check-config", "--online", "--config", str(config))
    assert code == 0, stderr
    assert "workspace acme: the token was accepted by http://127.0.0.1:" in stdout.decode()
    assert "a probe object was written and deleted" in stdout.decode()
    assert (await emu.jobs())["jobs"] == []  # AC made no export
    assert not any(p.name.startswith(".acexport-probe") for p in (tmp_path / "exports").iterdir())
    config.write_text(config.read_text().replace('token = "acme-token"', 'token = "wrong-token"'))
    code, _, stderr = await run_cli("check-config", "--online", "--config", str(config))
    assert code == 78, stderr
    assert "workspaces.acme: the token was rejected" in stderr
    assert "wrong-token" not in stderr


@pytest.mark.parametrize(
    ("command", "noted"), [("run", True), ("backfill", True), ("status", False)]
)
def test_a_daemon_command_notes_early_signals_before_its_module_is_imported(
    monkeypatch: pytest.MonkeyPatch, command: str, noted: bool
) -> None:
    """A SIGHUP (a reload) or SIGTERM that reached a starting daemon while its command's
    module was still importing ended it by the signal: the soak saw it in every run
    (`had_exited_-1`). The CLI notes them before that import, for the commands that
    start a daemon; a report like `status` keeps the default."""
    seen: dict[str, object] = {}

    class Imported(Exception):
        pass

    def importing(name: str, package: str | None = None) -> None:
        seen[name] = signal.getsignal(signal.SIGHUP)
        raise Imported

    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)}
    monkeypatch.setattr(cli.importlib, "import_module", importing)
    argv = (
        [command, "--job", "j", "--from", "2026-01-01", "--to", "2026-01-02"]
        if command == "backfill"
        else [command]
    )
    try:
        with pytest.raises(Imported):
            cli.main(argv)
        (handler,) = seen.values()
        if not noted:
            assert handler == kept[signal.SIGHUP]
            return
        assert callable(handler)
        handler(signal.SIGHUP, None)
        assert signal.SIGHUP in early.noted
    finally:
        for sig, previous in kept.items():
            signal.signal(sig, previous)
        early.noted.clear()


# Started as `python -m acexport` (the console script calls the same main): whether
# SIGHUP has a handler at the moment the CLI's module is imported.
_PROBE = """
import runpy, signal, sys

class Watch:
    def find_spec(self, name, path, target=None):
        if name == "acexport.cli":
            print(callable(signal.getsignal(signal.SIGHUP)), flush=True)

sys.meta_path.insert(0, Watch())
sys.argv = ["acexport", *sys.argv[1:]]
runpy.run_module("acexport", run_name="__main__")
"""


@pytest.mark.parametrize(("command", "noted"), [("run", True), ("status", False)])
def test_a_daemon_notes_its_signals_before_the_cli_is_imported(
    tmp_path: Path, command: str, noted: bool
) -> None:
    """The CLI's imports and parser took 0.15 s before a starting daemon noted its
    signals: a SIGHUP then ended it (the soak's `had_exited_-1` again, after the fix of
    the daemon's end; 5 of 5 sent 20 to 150 ms after the start). The entry point notes
    them before it imports the CLI: only Python's own start is left (~25 ms)."""
    missing = str(tmp_path / "none.toml")
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, command, "--config", missing],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.splitlines()[0] == str(noted), done.stdout + done.stderr
    assert done.returncode == 78, done.stderr  # the missing config, said as such
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="acexport")
    assert script.value == "acexport.__main__:main"


def test_a_reload_as_a_daemon_command_fails_does_not_end_it_by_the_signal(
    tmp_path: Path,
) -> None:
    """A daemon command that fails before its daemon starts (here its config is missing,
    exit 78; in the soak its first log line on a full disk, exit 1): SIGHUPs from its
    error line to its exit leave its exit code as it is. The interpreter's exit gave
    SIGHUP its default action back, and a reload then ended it by the signal (-1, in
    10 runs of 10): systemd's RestartPreventExitStatus=78 never saw the 78."""
    process = subprocess.Popen(
        [sys.executable, "-m", "acexport", "run", "--config", str(tmp_path / "none.toml")],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    assert "configuration error" in process.stderr.readline()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # a SIGHUP each millisecond until it has exited
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGHUP)
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=0.001)
            break
    else:
        process.kill()
        raise AssertionError("it did not exit within 30 s")
    process.stderr.close()
    assert code == 78
