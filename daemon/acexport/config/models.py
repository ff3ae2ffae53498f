"""The settings models: the daemon, HTTP and output sections, and ``Settings``, the
whole file (workspaces and jobs are in jobs.py, values in values.py). The models
know no pipeline: the payload limits, the output layout and the stores are built
from them by their own packages.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    ByteSize,
    Field,
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
from .hooks import HookSettings
from .jobs import JobSettings, WorkspaceSettings
from .values import (
    NAME,
    Count,
    Duration,
    Section,
    Size,
    positive,
)


class DaemonSettings(Section):
    """``[daemon]``: the process, its state and where it reports."""

    state_dir: Path = Path("/var/lib/acexport")
    """The ledger (state.sqlite3) and private temp files; one daemon per directory."""
    output_dir: Path = Path("/var/lib/acexport/exports")
    """Where files go when output.url is not set (its older spelling)."""
    log_format: Literal["auto", "console", "json"] = "auto"
    """auto: readable lines on a terminal, JSON lines elsewhere."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The least severe log line written."""
    listen: str = "127.0.0.1:9464"
    """HOST:PORT of /healthz, /metrics and the status page; empty: no listener."""
    stop_grace: Duration = timedelta(seconds=30)
    """At SIGTERM, how long running downloads and commits (and run --once's hooks) get."""
    pickup_interval: Duration = timedelta(seconds=5)
    """How often windows another command queued in the ledger (backfill) are picked up."""
    stale_upload_age: Duration = timedelta(hours=1)
    """At start, S3 uploads a crashed run left (under the layout's keys) are aborted once
    this old: a live writer's upload is younger."""
    processes: Count = Field(default=1, ge=1, le=16)
    """Lanes spread over this many processes (this one and processes-1 workers), each
    workspace's in one: for thousands of workspaces, up to one per core. Not on reload."""
    pin_cpus: bool = False
    """Each process on one CPU of those it may use (process k on the k-th): a quarter
    less CPU for many small exports, one core for a big payload's stages. For a daemon
    with CPUs of its own (a cpuset, systemd's CPUAffinity=). Not on reload."""

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


class HttpSettings(Section):
    """``[http]``: how AC (and the output store) is asked, polled and retried."""

    poll_initial: Duration = timedelta(seconds=15)
    """The shortest wait between two polls of an export."""
    poll_max: Duration = timedelta(minutes=5)
    """The longest wait between two polls of an export."""
    timeout: Duration = timedelta(seconds=60)
    """One request's limit for connecting and for each read."""
    retry_initial: Duration = timedelta(seconds=1)
    """The first wait after a failed request (429, 5xx, a cut connection); it doubles."""
    retry_max: Duration = timedelta(minutes=1)
    """The longest wait between retries, and the most of a Retry-After honoured."""
    max_attempts: Count = Field(default=10, ge=1, le=1000)
    """Failed requests in a row before an export (or an upload) gives up."""
    unreachable_after: Duration = timedelta(seconds=60)
    """An export whose every request found nothing listening (a wrong port, a host that
    is down) fails after this long, naming host and port; the next look asks again."""
    max_ac_failures: Count = Field(default=5, ge=1, le=1000)
    """AC reporting ERROR (its export failed; it starts again) this many times in a row
    for one window ends the export."""
    max_payload: Size = ByteSize(50 * 1024**3)
    """Decoded bytes one export may have; beyond, it fails and nothing is kept."""
    max_inflate_ratio: Count = Field(default=DEFAULT_INFLATE_RATIO, ge=1)
    """How many times a gzip body or ZIP member may expand (64 KiB of slack)."""
    download_window: Duration = timedelta(hours=24)
    """How long AC keeps ready data: an export ready longer ago (the daemon was down)
    is created anew by the next request, so it holds the lane's slot."""

    def payload_limits(self) -> PayloadLimits:
        """The caps on one payload, for the sink."""
        return PayloadLimits(int(self.max_payload), self.max_inflate_ratio)

    @model_validator(mode="after")
    def _ordered(self) -> HttpSettings:
        for name in ("poll_initial", "poll_max", "timeout", "retry_initial", "retry_max"):
            positive(getattr(self, name), name)
        if self.poll_max < self.poll_initial:
            raise ValueError("poll_max must not be smaller than poll_initial")
        if self.retry_max < self.retry_initial:
            raise ValueError("retry_max must not be smaller than retry_initial")
        return self


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3Settings(Section):
    """``[output.s3]``: how to reach an ``s3://`` output. Credentials: the two files, or
    else the standard AWS chain (environment, shared credentials file, instance role)."""

    endpoint_url: str | None = None
    """The store's URL for S3-compatible stores (MinIO, SeaweedFS, R2, ...); none: AWS."""
    region: str | None = None
    """The bucket's region; none: the AWS chain's."""
    path_style: bool = False
    """The bucket in the path, not the host name (most non-AWS stores)."""
    access_key_id_file: Path | None = None
    """A file holding the access key id (with secret_access_key_file)."""
    secret_access_key_file: Path | None = None
    """A file holding the secret access key."""
    session_token_file: Path | None = None
    """A file holding a session token, for temporary credentials."""
    part_size: Size = Field(default=ByteSize(8 * 1024**2), ge=5 * 1024**2, le=5 * 1024**3)
    """Files larger than this are uploaded in parts of this size."""
    concurrency: Count = Field(default=4, ge=1, le=64)
    """Parts uploaded at once."""

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


