"""What AC's answers mean: a status object, an error as the exception it is (auth,
rate limit, rejection, retention refusal, outage), or neither (data follows).
Plain functions over an aiohttp response and bytes; the client calls them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

from ..errors import (
    AuthError,
    BeyondRetention,
    RateLimited,
    RemoteRejected,
    ServerError,
    TransientError,
    printable,
)
from ..protocol import is_status_shaped, parse_retry_after
from ..retention import months_in
from ..windows import ExportWindow

_TRANSIENT_4XX = {408, 425, 429}

PEEK_BYTES = 64 * 1024  # a status object is far smaller; data is usually far larger


_MAX_STATUS_BYTES = 1024 * 1024  # how far a suspiciously long status is read to check it


_DEFAULT_RETRY_AFTER_S = 30.0


@dataclass(frozen=True)
class ExportStatus:
    """AC's answer while the export is not ready: PENDING, RUNNING, ERROR (or unknown)."""

    status: str
    created_date: str | None
    message: str | None


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def origin_text(url: URL) -> str:
    """``scheme://host`` with its port unless the scheme's own: errors name the origin
    that answered ("http://127.0.0.1 answered 500" hid which of several it was)."""
    return str(url.origin())


def _excerpt(body: bytes, limit: int = 200) -> str:
    """A server's error text, short: its JSON message if it has one."""
    text = body[:limit].decode("utf-8", "replace").strip()
    parsed = _load_json(body)
    if isinstance(parsed, dict):
        for key in ("message", "error", "title", "detail"):
            if isinstance(parsed.get(key), str):
                text = str(parsed[key])
                break
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_UNPARSABLE = object()


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # a 20k-deep value is no status either
        return _UNPARSABLE


def as_status(parsed: Any) -> ExportStatus | None:
    """The status object AC answers while an export is not ready, if ``parsed`` is one."""
    if not is_status_shaped(parsed):
        return None
    return ExportStatus(
        status=str(parsed["status"]).upper(),
        created_date=_remote_text(parsed.get("createdDate")),
        message=_remote_text(parsed.get("message")),
    )


def _remote_text(value: Any) -> str | None:
    return None if value is None else printable(str(value))


def _looks_like_big_status(prefix: bytes) -> bool:
    """A single-line object with a status field, longer than a status ever is."""
    return (
        len(prefix) >= PEEK_BYTES
        and prefix.lstrip().startswith(b"{")
        and b"\n" not in prefix
        and b'"status"' in prefix
    )


async def read_up_to(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


# AC's engine answers its statuses with 202 (Accepted); the controllers seen so far turn
# them into 200. Either is a status, polled alike (design section 1.1).
STATUS_CODES = (200, 202)


def _reason(response: aiohttp.ClientResponse) -> str:
    return printable(response.reason or "")


async def raise_for_error(response: aiohttp.ClientResponse, type_: str, from_ac: bool) -> None:
    """Every answer that is neither a status nor data, as the error it means."""
    status = response.status
    where = origin_text(response.url)
    if status in (401, 403) and not from_ac:
        # A storage host reached by redirect never saw the token: its signed URL
        # expired or is wrong. Asking AC again gets a fresh one.
        raise TransientError(f"{where} (storage) answered {status} {_reason(response)}")
    if status in (401, 403):
        raise AuthError(
            f"AC answered {status} {_reason(response)}: the access token is missing, "
            "expired or not allowed to export; renew it in Analytics Cloud settings"
        )
    if status == 429 or (status == 503 and "Retry-After" in response.headers):
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        when = "a pause" if retry_after is None else f"{retry_after:g}s"
        raise RateLimited(
            f"{where} answered {status}; retrying after {when}",
            retry_after if retry_after is not None else _DEFAULT_RETRY_AFTER_S,
        )
    if status >= 500:
        if from_ac:
            # Some controllers pass the engine's retention refusal on inside a 500.
            _raise_if_beyond_retention(await read_up_to(response, 4096), type_, status)
        raise ServerError(f"{where} answered {status} {_reason(response)}", status, from_ac)
    if status in _TRANSIENT_4XX or status == 416:
        raise TransientError(f"{where} answered {status} {_reason(response)}")
    if status >= 400:
        body = await read_up_to(response, 4096)
        if from_ac:
            _raise_if_beyond_retention(body, type_, status)
        raise RemoteRejected(f"AC rejected the {type_} export ({status}): {_excerpt(body)}")
    if status not in (*STATUS_CODES, 206):
        raise TransientError(f"{where} answered an unexpected {status} {_reason(response)}")


def _raise_if_beyond_retention(body: bytes, type_: str, status: int) -> None:
    text = _excerpt(body, 400)
    months = months_in(text)
    if months is not None:
        raise BeyondRetention(f"AC refused the {type_} export ({status}): {text}", months)


async def status_in(
    response: aiohttp.ClientResponse, prefix: bytes, type_: str, window: ExportWindow
) -> tuple[bytes, ExportStatus | None]:
    """The status a 200 answer holds, if it is one; the bytes read so far either way."""
    where = origin_text(response.url)
    if _looks_like_big_status(prefix):
        prefix += await read_up_to(response, _MAX_STATUS_BYTES)
        if response.content.at_eof() and as_status(_load_json(prefix)) is not None:
            raise TransientError(f"{where} answered an oversized status ({len(prefix)} bytes)")
    small = len(prefix) < PEEK_BYTES and response.content.at_eof()
    if small and prefix.lstrip().startswith(b"{"):
        parsed = _load_json(prefix)
        answer = as_status(parsed)
        if answer is not None:
            _check_status_matches(parsed, type_, window)
            return prefix, answer
        unparsable = parsed is _UNPARSABLE
        if unparsable and b'"status"' in prefix and b"\n" not in prefix.strip():
            raise TransientError(f"{where} answered a malformed status: {_excerpt(prefix)}")
    return prefix, None


def _check_status_matches(parsed: dict[str, Any], type_: str, window: ExportWindow) -> None:
    """A status for another type or window is not ours to trust."""
    answered_type = str(parsed.get("type", type_)).lower()
    if answered_type != type_:
        raise TransientError(f"AC answered a status for type {answered_type!r}, not {type_!r}")
    for key, wanted in (("fromDate", window.start), ("toDate", window.last_instant)):
        value = parsed.get(key)
        if not isinstance(value, str):
            continue
        try:
            answered = datetime.fromisoformat(value)
        except ValueError:
            raise TransientError(f"AC answered a status with a malformed {key}") from None
        if answered.tzinfo is None or abs((answered - wanted).total_seconds()) > 0.001:
            raise TransientError(
                f"AC answered a status for {key}={printable(value)}, not the requested window"
            )
