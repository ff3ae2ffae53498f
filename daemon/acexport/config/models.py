"""The settings models: sections, their fields and validators, durations and zones.

Durations and zones are parsed here, at the edge, so the rest of the code sees
``timedelta`` and ``ZoneInfo``. The models know no pipeline: the payload limits,
the output layout and the stores are built from them by their own packages.
"""

from __future__ import annotations

import ipaddress
import os
import re
from contextvars import ContextVar
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..formats import Compression, OutputFormat
from ..limits import DEFAULT_INFLATE_RATIO, PayloadLimits
from ..pathtemplate import check_path_template, first_collision, name_too_long
from ..protocol import ExportMode, ExportType, default_mode
from ..retention import DEFAULT_MONTHS
from ..triggers import Trigger, parse_schedule
from ..windows import check_window_length

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def parse_duration(value: Any) -> timedelta:
    """``200ms``, ``1.5s``, ``90s``, ``15m``, ``6h``, ``1d`` (or a number of seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"not a duration: {value!r} (use e.g. 200ms, 1.5s, 15m, 6h, 1d)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _not_a_bool(value: Any) -> Any:
    # pydantic's lax mode takes true as 1: "max_payload = true" would cap every
    # export at one byte. A number is written as a number (or a string of one).
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Count = Annotated[int, BeforeValidator(_not_a_bool)]


def parse_months(value: Any) -> int:
    """``"13 months"``, ``"1 month"`` or a number of months."""
    if isinstance(value, int) and not isinstance(value, bool):
        months = value
    elif isinstance(value, str) and (
        match := re.fullmatch(r"\s*(\d{1,4})\s*(months?|mo)?\s*", value, re.IGNORECASE)
    ):
        months = int(match.group(1))
    else:
        raise ValueError(f'not a number of months: {value!r} (e.g. "13 months")')
    if not 1 <= months <= 1200:
        raise ValueError(f"{months} months is out of range (1 to 1200)")
    return months


Months = Annotated[int, BeforeValidator(parse_months)]
Size = Annotated[ByteSize, BeforeValidator(_not_a_bool), Field(gt=0)]


def _positive(value: timedelta, name: str) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"{name} must be positive")
    return value


def zone_named(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (e.g. Europe/Berlin, UTC)") from None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonSettings(_Section):
    state_dir: Path = Path("/var/lib/acexport")
    output_dir: Path = Path("/var/lib/acexport/exports")
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    listen: str = "127.0.0.1:9464"
    stop_grace: Duration = timedelta(seconds=30)
    pickup_interval: Duration = timedelta(seconds=5)
    # At start, object-storage uploads a crashed run left (under the layout's keys) are
    # aborted once this old: a live writer's upload is younger.
    stale_upload_age: Duration = timedelta(hours=1)

    @field_validator("state_dir", "output_dir", mode="before")
    @classmethod
    def _a_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must name a directory, not be empty")
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("state_dir", "output_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        value = value.expanduser()
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value and not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}", value):
            raise ValueError(f"expected HOST:PORT or an empty string, got {value!r}")
        return value


class HttpSettings(_Section):
    poll_initial: Duration = timedelta(seconds=15)
    poll_max: Duration = timedelta(minutes=5)
    timeout: Duration = timedelta(seconds=60)
    retry_initial: Duration = timedelta(seconds=1)
    retry_max: Duration = timedelta(minutes=1)
    max_attempts: Count = Field(default=10, ge=1, le=1000)
    # AC reporting ERROR (its export failed; it starts again) this many times in a row
    # for one window ends the export.
    max_ac_failures: Count = Field(default=5, ge=1, le=1000)
    # Decoded bytes one export may have (``500MB``, ``1GiB`` or a byte count), and how
    # much a gzip or ZIP body may expand: beyond either, the export fails, nothing kept.
    max_payload: Size = ByteSize(50 * 1024**3)
    max_inflate_ratio: Count = Field(default=DEFAULT_INFLATE_RATIO, ge=1)
    # How long AC keeps ready data. A ready export older than this (the daemon was
    # down) will be created anew by the next request, so it must hold the lane's slot.
    download_window: Duration = timedelta(hours=24)

    def payload_limits(self) -> PayloadLimits:
        """The caps on one payload, for the sink."""
        return PayloadLimits(int(self.max_payload), self.max_inflate_ratio)

    @model_validator(mode="after")
    def _ordered(self) -> HttpSettings:
        for name in ("poll_initial", "poll_max", "timeout", "retry_initial", "retry_max"):
            _positive(getattr(self, name), name)
        if self.poll_max < self.poll_initial:
            raise ValueError("poll_max must not be smaller than poll_initial")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must not be smaller than retry_initial")
        return self


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3Settings(_Section):
    """How to reach an ``s3://`` output. Credentials: the two files, or else the
    standard AWS chain (environment, shared credentials file, instance role)."""

    endpoint_url: str | None = None  # for S3-compatible stores (MinIO, SeaweedFS, R2, ...)
    region: str | None = None
    path_style: bool = False  # bucket in the path, not the host name (most non-AWS stores)
    access_key_id_file: Path | None = None
    secret_access_key_file: Path | None = None
    session_token_file: Path | None = None
    part_size: Size = Field(default=ByteSize(8 * 1024**2), ge=5 * 1024**2, le=5 * 1024**3)
    concurrency: Count = Field(default=4, ge=1, le=64)  # parts uploaded at once

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        if parts.username or parts.password or parts.query:
            raise ValueError("endpoint_url must not carry credentials or a query")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _key_pair(self) -> S3Settings:
        if (self.access_key_id_file is None) != (self.secret_access_key_file is None):
            raise ValueError("give both access_key_id_file and secret_access_key_file, or neither")
        if self.session_token_file is not None and self.access_key_id_file is None:
            raise ValueError(
                "session_token_file needs access_key_id_file and secret_access_key_file"
            )
        return self


class OutputSettings(_Section):
    # Where committed data goes: a directory (a path or file://...) or s3://bucket/prefix.
    # When set, it replaces daemon.output_dir (which a container's defaults may set).
    url: str | None = None
    path: str = (
        "workspace={workspace}/type={type}/date={from:%Y-%m-%d}/"
        "{type}_{from:%Y%m%dT%H%M}_{to:%Y%m%dT%H%M}.jsonl"
    )
    # A snapshot's file: ``to`` is its as-of time (the look), ``from`` where it starts.
    snapshot_path: str = (
        "workspace={workspace}/type={type}/snapshot={to:%Y%m%dT%H%M%S}/"
        "{type}_{to:%Y%m%dT%H%M%S}.jsonl"
    )
    # ndjson: the records as AC served them; parquet: typed, one schema per type (the
    # path's .jsonl becomes .parquet).
    format: OutputFormat = OutputFormat.NDJSON
    # gzip stays the default: every reader has it, and keys (.gz) and readers' globs of
    # existing deployments keep working; zstd is 3x smaller at the same speed. For
    # parquet it is the columns' codec, zstd unless set (``file_compression``).
    compression: Compression = Compression.GZIP
    s3: S3Settings = S3Settings()

    _check_path = field_validator("path", "snapshot_path")(
        classmethod(lambda cls, v: check_path_template(v))
    )

    @model_validator(mode="after")
    def _snapshots_apart(self) -> OutputSettings:
        # A snapshot must never land on a window's name: the window's file would be
        # replaced by a whole table, and pruning could delete a window.
        if "{to" not in self.snapshot_path:
            raise ValueError("snapshot_path must contain {to} (the snapshot's as-of time)")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip() or "\x00" in value:
            raise ValueError("must name a directory or s3://bucket/prefix")
        parts = urlsplit(value)
        if parts.scheme:  # S3:// and FILE:// are s3:// and file://, not directory names
            value = parts.scheme + value[len(parts.scheme) :]
        if parts.scheme == "s3":
            if not _BUCKET.fullmatch(parts.netloc):
                raise ValueError(f"{parts.netloc!r} is not a valid bucket name")
            if parts.query or parts.fragment or ".." in parts.path.split("/"):
                raise ValueError("an s3:// url is s3://bucket or s3://bucket/prefix")
        elif parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
                raise ValueError("a file:// url names an absolute local path (file:///srv/x)")
        elif parts.scheme and len(parts.scheme) > 1:  # (one letter: a Windows drive)
            raise ValueError(f"unsupported scheme {parts.scheme!r}: use a path or s3://")
        elif not parts.scheme:
            value = str(Path(value).expanduser())
        return value

    @property
    def file_compression(self) -> Compression:
        """How files are compressed: as set, or for parquet zstd unless set."""
        if self.format is OutputFormat.PARQUET and "compression" not in self.model_fields_set:
            return Compression.ZSTD
        return self.compression

    def s3_location(self) -> tuple[str, str] | None:
        """(bucket, prefix ending in "/" or empty) for an s3:// url, else None."""
        if self.url is None or not self.url.startswith("s3://"):
            return None
        parts = urlsplit(self.url)
        prefix = parts.path.strip("/")
        return parts.netloc, f"{prefix}/" if prefix else ""


