"""The settings of what is exported: workspaces (where AC is, its token, zone and
retention) and jobs (which types, in what windows, when)."""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from ..protocol import ExportMode, ExportType, default_mode
from ..retention import DEFAULT_MONTHS
from ..triggers import Trigger, parse_schedule
from ..windows import check_window_length
from .values import (
    NAME,
    Count,
    Duration,
    Months,
    Section,
    is_loopback_host,
    parse_duration,
    zone_named,
)


class WorkspaceSettings(Section):
    """``[workspaces.NAME]``: where one workspace's AC is, its token, zone and retention."""

    base_url: str = "https://analytics.liferay.com"
    """AC's origin for this workspace; https except on loopback."""
    token: SecretStr | None = None
    """The access token inline (the file is then reported if others can read it)."""
    token_file: Path | None = None
    """A file holding the token (under $CREDENTIALS_DIRECTORY when relative and set)."""
    token_env: str | None = None
    """The environment variable holding the token."""
    timezone: str = "UTC"
    """The zone of its windows, schedules, dates on the command line and date= folders."""
    retention: Months = DEFAULT_MONTHS
    """AC's data retention ("13 months"): windows starting before it are never asked for
    (AC refuses them); a shorter retention AC names is learned."""
    snapshot_from: date | None = None
    """Where entity snapshots start (a date in the zone); none: the retention's start,
    i.e. everything AC still holds."""

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(f"{value!r} is not https: tokens must not travel in clear text")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone_named(value)
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> WorkspaceSettings:
        given = [n for n in ("token", "token_file", "token_env") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of token_file, token_env or token (got {given or 'none'})"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def read_token(self) -> SecretStr:
        """The token, read now from its source (files are re-read on reload)."""
        if self.token is not None:
            value = self.token.get_secret_value()
        elif self.token_env is not None:
            if self.token_env not in os.environ:
                raise ValueError(f"environment variable {self.token_env} is not set")
            value = os.environ[self.token_env]
        else:
            assert self.token_file is not None
            try:
                value = self.token_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"cannot read token_file {self.token_file}: {exc.strerror}"
                ) from None
        value = value.strip()
        if not value:
            raise ValueError("the token is empty")
        if any(not char.isprintable() for char in value):
            # It would be cut into a second header line, or refused by the HTTP client.
            raise ValueError("the token contains a line break or another control character")
        return SecretStr(value)


class JobSettings(Section):
    """A recurring export: which types of which workspace, in what windows, when."""

    name: str
    """The job's name: in the ledger, manifests, metrics and commands (--job)."""
    workspace: str
    """The workspace (a [workspaces.NAME] key) it exports from."""
    types: list[ExportType] = list(ExportType)  # noqa: RUF012 - a pydantic field, copied
    """The export types; default: all six."""
    schedule: str = "30 2 * * *"
    """When it looks: a 5-field cron expression or "every 6h", in the workspace's zone."""
    window: Duration = timedelta(days=1)
    """Each window's length: a divisor of a day, or whole days."""
    lag: Duration = timedelta(hours=2)
    """How long after its end a window is due (late events reach AC)."""
    catch_up: Duration = timedelta(days=7)
    """How far back each look finds windows not exported yet."""
    start: datetime | None = None
    """No window before this is due (a date or datetime in the workspace's zone)."""
    modes: dict[ExportType, ExportMode] = {}  # noqa: RUF012 - a pydantic field, copied
    """A type's mode, if not the one its nature gives (event and page: windows; the
    entity tables: snapshot)."""
    keep_snapshots: Count = Field(default=7, ge=1, le=10000)
    """The newest snapshots of each type kept; older ones are deleted."""
    restate: Duration | None = None
    """Export each window once more when it is this old (page aggregates and late events
    settle); off by default."""
    restate_min_records: float = Field(default=0.5, ge=0.0, le=1.0)
    """A restatement serving fewer records than this share of the revision it replaces
    (an empty export from a hiccup at AC) keeps that revision and is reported; 0: off."""
    coalesce_max: Duration = timedelta(days=31)
    """Consecutive due windows of event or page are asked for in one AC request of up to
    this span, then split locally (AC starts one export per 5-minute tick); 0: off."""
    keep: Duration | None = None
    """Delete window files whose window ended longer ago than this; none: keep all."""

    def mode_of(self, type_: str) -> ExportMode:
        return self.modes.get(ExportType(type_), default_mode(type_))

    @property
    def window_types(self) -> list[ExportType]:
        """The types exported in aligned windows."""
        return [t for t in self.types if self.mode_of(t) is ExportMode.WINDOWS]

    @property
    def snapshot_types(self) -> list[ExportType]:
        """The types exported as whole-table snapshots."""
        return [t for t in self.types if self.mode_of(t) is ExportMode.SNAPSHOT]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"job name {value!r}: use letters, digits, '_', '.', '-'")
        return value

    @field_validator("types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one export type")
        if len(set(value)) != len(value):
            raise ValueError("a type is listed twice")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        return check_window_length(value)

    @model_validator(mode="after")
    def _restate_after_acs_cache(self) -> JobSettings:
        # AC serves the same stored file for 24 h after it made it: a restatement
        # sooner than lag + 1 day after the first export would fetch that file again.
        least = self.lag + timedelta(days=1)
        if self.restate is not None and self.restate <= least:
            raise ValueError(
                f"restate ({self.restate}) must exceed lag + 1 day ({least}): AC hands back "
                "the same file for 24 hours"
            )
        return self

    @model_validator(mode="after")
    def _keep_outlives_catch_up_and_restate(self) -> JobSettings:
        # A window deleted by keep that catch_up still covers would be exported again
        # at every look; one restate still wants would be restated after its deletion.
        if self.keep is None:
            return self
        if self.keep <= timedelta(0):
            raise ValueError("keep must be longer than 0s (leave it out to keep everything)")
        for name in ("catch_up", "restate"):
            other = getattr(self, name)
            if other is not None and other + self.window >= self.keep:
                raise ValueError(
                    f"keep ({self.keep}) must exceed {name} ({other}) by more than a window "
                    f"({self.window}): a window {name} still covers would be deleted and "
                    "exported again"
                )
        return self

    @model_validator(mode="after")
    def _modes_of_listed_types(self) -> JobSettings:
        stray = sorted(set(self.modes) - set(self.types))
        if stray:
            raise ValueError(f"modes names {stray}, which are not in types {self.types}")
        return self

    def windows_per_request(self, most: int) -> int:
        """How many of this job's windows one request may cover (``most`` at most)."""
        return max(1, min(most, self.coalesce_max // self.window))

    @field_validator("lag", "catch_up", "coalesce_max")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError("must not be negative")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value, ZoneInfo("UTC"), parse_duration)
        return value

    def trigger(self, zone: ZoneInfo) -> Trigger:
        return parse_schedule(self.schedule, zone, parse_duration)
