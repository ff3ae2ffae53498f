"""Configuration: durations, validation errors naming file and field, token sources."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acexport.config import (
    load_settings,
    parse_duration,
    resolve_tokens,
    secret_warnings,
)
from acexport.errors import ConfigError
from acexport.pathtemplate import render_path

WORKSPACE = """
[workspaces.acme]
base_url = "https://analytics.example.com"
token_env = "ACME_TOKEN"
timezone = "Europe/Berlin"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200ms", timedelta(milliseconds=200)),
        ("1.5s", timedelta(seconds=1.5)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("6h", timedelta(hours=6)),
        ("1d", timedelta(days=1)),
        (30, timedelta(seconds=30)),
    ],
)
def test_durations(text: str | int, expected: timedelta) -> None:
    """Durations accept ms, s, m, h, d suffixes (and plain seconds)."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5x", "-1s", "1 week", "h"])
def test_bad_durations(text: str) -> None:
    """Anything else is rejected with the accepted forms in the message."""
    with pytest.raises(ValueError, match="200ms"):
        parse_duration(text)


def test_defaults_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ACEXPORT_ variables with __ nesting override the file."""
    path = write(
        tmp_path, '[daemon]\nstate_dir = "/from/file"\n[http]\npoll_max = "2m"\n' + WORKSPACE
    )
    monkeypatch.setenv("ACEXPORT_DAEMON__STATE_DIR", "/from/env")
    monkeypatch.setenv("ACEXPORT_HTTP__POLL_INITIAL", "3s")
    settings = load_settings(path)
    assert settings.daemon.state_dir == Path("/from/env")
    assert settings.http.poll_initial == timedelta(seconds=3)
    assert settings.http.poll_max == timedelta(minutes=2)
    assert settings.output.compression == "gzip"
    assert settings.workspaces["acme"].zone.key == "Europe/Berlin"


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ('[daemon]\nlog_format = "xml"\n', "daemon.log_format", "console"),
        ("[daemon]\nbogus = 1\n", "daemon.bogus", "unknown field"),
        ('[http]\ntimeout = "soon"\n', "http.timeout", "not a duration"),
        ('[http]\npoll_initial = "10m"\npoll_max = "1m"\n', "http", "poll_max"),
        ('[output]\ncompression = "lz4"\n', "output.compression", "zstd"),
        ('[output]\npath = "{workspace}/{date}.jsonl"\n', "output.path", "unknown placeholder"),
        ('[output]\npath = "../{workspace}/{type}.jsonl"\n', "output.path", "relative"),
        ('[output]\npath = "/abs/{type}.jsonl"\n', "output.path", "relative"),
        ('[output]\npath = "{from:%Y}/{type"\n', "output.path", "malformed"),
        (
            '[workspaces.acme]\ntoken_env = "X"\ntimezone = "Mars/Olympus"\n',
            "timezone",
            "unknown time zone",
        ),
        (
            '[workspaces.acme]\ntoken_env = "X"\nbase_url = "http://analytics.example.com"\n',
            "base_url",
            "https",
        ),
        ('[workspaces.acme]\ntoken_env = "X"\nbase_url = "ftp://x"\n', "base_url", "http(s)"),
        ('[workspaces.acme]\nbase_url = "https://x.example"\n', "workspaces.acme", "exactly one"),
        (
            '[workspaces.acme]\ntoken = "t0ken-value"\ntoken_env = "X"\n',
            "workspaces.acme",
            "exactly one",
        ),
        ('[workspaces."a/b"]\ntoken_env = "X"\n', "workspaces", "workspace name"),
    ],
)
def test_invalid_config_names_file_and_field(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    """Each invalid value is reported with the file path and the dotted field name."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert str(path) in message
    assert field in message
    assert fragment in message


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and where."""
    path = write(tmp_path, "[daemon\nstate_dir = 1\n")
    with pytest.raises(ConfigError, match=r"config\.toml: not valid TOML.*line 1"):
        load_settings(path)


def test_missing_config_file(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")


def test_loopback_http_is_allowed(tmp_path: Path) -> None:
    """Plain http is fine on loopback (the emulator), never elsewhere."""
    path = write(
        tmp_path, '[workspaces.acme]\ntoken_env = "X"\nbase_url = "http://127.0.0.1:8080/"\n'
    )
    assert load_settings(path).workspaces["acme"].base_url == "http://127.0.0.1:8080"


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    """A token file's trailing newline is stripped."""
    token_file = tmp_path / "acme.token"
    token_file.write_text("s3cr3t-token\n")
    path = write(tmp_path, f'[workspaces.acme]\ntoken_file = "{token_file}"\n')
    tokens = resolve_tokens(load_settings(path), str(path))
    assert tokens["acme"].get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(tokens)


@pytest.mark.parametrize("case", ["missing-file", "unset-env", "empty-file"])
def test_unusable_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A token that cannot be read is a ConfigError naming the workspace."""
    monkeypatch.delenv("ACME_TOKEN", raising=False)
    token_file = tmp_path / "acme.token"
    if case == "empty-file":
        token_file.write_text("\n")
    source = 'token_env = "ACME_TOKEN"' if case == "unset-env" else f'token_file = "{token_file}"'
    path = write(tmp_path, f"[workspaces.acme]\n{source}\n")
    with pytest.raises(ConfigError, match=r"workspaces\.acme"):
        resolve_tokens(load_settings(path), str(path))


def test_validation_errors_never_echo_tokens(tmp_path: Path) -> None:
    """An error about a token field does not print the token."""
    path = write(tmp_path, '[workspaces.acme]\ntoken = "super-secret-value"\ntoken_env = "X"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "super-secret-value" not in str(caught.value)


def test_inline_token_in_a_readable_file_is_warned_about(tmp_path: Path) -> None:
    """A config file holding an inline token and readable by others gets a warning."""
    path = write(tmp_path, '[workspaces.acme]\ntoken = "inline-token"\n')
    settings = load_settings(path)
    assert secret_warnings(path, settings) == []
    path.chmod(0o644)
    assert "chmod 600" in secret_warnings(path, settings)[0]


def test_default_path_template_is_hive_partitioned() -> None:
    """The default layout is fully hive-partitioned: workspace=/type=/date=YYYY-MM-DD/."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from acexport.config import OutputSettings

    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2022, 3, 27, tzinfo=berlin)
    end = datetime(2022, 3, 28, tzinfo=berlin)
    path = render_path(OutputSettings().path, "acme", "page", "nightly", start, end)
    assert str(path) == (
        "workspace=acme/type=page/date=2022-03-27/page_20220327T0000_20220328T0000.jsonl"
    )


_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


@settings(max_examples=300, deadline=None)
@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([ZoneInfo(name) for name in _ZONES]),
        allow_imaginary=False,
    ),
    spec=st.lists(
        st.sampled_from(
            ["%Y", "%m", "%d", "%H", "%M", "%S", "%z", "%Z", "%j", "%%", "-", "T", "%"]
        ),
        max_size=6,
    ).map("".join),
)
def test_a_template_renders_dates_as_strftime_does(when: datetime, spec: str) -> None:
    """render_path writes the usual fields without strftime (bench/instructions.py):
    the same text as ``format(when, spec)``, for every zone, fold and directive."""
    template = "{workspace}/{from:" + spec + "}/{to}"
    assert _outcome(lambda: str(render_path(template, "w", "t", "j", when, when))) == _outcome(
        lambda: str(PurePosixPath(f"w/{format(when, spec)}/{when}"))
    )