class WorkspaceSettings(_Section):
    base_url: str = "https://analytics.liferay.com"
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    timezone: str = "UTC"
    # AC's data retention for this workspace: windows starting before it are never
    # asked for (AC refuses them); a shorter retention AC names is learned.
    retention: Months = DEFAULT_MONTHS
    # Where entity snapshots start (a date in the workspace's zone); default: the
    # retention's start, i.e. everything AC still holds.
    snapshot_from: date | None = None

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


class JobSettings(_Section):
    """A recurring export: which types of which workspace, in what windows, when."""

    name: str
    workspace: str
    types: list[ExportType] = list(ExportType)
    schedule: str = "30 2 * * *"
    window: Duration = timedelta(days=1)
    lag: Duration = timedelta(hours=2)
    catch_up: Duration = timedelta(days=7)
    start: datetime | None = None
    # A type's mode, if not the one its nature gives (event and page: windows; the
    # entity tables: snapshot).
    modes: dict[ExportType, ExportMode] = {}
    keep_snapshots: Count = Field(default=7, ge=1, le=10000)
    # Export each window once more when it is this old (page aggregates and late
    # events settle); off by default.
    restate: Duration | None = None
    # Consecutive windows of a time series that are due together (a catch-up, a
    # backfill) are asked of AC in one request of up to this span, then split locally:
    # AC works through one export per tick of its worker (5 minutes). 0 turns it off.
    coalesce_max: Duration = timedelta(days=31)

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
        if not _NAME.fullmatch(value):
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


