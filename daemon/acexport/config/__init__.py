"""Settings: one TOML file plus ``ACEXPORT_`` environment overrides, validated once.

Durations and zones are parsed here, at the edge, so the rest of the code sees
``timedelta`` and ``ZoneInfo``. Every error names the file and the field, and
never echoes a token.
"""

from .jobs import JobSettings, WorkspaceSettings
from .loading import (
    find_config,
    load_settings,
    resolve_tokens,
    secret_warnings,
)
from .models import HttpSettings, OutputSettings, Settings
from .values import parse_duration, zone_named

__all__ = [
    "HttpSettings",
    "JobSettings",
    "OutputSettings",
    "Settings",
    "WorkspaceSettings",
    "find_config",
    "load_settings",
    "parse_duration",
    "resolve_tokens",
    "secret_warnings",
    "zone_named",
]
