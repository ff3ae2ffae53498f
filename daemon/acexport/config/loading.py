"""Loading settings: where the config file is, TOML beneath defaults, the
environment over both, validation errors that name the field, and the tokens.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    SecretStr,
    ValidationError,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    SettingsError,
)

from ..errors import ConfigError
from .jobs import WorkspaceSettings
from .models import _FILE_DATA, S3Settings, Settings

DEFAULT_CONFIG_PATHS = (Path("acexport.toml"), Path("/etc/acexport/config.toml"))


def find_config(explicit: str | None) -> Path | None:
    """``--config``, then ``$ACEXPORT_CONFIG``, then the default locations."""
    if explicit:
        return Path(explicit)
    if os.environ.get("ACEXPORT_CONFIG"):
        return Path(os.environ["ACEXPORT_CONFIG"])
    return next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """``; did you mean 'schedule'?`` for a misspelt key (or ``[[job]]`` for
    ``[[jobs]]``): the closest field of the model at that place in the file."""
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue  # a list index or a workspace's name: the item's model stays
        inner = [field.annotation, *typing.get_args(field.annotation)]
        models = [t for t in inner if isinstance(t, type) and issubclass(t, BaseModel)]
        if not models:
            return ""
        model = models[-1]
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(error: ErrorDetails, data: dict[str, Any]) -> str:
    parts = [str(part) for part in error["loc"]]
    if len(parts) >= 2 and parts[0] == "jobs" and parts[1].isdigit():
        # jobs.3.window -> jobs[3] (nightly).window: name the job, not just its index.
        index = int(parts[1])
        raw = data.get("jobs")
        jobs: list[Any] = raw if isinstance(raw, list) else []
        entry = jobs[index] if index < len(jobs) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        parts[:2] = [f"jobs[{index}]" + (f" ({name})" if name else "")]
    location = ".".join(parts) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field" + _did_you_mean(error["loc"])
    secret = any("token" in str(part) for part in error["loc"])
    value = error.get("input")
    shown = isinstance(value, str | int | float) and error["type"] != "extra_forbidden"
    if shown and not secret and repr(value) not in message:
        message += f" (got {value!r})"
    return f"{location}: {message}"


# Not settings: where the config is, and where defaults beneath it are (a container's).
_LOCATION_VARIABLES = {"ACEXPORT_CONFIG", "ACEXPORT_DEFAULTS"}


def _read_toml(path: Path) -> dict[str, Any]:
    """A config file's data, its relative paths made relative to its directory."""
    try:
        with path.open("rb") as handle:
            return _anchored(tomllib.load(handle), path.absolute().parent)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _anchored(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative paths in a file are relative to the file's directory, as in Prometheus
    and compose: never to the working directory (``/`` under systemd); relative
    credential files under ``$CREDENTIALS_DIRECTORY`` when systemd set it. ``~`` is the
    validators' (it means the same wherever it is written)."""

    # systemd's LoadCredential= puts secrets in $CREDENTIALS_DIRECTORY: a relative
    # credential file is named there (design section 4), the config's directory otherwise.
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    secrets_base = Path(credentials) if credentials else base

    def anchor(table: Any, key: str, url: bool = False, under: Path = base) -> None:
        value = table.get(key) if isinstance(table, dict) else None
        if not isinstance(value, str) or not value or value.startswith("~"):
            return
        if url and len(urlsplit(value).scheme) > 1:
            return  # s3:// or file:// (file:// is absolute)
        if not Path(value).is_absolute():
            table[key] = str(under / value)

    daemon, output = data.get("daemon"), data.get("output")
    for key in ("state_dir", "output_dir"):
        anchor(daemon, key)
    anchor(output, "url", url=True)
    s3 = output.get("s3") if isinstance(output, dict) else None
    for key in ("access_key_id_file", "secret_access_key_file", "session_token_file"):
        anchor(s3, key, under=secrets_base)
    workspaces = data.get("workspaces")
    for workspace in workspaces.values() if isinstance(workspaces, dict) else ():
        anchor(workspace, "token_file", under=secrets_base)
    hooks = data.get("hooks")
    for hook in hooks if isinstance(hooks, list) else ():
        anchor(hook, "secret_file", under=secrets_base)
        command = hook.get("command") if isinstance(hook, dict) else None
        if isinstance(command, list) and command and isinstance(command[0], str):
            program = command[0]  # a path (not a name looked up in PATH) is the file's
            if "/" in program and not program.startswith("~") and not Path(program).is_absolute():
                command[0] = str(base / program)
    return data


# The two spellings of a local output: the higher source wins whichever it uses.
_OUTPUT_SPELLINGS = (("daemon", "output_dir"), ("output", "url"))


def _output_spellings(data: dict[str, Any], source: str) -> int:
    """How many spellings of the output ``data`` gives; both at once is an error."""
    given = [
        f"{section}.{key}"
        for section, key in _OUTPUT_SPELLINGS
        if isinstance(data.get(section), dict) and key in data[section]
    ]
    if len(given) > 1:
        raise ConfigError(
            f"{source}: give output.url or daemon.output_dir (its older spelling), not both"
        )
    return len(given)


def _without_output(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without either spelling of the output: a higher source gave one."""
    trimmed = dict(data)
    for section, key in _OUTPUT_SPELLINGS:
        if isinstance(trimmed.get(section), dict):
            trimmed[section] = {k: v for k, v in trimmed[section].items() if k != key}
    return trimmed


def _beneath(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``defaults`` filling in what it leaves out, table by table."""
    merged = dict(defaults)
    for key, value in data.items():
        below = merged.get(key)
        if isinstance(value, dict) and isinstance(below, dict):
            merged[key] = _beneath(below, value)
        else:
            merged[key] = value
    return merged


def load_settings(path: Path | None) -> Settings:
    """Read, merge with the environment and validate; raises ConfigError.

    Precedence, highest first: ``ACEXPORT_*`` environment variables, the config
    file, the defaults file named by ``$ACEXPORT_DEFAULTS`` (a container image's),
    the built-in defaults.
    """
    source = str(path) if path else "environment"
    data = _read_toml(path) if path is not None else {}
    in_file = _output_spellings(data, source)
    defaults_path = os.environ.get("ACEXPORT_DEFAULTS")
    if defaults_path:
        defaults = _read_toml(Path(defaults_path))
        _output_spellings(defaults, defaults_path)
        data = _beneath(_without_output(defaults) if in_file else defaults, data)
        source += f" (over the defaults in {defaults_path})"
    overrides = check_environment(data)
    if overrides:
        source += " (with ACEXPORT_* environment overrides)"
    if _output_spellings(_environment_tree(overrides), "the environment"):
        data = _without_output(data)
    token = _FILE_DATA.set(data)
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = [f"{source}: {_describe(e, data)}" for e in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None
    except SettingsError as exc:
        # A malformed JSON override, e.g. ACEXPORT_WORKSPACES='{'.
        found = re.search(r'field "(\w+)"', str(exc))
        variable = f"ACEXPORT_{found.group(1).upper()}" if found else "an ACEXPORT_* variable"
        raise ConfigError(f"{source}: {variable} is not valid JSON") from None
    finally:
        _FILE_DATA.reset(token)
    return settings


def _setting_names() -> dict[str, str]:
    """Every ACEXPORT_* variable that names a setting (upper case) -> its dotted path;
    ``*`` stands for a workspace's name."""
    names = {section: section for section in Settings.model_fields}
    for section in ("daemon", "http", "output"):
        model = Settings.model_fields[section].annotation
        for field in getattr(model, "model_fields", {}):
            names[f"{section}__{field}"] = f"{section}.{field}"
    for field in S3Settings.model_fields:
        names[f"output__s3__{field}"] = f"output.s3.{field}"
    for field in WorkspaceSettings.model_fields:
        names[f"workspaces__*__{field}"] = f"workspaces.*.{field}"
    return {f"ACEXPORT_{name.upper()}": path for name, path in names.items()}


def check_environment(data: dict[str, Any]) -> list[str]:
    """The ACEXPORT_* variables that override settings; ConfigError for any other.

    A misspelt name (``ACEXPORT_HTTP_MAX_PAYLOAD``, one underscore) would otherwise be
    ignored in silence, and the operator would believe it applied.
    """
    known = _setting_names()
    token_envs = {
        str(ws.get("token_env"))
        for ws in (data.get("workspaces") or {}).values()
        if isinstance(ws, dict)
    }
    overrides = []
    for name in sorted(os.environ):
        if not name.upper().startswith("ACEXPORT_") or name in _LOCATION_VARIABLES:
            continue
        if name in token_envs:
            continue  # a token, named by a workspace's token_env
        parts = name.upper().removeprefix("ACEXPORT_").split("__")
        if parts[0] == "WORKSPACES" and len(parts) == 3:
            parts[1] = "*"  # a workspace's name
        whole_workspace = len(parts) == 2 and parts[0] == "WORKSPACES"  # as JSON
        if "ACEXPORT_" + "__".join(parts) in known or whole_workspace:
            overrides.append(name)
            continue
        close = difflib.get_close_matches(name.upper(), list(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(
            f"the environment variable {name} is not an acexport setting{hint}; "
            "settings are ACEXPORT_<SECTION>__<FIELD>, e.g. ACEXPORT_HTTP__POLL_MAX"
        )
    return overrides


def _environment_tree(names: list[str]) -> dict[str, Any]:
    """The sections and fields the variables ``names`` set (values not needed)."""
    tree: dict[str, Any] = {}
    for name in names:
        section, _, field = name.upper().removeprefix("ACEXPORT_").lower().partition("__")
        tree.setdefault(section, {})
        if field:
            tree[section][field] = True
    return tree


def resolve_tokens(settings: Settings, source: str) -> dict[str, SecretStr]:
    """Every workspace's token, read now; a missing one is a ConfigError naming it.
    The hooks' secrets and programs are checked too (each a ConfigError)."""
    tokens = {}
    for name, workspace in settings.workspaces.items():
        try:
            tokens[name] = workspace.read_token()
        except ValueError as exc:
            raise ConfigError(
                f"{source}: workspaces.{name}: {exc}{_credential_hint(name, workspace)}"
            ) from None
    problems = settings.hook_problems()
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return tokens


def _credential_hint(name: str, workspace: WorkspaceSettings) -> str:
    """How to run a command that needs the token on a systemd host, where the token
    file is the service's credential (under ``$CREDENTIALS_DIRECTORY`` only for it)."""
    if workspace.token_file is None or os.environ.get("CREDENTIALS_DIRECTORY"):
        return ""
    return (
        f". On a systemd host a token_file is the service's credential: run the command "
        f"as the service would, e.g. `systemd-run -P --property=LoadCredential={name}:"
        f"/etc/acexport/credentials/{name} acexport ...` (or give the token with "
        "--token-file for a one-off export); status, verify, dry runs and cancels need none"
    )


def _readable_by_others(path: Path) -> int | None:
    """The file's mode if others may read it, else None. A group that this process
    belongs to does not count: a secret shared with the service through its group
    (0640 root:acexport on a host, Kubernetes' fsGroup on a Secret volume) is how it
    is meant to be read."""
    try:
        info = path.stat()
    except OSError:
        return None
    ours = info.st_gid == os.getegid() or info.st_gid in os.getgroups()
    group_may_read = bool(info.st_mode & stat.S_IRGRP) and not ours
    return info.st_mode if info.st_mode & stat.S_IROTH or group_may_read else None


def secret_warnings(path: Path | None, settings: Settings) -> list[str]:
    """Warnings for secrets that others may read: the config file with an inline
    token, token files, the S3 secret key and session token files."""
    warnings = []
    if path is not None and any(w.token for w in settings.workspaces.values()):
        mode = _readable_by_others(path)
        if mode is not None:
            warnings.append(
                f"{path} holds an inline token and is readable by others "
                f"(mode {stat.filemode(mode)}); chmod 600 it or use token_file"
            )
    files = {
        f"workspaces.{name}.token_file": ws.token_file for name, ws in settings.workspaces.items()
    }
    s3 = settings.output.s3
    files["output.s3.secret_access_key_file"] = s3.secret_access_key_file
    files["output.s3.session_token_file"] = s3.session_token_file
    for name, file in files.items():
        mode = None if file is None else _readable_by_others(file)
        if mode is not None:
            warnings.append(
                f"{name} {file} is readable by others (mode {stat.filemode(mode)}); chmod 600 it"
            )
    return warnings
