"""``[[hooks]]``: who is told when a file is committed, and how (design section 4).

A hook is a command (the event on stdin), a webhook (the event POSTed, signed with
HMAC-SHA256 when a secret file is set) or an OpenLineage endpoint. Its filters say
which events it gets: ``on`` (window, snapshot) and ``jobs``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from .values import NAME, Duration, Section, is_loopback_host

EventKind = Literal["window", "snapshot"]
EVENT_KINDS: tuple[EventKind, ...] = ("window", "snapshot")


class HookSettings(Section):
    """``[[hooks]]``: one receiver told of every committed file it filters for."""

    name: str
    """The hook's name: in the ledger, status and metrics."""
    command: list[str] | None = None
    """A program and its arguments (no shell), the event on stdin; exit 0: delivered."""
    url: str | None = None
    """A webhook: the event POSTed; a 2xx answer is delivered."""
    openlineage: str | None = None
    """An OpenLineage endpoint: a COMPLETE RunEvent POSTed to its /api/v1/lineage."""
    on: list[EventKind] = Field(default_factory=lambda: list(EVENT_KINDS))
    """Which events: window, snapshot."""
    jobs: list[str] | None = None
    """Which jobs' events; none: every job."""
    secret_file: Path | None = None
    """For url: a file whose secret signs each body (X-Acexport-Signature: sha256=...)."""
    timeout: Duration = timedelta(seconds=30)
    """One attempt's limit."""
    max_age: Duration = timedelta(hours=24)
    """An event is retried until it is this old, then marked failed (tried once at
    least, however long the daemon was stopped)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError(f"hook name {value!r}: use letters, digits, '_', '.', '-'")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0].strip()):
            raise ValueError("command is a list: the program, then its arguments (no shell)")
        return value

    @field_validator("url", "openlineage")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(f"{value!r} is not https: events must not travel in clear text")
        return value

    @field_validator("on")
    @classmethod
    def _on(cls, value: list[EventKind]) -> list[EventKind]:
        if not value:
            raise ValueError("on names at least one of window, snapshot")
        return value

    @field_validator("timeout", "max_age")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> HookSettings:
        given = [n for n in ("command", "url", "openlineage") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of command, url or openlineage (got {given or 'none'})"
            )
        if self.secret_file is not None and self.url is None:
            raise ValueError("secret_file signs a url hook's requests: only with url")
        return self

    @property
    def kind(self) -> str:
        return "command" if self.command else "url" if self.url else "openlineage"

    def wants(self, job: str, kind: EventKind) -> bool:
        return kind in self.on and (self.jobs is None or job in self.jobs)

    def read_secret(self) -> SecretStr | None:
        """The signing secret, read now (files are re-read on reload)."""
        if self.secret_file is None:
            return None
        try:
            value = self.secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"hook {self.name!r}: cannot read secret_file {self.secret_file}: {exc.strerror}"
            ) from None
        if not value:
            raise ValueError(f"hook {self.name!r}: secret_file {self.secret_file} is empty")
        return SecretStr(value)

    def problems(self, jobs: set[str]) -> list[str]:
        """What check-config refuses beyond the model: a program that cannot run, a
        secret that cannot be read, a job that does not exist."""
        found = []
        if self.command:
            program = self.command[0]
            path = shutil.which(program) if os.sep not in program else program
            if path is None or not os.access(path, os.X_OK) or Path(path).is_dir():
                found.append(f"hook {self.name!r}: {program!r} is not an executable program")
        try:
            self.read_secret()
        except ValueError as exc:
            found.append(str(exc))
        if self.openlineage and importlib.util.find_spec("openlineage") is None:
            found.append(
                f"hook {self.name!r}: OpenLineage events need the openlineage-python client: "
                "pip install 'acexport[openlineage]'"
            )
        for job in self.jobs or ():
            if job not in jobs:
                found.append(f"hook {self.name!r}: unknown job {job!r}")
        return found


def counted_since(hooks: list[HookSettings], now: float) -> float:
    """Since when deliveries and failures are counted (status, the page, /healthz,
    the metrics alike): the longest ``max_age`` of the hooks."""
    return now - max((hook.max_age.total_seconds() for hook in hooks), default=0.0)
