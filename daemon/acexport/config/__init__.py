"""Settings: one TOML file plus ``ACEXPORT_`` environment overrides, validated once.

Durations and zones are parsed here, at the edge, so the rest of the code sees
``timedelta`` and ``ZoneInfo``. Every error names the file and the field, and
never echoes a token.
"""

from .loading import (
    DEFAULT_CONFIG_PATHS,
    find_config,
    load_settings,
    resolve_tokens,
    token_warnings,
)
from .models import (
    DaemonSettings,
    HttpSettings,
    JobSettings,
    OutputSettings,
    S3Settings,
    Settings,
    WorkspaceSettings,
    is_loopback_host,
    parse_duration,
    zone_named,
)

__all__ = [
    "DEFAULT_CONFIG_PATHS",
    "DaemonSettings",
    "HttpSettings",
    "JobSettings",
    "OutputSettings",
    "S3Settings",
    "Settings",
    "WorkspaceSettings",
    "find_config",
    "is_loopback_host",
    "load_settings",
    "parse_duration",
    "resolve_tokens",
    "token_warnings",
    "zone_named",
]
