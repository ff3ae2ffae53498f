"""The values settings are made of: durations, month counts, sizes, names, zones,
loopback hosts; parsed at the edge so the rest of the code sees ``timedelta`` and
``ZoneInfo``, and the frozen, strict base of every section."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
)

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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


def not_a_bool(value: Any) -> Any:
    # pydantic's lax mode takes true as 1: "max_payload = true" would cap every
    # export at one byte. A number is written as a number (or a string of one).
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Count = Annotated[int, BeforeValidator(not_a_bool)]


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
Size = Annotated[ByteSize, BeforeValidator(not_a_bool), Field(gt=0)]


def positive(value: timedelta, name: str) -> timedelta:
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


class Section(BaseModel):
    # Each field's docstring is its description: docs/configuration.md is made of them.
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
