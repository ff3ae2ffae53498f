"""The bad-input catalogue: configs, server answers and command lines that must fail well."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr
from structlog.testing import capture_logs

from acexport.ac.client import ExportClient
from acexport.ac.polling import Backoff
from acexport.cli import main
from acexport.errors import TransientError
from acexport.export import ExportSpec, Timing, run_export
from acexport.windows import ExportWindow
from tests.daemon_helpers import export_server, local_sink

WS = '[workspaces.acme]\ntoken_env = "ACME_TOKEN"\n'
JOB = '[[jobs]]\nname = "nightly"\nworkspace = "acme"\n'

# (config text, the field the message must name)
BAD_CONFIGS = [
    ("[daemon]\nstate_dir = 5\n", "daemon.state_dir"),
    ('[daemon]\nlog_level = "loud"\n', "daemon.log_level"),
    ('[daemon]\nlog_format = "xml"\n', "daemon.log_format"),
    ('[daemon]\nlisten = "everywhere"\n', "daemon.listen"),
    ('[daemon]\nstop_grace = "soon"\n', "daemon.stop_grace"),
    ('[daemon]\ncolour = "blue"\n', "daemon.colour"),
    ("[nonsense]\nx = 1\n", "nonsense"),
    ('[http]\npoll_initial = "-5s"\n', "http.poll_initial"),
    ('[http]\npoll_max = "5 minutes"\n', "http.poll_max"),
    ('[http]\ntimeout = "0s"\n', "http"),
    ("[http]\nmax_attempts = 0\n", "http.max_attempts"),
    ('[output]\ncompression = "brotli"\n', "output.compression"),
    ('[output]\npath = "../../etc/{type}.jsonl"\n', "output.path"),
    ('[output]\npath = "/var/tmp/{type}.jsonl"\n', "output.path"),
    ('[output]\npath = "{workspace}/{month}.jsonl"\n', "output.path"),
    ('[output]\npath = "{workspace}/{from:%Y}/"\n', "output.path"),
    ('[workspaces.acme]\ntoken_env = "T"\ntimezone = "Europe/Berln"\n', "workspaces.acme.timezone"),
    (
        '[workspaces.acme]\ntoken_env = "T"\nbase_url = "http://ac.example.com"\n',
        "workspaces.acme.base_url",
    ),
    ('[workspaces.acme]\ntoken_env = "T"\nbase_url = "not a url"\n', "workspaces.acme.base_url"),
    ('[workspaces.acme]\ntimezone = "UTC"\n', "workspaces.acme"),
    ('[workspaces.acme]\ntoken_file = "/nonexistent/token"\n', "workspaces.acme"),
    ('[workspaces.acme]\ntoken_env = "ACEXPORT_TEST_UNSET_VAR"\n', "workspaces.acme"),
    ('[workspaces."bad name"]\ntoken_env = "T"\n', "workspaces"),
    (WS + JOB + 'schedule = "0 25 * * *"\n', "jobs[0] (nightly).schedule"),
    (WS + JOB + 'schedule = "every fortnight"\n', "jobs[0] (nightly).schedule"),
    (WS + JOB + 'window = "7h"\n', "jobs[0] (nightly).window"),
    (WS + JOB + 'window = "36h"\n', "jobs[0] (nightly).window"),
    (WS + JOB + 'lag = "-1h"\n', "jobs[0] (nightly).lag"),
    (WS + JOB + 'catch_up = "a week"\n', "jobs[0] (nightly).catch_up"),
    (WS + JOB + 'types = ["page", "visits"]\n', "jobs[0] (nightly).types"),
    (WS + JOB + "types = []\n", "jobs[0] (nightly).types"),
    (WS + JOB + 'types = ["page", "page"]\n', "jobs[0] (nightly).types"),
    (WS + JOB + JOB, "nightly"),
    (WS + '[[jobs]]\nname = "x"\nworkspace = "other"\n', "jobs[0] (x).workspace"),
    (WS + '[[jobs]]\nworkspace = "acme"\n', "jobs[0].name"),
    (WS + JOB + 'start = "yesterday"\n', "jobs[0] (nightly).start"),
    (WS + JOB + 'lag = "2h"\nrestate = "1d"\n', "must exceed lag + 1 day"),
    (WS + JOB + 'modes = { individual = "windows" }\ntypes = ["page"]\n', "not in types"),
    (WS + JOB + 'modes = { page = "weekly" }\n', "jobs[0] (nightly).modes"),
    (WS + JOB + "keep_snapshots = 0\n", "jobs[0] (nightly).keep_snapshots"),
    ('[workspaces.acme]\ntoken_env = "T"\nretention = "a year"\n', "workspaces.acme.retention"),
    ('[output]\nsnapshot_path = "{type}/latest.jsonl"\n', "snapshot_path must contain {to}"),
    ("[daemon\n", "not valid TOML"),
    ('[daemon]\nstate_dir = ""\n', "daemon.state_dir"),
    ('[output]\npath = "{workspace}/a\\u0000b.jsonl"\n', "output.path"),
    ('[http]\nmax_payload = "lots"\n', "http.max_payload"),
    # Issue 21 item 21: sizes are positive numbers, never booleans.
    ("[http]\nmax_payload = 0\n", "http.max_payload"),
    ("[http]\nmax_payload = true\n", "http.max_payload"),
    ("[http]\nmax_inflate_ratio = true\n", "http.max_inflate_ratio"),
    ("[http]\nmax_attempts = true\n", "http.max_attempts"),
    ("[output.s3]\nconcurrency = false\n", "output.s3.concurrency"),
    # Item 5: templates that do not tell a job's windows apart.
    (WS + JOB + 'window = "6h"\n[output]\npath = "{type}/{from:%Y-%m-%d}.jsonl"\n', "overwrite"),
    (WS + JOB + '[output]\npath = "{workspace}/{type}.jsonl"\n', "overwrite"),
    (WS + JOB + 'window = "1h"\n[output]\npath = "{type}/{from:%H}.jsonl"\n', "overwrite"),
    (WS + JOB + '[output]\npath = "{type}/{from:%m-%d}.jsonl"\n', "overwrite"),
    # Item 14: S3 object keys are at most 1024 bytes, prefix included.
    (
        WS + JOB + '[output]\nurl = "s3://bucket/' + "p" * 950 + '"\n',
        "longer than S3's 1024",
    ),
    # Item 20: one output, spelt one way per source.
    ('[daemon]\noutput_dir = "/a"\n[output]\nurl = "/b"\n', "not both"),
    (WS + JOB + '[output]\npath = "{type}_' + "x" * 250 + '.jsonl"\n', "output.path renders"),
    # Only the job's longest types (individual, membership: 10 letters) are too long,
    # by one byte (with ".zst.manifest.json"): the check is by the longest type.
    (
        WS + JOB + '[output]\npath = "{type}{from:%Y%m%d}' + "x" * 214 + '.jsonl"\n',
        "jobs[0] (nightly): output.path renders a name of 256 bytes",
    ),
]


@pytest.mark.parametrize(("text", "field"), BAD_CONFIGS)
def test_bad_config_exits_78_naming_the_field(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    field: str,
) -> None:
    """Each malformed config makes check-config exit 78 with the file and field named."""
    monkeypatch.setenv("ACME_TOKEN", "t0ken-value")
    monkeypatch.setenv("T", "t0ken-value")
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert str(path) in err
    assert field in err


def test_unreadable_token_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A token file that cannot be read names the file and the reason."""
    if os.geteuid() == 0:
        token = tmp_path / "dir-not-file"
        token.mkdir()  # root reads anything: a directory is unreadable as a file for everyone
    else:
        token = tmp_path / "token"
        token.write_text("x")
        token.chmod(0)
    path = tmp_path / "config.toml"
    path.write_text(f'[workspaces.acme]\ntoken_file = "{token}"\n')
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "cannot read token_file" in err
    assert str(token) in err