def _outcome(render: Callable[[], str]) -> str:
    """The text, or the error's type (a lone ``%`` is strftime's to refuse or keep)."""
    try:
        return render()
    except ValueError as exc:
        return type(exc).__name__


def test_image_defaults_sit_beneath_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Precedence: -e variables > the config file > $ACEXPORT_DEFAULTS > built-in defaults."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("ACEXPORT_DEFAULTS", str(root / "config" / "container-defaults.toml"))
    silent = write(tmp_path, '[output]\ncompression = "none"\n')
    settings = load_settings(silent)
    assert settings.daemon.listen == "0.0.0.0:9464"  # the image's default
    assert settings.daemon.state_dir == Path("/var/lib/acexport")
    assert settings.output.compression == "none"
    speaking = write(tmp_path, '[daemon]\nlisten = "0.0.0.0:9999"\nlog_level = "debug"\n')
    settings = load_settings(speaking)
    assert settings.daemon.listen == "0.0.0.0:9999"  # the file wins
    assert settings.daemon.log_format == "json"  # the image's, where the file is silent
    monkeypatch.setenv("ACEXPORT_DAEMON__LISTEN", "127.0.0.1:1234")
    assert load_settings(speaking).daemon.listen == "127.0.0.1:1234"  # -e wins


def test_a_broken_defaults_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A defaults file that is not TOML, or sets a bad value, is a ConfigError naming it."""
    defaults = tmp_path / "defaults.toml"
    defaults.write_text("[daemon\n")
    monkeypatch.setenv("ACEXPORT_DEFAULTS", str(defaults))
    with pytest.raises(ConfigError, match=f"{defaults}: not valid TOML"):
        load_settings(write(tmp_path, ""))
    defaults.write_text('[daemon]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match=r"defaults\.toml.*daemon\.listen"):
        load_settings(write(tmp_path, ""))


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ('[output]\nurl = "ftp://host/x"\n', "output.url", "unsupported scheme 'ftp'"),
        ('[output]\nurl = "s3://Bad_Bucket/x"\n', "output.url", "not a valid bucket name"),
        ('[output]\nurl = "s3://bucket/../x"\n', "output.url", "s3://bucket/prefix"),
        ('[output]\nurl = "file://host/x"\n', "output.url", "absolute local path"),
        ('[output.s3]\nendpoint_url = "localhost:9000"\n', "output.s3.endpoint_url", "http(s)"),
        ('[output.s3]\naccess_key_id_file = "/k"\n', "output.s3", "give both"),
        ('[output.s3]\npart_size = "1MiB"\n', "output.s3.part_size", "greater than or equal"),
    ],
)
def test_invalid_output_store_settings_are_named(
    tmp_path: Path, text: str, field: str, fragment: str
) -> None:
    """output.url and output.s3 are checked at load, each error naming its field."""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert field in str(caught.value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("url", "s3", "directory"),
    [
        (None, None, "/srv/daemon-dir"),
        ("/srv/exports", None, "/srv/exports"),
        ("file:///srv/exports", None, "/srv/exports"),
        ("s3://bucket", ("bucket", ""), None),
        ("s3://bucket/a/b/", ("bucket", "a/b/"), None),
    ],
)
def test_output_url_selects_the_store(
    tmp_path: Path, url: str | None, s3: tuple[str, str] | None, directory: str | None
) -> None:
    """A path or file:// is a local directory (daemon.output_dir's newer spelling); s3://
    a bucket."""
    text = f'[output]\nurl = "{url}"\n' if url else '[daemon]\noutput_dir = "/srv/daemon-dir"\n'
    settings = load_settings(write(tmp_path, text))
    assert settings.output.s3_location() == s3
    if directory:
        assert settings.output_dir() == Path(directory)


def test_a_relative_token_file_is_under_credentials_directory_when_systemd_sets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 25 item 2 (design section 4): with LoadCredential=, systemd sets
    $CREDENTIALS_DIRECTORY; `token_file = "acme"` names the credential there. Without
    it, a relative path is relative to the config file's directory."""
    from acexport.config import load_settings, resolve_tokens

    etc, creds = tmp_path / "etc", tmp_path / "run-credentials"
    etc.mkdir()
    creds.mkdir()
    (creds / "acme").write_text("from-credentials\n")
    (etc / "acme").write_text("beside-the-config\n")
    (etc / "acme").chmod(0o600)
    (creds / "acme").chmod(0o600)
    config = etc / "config.toml"
    config.write_text('[workspaces.acme]\ntoken_file = "acme"\n')
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    settings = load_settings(config)
    assert settings.workspaces["acme"].token_file == creds / "acme"
    assert resolve_tokens(settings, str(config))["acme"].get_secret_value() == "from-credentials"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert load_settings(config).workspaces["acme"].token_file == etc / "acme"