_FILE_DATA: ContextVar[dict[str, Any] | None] = ContextVar("acexport_file_data", default=None)


class Settings(BaseSettings):
    """The whole configuration; build it with ``load_settings``."""

    model_config = SettingsConfigDict(
        env_prefix="ACEXPORT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    daemon: DaemonSettings = DaemonSettings()
    http: HttpSettings = HttpSettings()
    output: OutputSettings = OutputSettings()
    workspaces: dict[str, WorkspaceSettings] = {}
    jobs: list[JobSettings] = []

    def output_dir(self) -> Path:
        """The local output directory: output.url as a path, or daemon.output_dir."""
        url = self.output.url
        if url is None:
            return self.daemon.output_dir.absolute()
        return Path(urlsplit(url).path if url.startswith("file:") else url).absolute()

    @model_validator(mode="after")
    def _jobs_fit(self) -> Settings:
        seen: set[str] = set()
        for index, job in enumerate(self.jobs):
            where = f"jobs[{index}] ({job.name})"
            if job.name in seen:
                raise ValueError(f"{where}: the job name {job.name!r} is used twice")
            seen.add(job.name)
            if job.workspace not in self.workspaces:
                known = ", ".join(sorted(self.workspaces)) or "none"
                raise ValueError(
                    f"{where}.workspace: unknown workspace {job.workspace!r} (known: {known})"
                )
            s3 = self.output.s3_location()
            for type_ in job.types:
                problem = name_too_long(
                    self.output.path, job.workspace, type_, job.name, s3[1] if s3 else None
                )
                if problem:
                    raise ValueError(f"{where}: output.path {problem}")
            zone = self.workspaces[job.workspace].zone
            collision = first_collision(self.output.path, zone, job.window)
            if collision:
                path, earlier, later = collision
                raise ValueError(
                    f"{where}: output.path {self.output.path!r} renders {path!r} for two "
                    f"windows ({earlier.local_start.isoformat()} and "
                    f"{later.local_start.isoformat()}): the later would overwrite the earlier. "
                    "Use {from} and {to} precise enough for the job's window"
                )
        return self

    @field_validator("workspaces")
    @classmethod
    def _names(cls, value: dict[str, WorkspaceSettings]) -> dict[str, WorkspaceSettings]:
        for name in value:
            if not _NAME.fullmatch(name):
                raise ValueError(f"workspace name {name!r}: use letters, digits, '_', '.', '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file; keyword arguments override both.
        return init_settings, env_settings, InitSettingsSource(settings_cls, _FILE_DATA.get() or {})