def test_output_dir_that_is_a_file_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """output_dir pointing at a regular file is a config error naming it, not a traceback."""
    plain = tmp_path / "exports"
    plain.write_text("not a directory")
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\noutput_dir = "{plain}"\n')
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "daemon.output_dir" in err
    assert "not a directory" in err
    assert "Traceback" not in err


def test_malformed_json_override_exits_78_naming_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ACEXPORT_WORKSPACES='{' is named as invalid JSON, with exit 78."""
    monkeypatch.setenv("ACEXPORT_WORKSPACES", "{")
    path = tmp_path / "config.toml"
    path.write_text("")
    assert main(["check-config", "--config", str(path)]) == 78
    assert "ACEXPORT_WORKSPACES is not valid JSON" in capsys.readouterr().err


def test_multi_line_token_file_exits_78_without_showing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token file whose token holds a line break is refused at check-config."""
    token = tmp_path / "token"
    token.write_text("first-half\nsecond-half\n")
    token.chmod(0o600)
    path = tmp_path / "config.toml"
    path.write_text(f'[workspaces.acme]\ntoken_file = "{token}"\n')
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert "workspaces.acme" in err
    assert "line break" in err
    assert "first-half" not in err


def test_token_file_readable_by_others_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config names a token_file that group or others can read."""
    token = tmp_path / "token"
    token.write_text("a-token-value\n")
    token.chmod(0o644)
    path = tmp_path / "config.toml"
    path.write_text(f'[workspaces.acme]\ntoken_file = "{token}"\n')
    path.chmod(0o600)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"token_file {token} is readable by others" in out
    token.chmod(0o600)
    assert main(["check-config", "--config", str(path)]) == 0
    assert "readable by others" not in capsys.readouterr().out
    # Group-readable by a group the service is in (a host's 0640 root:acexport, a
    # Kubernetes fsGroup): how a secret is shared with a service, no warning.
    token.chmod(0o640)
    os.chown(token, -1, os.getegid())
    assert main(["check-config", "--config", str(path)]) == 0
    assert "readable by others" not in capsys.readouterr().out
    if os.geteuid() == 0:  # a group the service is not in
        os.chown(token, -1, 12345)
        assert main(["check-config", "--config", str(path)]) == 0
        assert f"token_file {token} is readable by others" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["run", "--once", "--bogus"],
        ["export", "--type", "page"],
        ["backfill", "--job", "x"],
        ["emulator", "--port", "eighty"],
        ["emulator", "--token", "no-equals-sign"],
        ["status", "--json", "extra"],
    ],
)
def test_cli_misuse_exits_2_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown commands, flags and bad values exit 2 and print usage."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


# -- malformed server answers ---------------------------------------------------
WINDOW = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
URL = (
    "https://ac.example.com/api/reports/export/page"
    f"?fromDate={WINDOW.from_date}&toDate={WINDOW.to_date}"
)
GOOD_STATUS = {
    "fromDate": WINDOW.from_date,
    "toDate": WINDOW.to_date,
    "type": "PAGE",
    "status": "PENDING",
    "createdDate": "2022-06-29T17:50:46.824Z",
    "message": "later",
}
DATA = b'{"id": "1", "title": "Home"}\n{"id": "2", "title": "Pricing"}\n'

BAD_ANSWERS = {
    "empty-body": {"body": b""},
    "truncated-json": {"body": b'{"fromDate": "2022-01-01T00:00:00.000Z", "status": "PEN'},
    "html-200": {"body": b"<html><body>Please sign in</body></html>", "content_type": "text/html"},
    "html-no-type": {"body": b"  <!DOCTYPE html><html></html>"},
    "wrong-type": {"body": json.dumps({**GOOD_STATUS, "type": "SEGMENT"}).encode()},
    "wrong-dates": {"body": json.dumps({**GOOD_STATUS, "toDate": "2022-01-05T00:00:00Z"}).encode()},
    "bad-date-text": {"body": json.dumps({**GOOD_STATUS, "fromDate": "the first"}).encode()},
    "status-502": {"status": 502, "body": b"Bad Gateway"},
    # Issue 21 item 6: a body served as a ZIP that is not one is damage, not an empty export.
    "zip-blank": {"body": b"\r\n", "content_type": "application/zip"},
    "zip-bom": {"body": b"\xef\xbb\xbf", "content_type": "application/zip"},
    "zip-empty": {
        "body": b"",
        "content_type": "application/zip",
        "headers": {"Content-Length": "0"},
    },
    "zip-json": {"body": DATA, "content_type": "application/zip"},
    # Item 27: status keys only, with a status AC does not use, is no one-record export.
    "status-keys-only": {"body": b'{"status": "DONE"}'},
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """conftest's session, with a large read buffer: aioresponses feeds a body in one go
    and cannot pause."""
    async with aiohttp.ClientSession(read_bufsize=4 * 1024 * 1024) as s:
        yield s


@pytest.mark.parametrize("answer", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
async def test_malformed_answer_is_retried_and_the_export_completes(
    answer: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A bad answer is logged and retried after a backoff; the next good answers finish it."""
    timing = Timing(poll=Backoff(0.001, 0.001), retry=Backoff(0.001, 0.001), max_attempts=5)
    sink = local_sink(tmp_path / "out", tmp_path / "tmp")
    spec = ExportSpec("acme", "page", WINDOW, PurePosixPath("page.jsonl"))
    client = ExportClient(session, "https://ac.example.com", SecretStr("tkn-1234"))
    with aioresponses() as mocked, capture_logs() as logs:
        options = {"content_type": "application/json", **BAD_ANSWERS[answer]}
        mocked.get(URL, **options)  # type: ignore[arg-type]
        mocked.get(URL, payload=GOOD_STATUS)
        mocked.get(URL, body=DATA)
        outcome = await run_export(spec, client, sink, timing)
    sink.close()
    assert outcome.manifest.records == 2
    assert (tmp_path / "out" / "page.jsonl").read_bytes() == DATA
    retries = [entry for entry in logs if entry["event"] == "export_retrying"]
    assert len(retries) == 1
    assert "tkn-1234" not in json.dumps(logs, default=str)