class OutputSettings(Section):
    """``[output]``: where committed files go, named how, in what format."""

    url: str | None = None
    """A directory (a path or file://...) or s3://bucket/prefix; replaces
    daemon.output_dir (which a container's defaults may set)."""
    path: str = (
        "workspace={workspace}/type={type}/date={from:%Y-%m-%d}/"
        "{type}_{from:%Y%m%dT%H%M}_{to:%Y%m%dT%H%M}.jsonl"
    )
    """A window's file under the output: {workspace}, {type}, {job}, {from:...}, {to:...}
    (strftime, the workspace's zone); the compression's suffix is added."""
    snapshot_path: str = (
        "workspace={workspace}/type={type}/snapshot={to:%Y%m%dT%H%M%SZ}/"
        "{type}_{to:%Y%m%dT%H%M%SZ}.jsonl"
    )
    """A snapshot's file: {to} is its as-of time (the look) in UTC (Z: sortable whatever
    the zone, and across DST changes)."""
    format: OutputFormat = OutputFormat.NDJSON
    """ndjson: the records as AC served them; parquet: typed, one schema per type (the
    path's .jsonl becomes .parquet)."""
    compression: Compression = Compression.GZIP
    """gzip (every reader has it), zstd (3x smaller, as fast) or none; for parquet the
    columns' codec, zstd unless set."""
    s3: S3Settings = S3Settings()
    """``[output.s3]``: how to reach an s3:// url."""

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
    hooks: list[HookSettings] = []

    @cached_property
    def jobs_by_name(self) -> dict[str, JobSettings]:
        """Each job by its name (an export looks its job up: at a thousand jobs a scan of
        the list was a few per cent of the daemon's CPU)."""
        return {job.name: job for job in self.jobs}

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
            # Each name's length grows with the type's, and only with it: the longest
            # type is the one to check (six renders a job were half of a thousand jobs' load).
            longest = max(job.types, key=len)
            problem = name_too_long(
                self.output.path, job.workspace, longest, job.name, s3[1] if s3 else None
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

    @model_validator(mode="after")
    def _hooks_fit(self) -> Settings:
        names = [hook.name for hook in self.hooks]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"hooks: the name {twice[0]!r} is used twice")
        return self

    def hook_problems(self) -> list[str]:
        """What a hook needs beyond its model: its program, its secret, its jobs."""
        jobs = {job.name for job in self.jobs}
        return [problem for hook in self.hooks for problem in hook.problems(jobs)]

    def shared_snapshot_prefixes(self) -> list[str]:
        """Where two jobs take snapshots of one type of one workspace under one prefix
        (snapshot_path without {job}): each prunes and adopts only its own (the
        manifest names the job), but a listing of the prefix mixes them."""
        if "{job" in self.output.snapshot_path:
            return []
        takers: dict[tuple[str, str], str] = {}
        shared = []
        for job in self.jobs:
            for type_ in job.snapshot_types:
                other = takers.setdefault((job.workspace, str(type_)), job.name)
                if other != job.name:
                    shared.append(
                        f"jobs {other!r} and {job.name!r} both take snapshots of {type_} of "
                        f"workspace {job.workspace!r} under one prefix: add {{job}} to "
                        "output.snapshot_path to keep each job's apart"
                    )
        return shared

    @field_validator("workspaces")
    @classmethod
    def _names(cls, value: dict[str, WorkspaceSettings]) -> dict[str, WorkspaceSettings]:
        for name in value:
            if not NAME.fullmatch(name):
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
