"""Loading settings: where the config file is, TOML beneath defaults, the
environment over both, validation errors that name the field, and the tokens.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    SecretStr,
    ValidationError,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    SettingsError,
)

from ..errors import ConfigError
from .models import _FILE_DATA, Settings

DEFAULT_CONFIG_PATHS = (Path("acexport.toml"), Path("/etc/acexport/config.toml"))


def find_config(explicit: str | None) -> Path | None:
    """``--config``, then ``$ACEXPORT_CONFIG``, then the default locations."""
    if explicit:
        return Path(explicit)
    if os.environ.get("ACEXPORT_CONFIG"):
        return Path(os.environ["ACEXPORT_CONFIG"])
    return next((p for p in DEFAULT_CONFIG_PATHS if p.exists()), None)


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
        message = "unknown field"
    secret = any("token" in str(part) for part in error["loc"])
    value = error.get("input")
    shown = isinstance(value, str | int | float) and error["type"] != "extra_forbidden"
    if shown and not secret and repr(value) not in message:
        message += f" (got {value!r})"
    return f"{location}: {message}"


# Not settings: where the config is, and where defaults beneath it are (a container's).
_LOCATION_VARIABLES = {"ACEXPORT_CONFIG", "ACEXPORT_DEFAULTS"}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


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
    if any(name.startswith("ACEXPORT_") and name not in _LOCATION_VARIABLES for name in os.environ):
        source += " (with ACEXPORT_* environment overrides)"
    data = _read_toml(path) if path is not None else {}
    defaults_path = os.environ.get("ACEXPORT_DEFAULTS")
    if defaults_path:
        data = _beneath(_read_toml(Path(defaults_path)), data)
        source += f" (over the defaults in {defaults_path})"
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


def resolve_tokens(settings: Settings, source: str) -> dict[str, SecretStr]:
    """Every workspace's token, read now; a missing one is a ConfigError naming it."""
    tokens = {}
    for name, workspace in settings.workspaces.items():
        try:
            tokens[name] = workspace.read_token()
        except ValueError as exc:
            raise ConfigError(f"{source}: workspaces.{name}: {exc}") from None
    return tokens


def _readable_by_others(path: Path) -> int | None:
    """The file's mode if group or others may read it, else None."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return mode if mode & (stat.S_IRGRP | stat.S_IROTH) else None


def token_warnings(path: Path | None, settings: Settings) -> list[str]:
    """Warnings for token sources that others may read: the config file, token files."""
    warnings = []
    if path is not None and any(w.token for w in settings.workspaces.values()):
        mode = _readable_by_others(path)
        if mode is not None:
            warnings.append(
                f"{path} holds an inline token and is readable by others "
                f"(mode {stat.filemode(mode)}); chmod 600 it or use token_file"
            )
    for name, workspace in settings.workspaces.items():
        mode = None if workspace.token_file is None else _readable_by_others(workspace.token_file)
        if mode is not None:
            warnings.append(
                f"workspaces.{name}.token_file {workspace.token_file} is readable by others "
                f"(mode {stat.filemode(mode)}); chmod 600 it"
            )
    return warnings