async def test_endless_bad_answers_give_up_after_max_attempts(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Bad answers forever end in a TransientError after max_attempts requests, not a loop."""
    timing = Timing(poll=Backoff(0.001, 0.001), retry=Backoff(0.001, 0.001), max_attempts=4)
    sink = local_sink(tmp_path / "out", tmp_path / "tmp")
    spec = ExportSpec("acme", "page", WINDOW, PurePosixPath("page.jsonl"))
    client = ExportClient(session, "https://ac.example.com", SecretStr("tkn-1234"))
    with aioresponses() as mocked:
        mocked.get(URL, body=b"<html>down</html>", content_type="text/html", repeat=True)
        with pytest.raises(TransientError):
            await run_export(spec, client, sink, timing)
        assert len(next(iter(mocked.requests.values()))) == 4
    sink.close()
    assert not (tmp_path / "out" / "page.jsonl").exists()


async def test_oversized_status_is_retried_not_taken_as_data(tmp_path: Path) -> None:
    """A 300 kB status object (over a real socket) is a bad answer, not a one-record export."""
    from aiohttp import web

    answers = [
        json.dumps({**GOOD_STATUS, "message": "x" * 300_000}).encode(),
        json.dumps(GOOD_STATUS).encode(),
        DATA,
    ]

    async def handler(_: web.Request) -> web.Response:
        body = answers.pop(0) if len(answers) > 1 else answers[0]
        return web.Response(body=body, content_type="application/json")

    timing = Timing(poll=Backoff(0.001, 0.001), retry=Backoff(0.001, 0.001), max_attempts=5)
    sink = local_sink(tmp_path / "out", tmp_path / "tmp")
    spec = ExportSpec("acme", "page", WINDOW, PurePosixPath("page.jsonl"))
    try:
        async with export_server(handler) as base, aiohttp.ClientSession() as session:
            client = ExportClient(session, base, SecretStr("tkn-1234"))
            with capture_logs() as logs:
                outcome = await run_export(spec, client, sink, timing)
    finally:
        sink.close()
    assert outcome.manifest.records == 2
    retry = next(entry for entry in logs if entry["event"] == "export_retrying")
    assert "oversized status" in retry["error"]


# -- issue 21, items 17, 18 and 20 ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("ACEXPORT_HTTP_MAX_PAYLOAD", "ACEXPORT_HTTP__MAX_PAYLOAD"),
        ("ACEXPORT_DAEMN__LISTEN", "ACEXPORT_DAEMON__LISTEN"),
        ("ACEXPORT_OUTPUT__S3__REGON", "ACEXPORT_OUTPUT__S3__REGION"),
        ("ACEXPORT_WORKSPACES__ACME__TIMEZON", "ACEXPORT_WORKSPACES__*__TIMEZONE"),
    ],
)
def test_a_misspelt_environment_variable_exits_78_naming_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    hint: str,
) -> None:
    """Item 20: silently ignored before; now an error with the likely spelling."""
    path = tmp_path / "config.toml"
    path.write_text('[workspaces.acme]\ntoken_env = "ACEXPORT_ACME_TOKEN"\n')
    monkeypatch.setenv("ACEXPORT_ACME_TOKEN", "t")  # a token_env: not a setting, allowed
    monkeypatch.setenv("ACEXPORT_WORKSPACES__ACME__TIMEZONE", "UTC")  # a real one
    monkeypatch.setenv(name, "1")
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"{name} is not an acexport setting" in err
    assert f"did you mean {hint}" in err


def test_the_environment_wins_over_the_file_whichever_spelling_each_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 20: ACEXPORT_DAEMON__OUTPUT_DIR (the systemd advice of docs/deploying.md) was silently
    shadowed by the file's [output] url; the higher source wins (design section 4)."""
    from acexport.config import load_settings

    path = tmp_path / "config.toml"
    path.write_text(f'[output]\nurl = "{tmp_path / "from-file"}"\n')
    monkeypatch.setenv("ACEXPORT_DAEMON__OUTPUT_DIR", str(tmp_path / "from-env"))
    assert load_settings(path).output_dir() == tmp_path / "from-env"
    monkeypatch.delenv("ACEXPORT_DAEMON__OUTPUT_DIR")
    monkeypatch.setenv("ACEXPORT_OUTPUT__URL", "s3://bucket/x")
    assert load_settings(path).output.s3_location() == ("bucket", "x/")


@pytest.mark.parametrize(
    ("url", "bucket", "directory"),
    [
        ("S3://bucket/prefix", ("bucket", "prefix/"), None),
        ("FILE:///srv/exports", None, "/srv/exports"),
        ("~/exports", None, "HOME/exports"),
        ("relative/exports", None, "CONFIG/relative/exports"),
    ],
)
def test_output_url_scheme_case_home_and_relative_paths(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    bucket: tuple[str, str] | None,
    directory: str | None,
) -> None:
    """Item 17: S3:// and FILE:// wrote to directories named 'S3:' and 'FILE:'; ~ was
    not expanded; a relative path was relative to the working directory."""
    from acexport.config import load_settings

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = config_dir / "config.toml"
    path.write_text(f'[output]\nurl = "{url}"\n[daemon]\nstate_dir = "state"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(path)
    assert settings.output.s3_location() == bucket
    assert settings.daemon.state_dir == config_dir / "state"
    if directory:
        expected = directory.replace("HOME", str(tmp_path / "home"))
        assert settings.output_dir() == Path(expected.replace("CONFIG", str(config_dir)))


@pytest.mark.parametrize("which", ["secret_access_key_file", "session_token_file"])
def test_check_config_checks_the_s3_secret_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    """Item 18: a world-readable S3 secret file is warned about; a missing one is an
    error, not "valid"."""
    files = {}
    for name in ("access_key_id_file", "secret_access_key_file", "session_token_file"):
        files[name] = tmp_path / name
        files[name].write_text("value\n")
        files[name].chmod(0o600)
    files[which].chmod(0o644)
    lines = "".join(f'{name} = "{file}"\n' for name, file in files.items())
    path = tmp_path / "config.toml"
    path.write_text(f'[output]\nurl = "s3://bucket"\n[output.s3]\n{lines}')
    path.chmod(0o600)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"output.s3.{which} {files[which]} is readable by others" in out
    files[which].unlink()
    assert main(["check-config", "--config", str(path)]) == 78
    err = capsys.readouterr().err
    assert f"output.s3.{which}" in err
    assert "cannot read" in err


@pytest.mark.parametrize("command", ["status", "check-config"])
def test_a_corrupt_ledger_is_one_line_and_exit_1(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    """Issue 21 item 23: `status` and `check-config` printed a traceback for a ledger
    that is not a database (round 1 fixed `run` only)."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.sqlite3").write_bytes(b"this is not a database, it is a text file " * 4)
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\nstate_dir = "{state}"\n' + WS + JOB)
    monkeypatch.setenv("ACME_TOKEN", "t")
    assert main([command, "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1
    assert "file is not a database" in err
    assert str(state / "state.sqlite3") in err
