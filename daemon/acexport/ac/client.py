"""The AC export API client: one request answers a status, a payload, or an error.

It knows HTTP and AC's answers, nothing of files. Every failure is classified
into ``errors``: the caller decides what to do with it, in one place.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pydantic import SecretStr
from yarl import URL

from ..errors import (
    AuthError,
    BeyondRetention,
    PayloadError,
    PayloadTooLarge,
    RateLimited,
    RemoteRejected,
    ServerError,
    TransientError,
    Unreachable,
    printable,
)
from ..limits import DEFAULT_INFLATE_RATIO, INFLATE_SLACK_BYTES
from ..protocol import is_status_shaped
from ..retention import months_in
from ..windows import ExportWindow
from .serverclock import ServerClock

_PEEK_BYTES = 64 * 1024  # a status object is far smaller; data is usually far larger
_MAX_STATUS_BYTES = 1024 * 1024  # how far a suspiciously long status is read to check it
_MAX_REDIRECTS = 5
_READ_BUFFER_BYTES = 1024 * 1024  # aiohttp pauses the socket past twice this
_TRANSIENT_4XX = {408, 425, 429}
_DEFAULT_RETRY_AFTER_S = 30.0


@dataclass
class TokenTrust:
    """Whether AC has accepted a token yet.

    AC answers a bad token with an undocumented status, plausibly a 500; so 5xx
    answers to a token that never worked point at the token, not at an outage.
    """

    proven: bool = False


@dataclass(frozen=True)
class ExportStatus:
    """AC's answer while the export is not ready: PENDING, RUNNING, ERROR (or unknown)."""

    status: str
    created_date: str | None
    message: str | None


@dataclass
class Payload:
    """A ready export's body, starting at byte ``offset`` of the whole payload."""

    response: aiohttp.ClientResponse
    prefix: bytes
    offset: int
    total_bytes: int | None
    resumable: bool
    max_inflate_ratio: int = DEFAULT_INFLATE_RATIO
    declared_zip: bool = False  # Content-Type: application/zip: anything else is damage

    def _check_inflation(self) -> None:
        """A Content-Encoding body may not expand without bound (a gzip bomb)."""
        stream = self.response.content
        wire = max(stream.total_raw_bytes, INFLATE_SLACK_BYTES)
        if stream.total_bytes > self.max_inflate_ratio * wire:
            raise PayloadTooLarge(
                f"the {self.response.headers.get('Content-Encoding')} body inflates more than "
                f"{self.max_inflate_ratio} times (http.max_inflate_ratio); nothing was kept"
            )

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; a cut connection is a TransientError."""
        received = len(self.prefix)
        if self.prefix:
            yield self.prefix
        try:
            # readany hands over aiohttp's buffered chunks as they are, without joining.
            encoded = "Content-Encoding" in self.response.headers
            while chunk := await self.response.content.readany():
                received += len(chunk)
                if encoded:
                    self._check_inflation()
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"download cut: {_describe(exc)}") from None
        if received == 0 and self.offset == 0 and self.response.content_length != 0:
            # AC's failure while streaming ends the body cleanly, possibly before any
            # byte; only an explicit Content-Length: 0 (legacy raw bodies) is an empty export.
            raise PayloadError("AC answered 200 with an empty body")


def origin(url: str | URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: a token is only ever sent back to the same origin."""
    parsed = URL(url) if isinstance(url, str) else url
    return parsed.scheme, (parsed.host or "").lower(), parsed.port


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: an integer, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


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
        len(prefix) >= _PEEK_BYTES
        and prefix.lstrip().startswith(b"{")
        and b"\n" not in prefix
        and b'"status"' in prefix
    )


async def _read_up_to(response: aiohttp.ClientResponse, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


class ExportClient:
    """One workspace's view of ``GET /api/reports/export/{type}``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: SecretStr,
        on_response: Callable[[int], None] | None = None,
        server_clock: ServerClock | None = None,
        trust: TokenTrust | None = None,
        max_inflate_ratio: int = DEFAULT_INFLATE_RATIO,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._token = token
        self._origin = origin(self._base)
        self._on_response = on_response  # sees every HTTP status, for metrics
        self._server_clock = server_clock  # told AC's time by each of its answers
        self.trust = trust or TokenTrust()
        self._max_inflate_ratio = max_inflate_ratio

    def url(self, type_: str, window: ExportWindow) -> URL:
        return URL(f"{self._base}/api/reports/export/{type_}").with_query(
            fromDate=window.from_date, toDate=window.to_date
        )

    @asynccontextmanager
    async def request(
        self, type_: str, window: ExportWindow, *, range_start: int = 0
    ) -> AsyncIterator[ExportStatus | Payload]:
        """Ask once; yields the status or the payload (released on exit).

        Raises AuthError, RemoteRejected, RateLimited or TransientError.
        """
        url = self.url(type_, window)
        response, from_ac = await self._get_following_redirects(url, range_start)
        try:
            yield await self._classify(response, type_, window, range_start, from_ac)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"reading AC's answer failed: {_describe(exc)}") from None
        finally:
            response.release()

    async def _get_following_redirects(
        self, url: URL, range_start: int
    ) -> tuple[aiohttp.ClientResponse, bool]:
        """The final answer, and whether it came from AC with the token sent.

        The token goes only to AC's origin, and never again once a redirect has
        left it (on A -> B -> A, B chose the last URL). https -> http is refused.
        """
        left_ac = False
        for _ in range(_MAX_REDIRECTS + 1):
            at_ac = not left_ac and origin(url) == self._origin
            headers = {"Accept": "application/zip, application/json, application/x-ndjson, */*"}
            if at_ac:
                headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
            if range_start:
                headers["Range"] = f"bytes={range_start}-"
            try:
                response = await self._session.get(url, headers=headers, allow_redirects=False)
            except aiohttp.ClientConnectorError as exc:
                raise Unreachable(
                    f"cannot connect to {url.scheme}://{url.host}:{url.port}: {_describe(exc)}"
                ) from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise TransientError(
                    f"cannot reach {url.scheme}://{url.host}:{url.port}: {_describe(exc)}"
                ) from None
            if self._on_response is not None:
                self._on_response(response.status)
            if at_ac and self._server_clock is not None:
                self._server_clock.observe(response.headers.get("Date"))
            if response.status < 400 and at_ac:
                self.trust.proven = True  # AC's own origin accepted the token
            if response.status not in (301, 302, 303, 307, 308):
                return response, at_ac
            location = response.headers.get("Location")
            response.release()
            if not location:
                raise TransientError(f"redirect {response.status} without a Location")
            url = _redirect_target(url, location)
            left_ac = left_ac or origin(url) != self._origin
        raise TransientError(f"more than {_MAX_REDIRECTS} redirects")

    async def _classify(
        self,
        response: aiohttp.ClientResponse,
        type_: str,
        window: ExportWindow,
        range_start: int,
        from_ac: bool,
    ) -> ExportStatus | Payload:
        await _raise_for_error(response, type_, from_ac)
        where = f"{response.url.scheme}://{response.url.host}"
        content_type = response.headers.get("Content-Type", "").lower()
        encoded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        resumable = response.headers.get("Accept-Ranges", "").lower() == "bytes" and not encoded
        declared_zip = content_type.startswith("application/zip")
        if response.status == 200 and declared_zip:
            # AC's data, said by its type: no need to look for a status in it.
            return Payload(
                response,
                b"",
                0,
                response.content_length,
                resumable,
                self._max_inflate_ratio,
                declared_zip,
            )
        prefix = await _read_up_to(response, _PEEK_BYTES)
        if "text/html" in content_type or prefix.lstrip()[:1] == b"<":
            raise TransientError(f"{where} answered an HTML page instead of data")
        if response.status in _STATUS_CODES:
            prefix, answer = await _status_in(response, prefix, type_, window)
            if answer is not None:
                return answer
            if response.status == 202:
                raise TransientError(f"{where} answered 202 without a status")
        offset = 0
        if response.status == 206:
            offset = _content_range_start(response.headers.get("Content-Range"))
            if offset != range_start:
                raise TransientError(f"asked for byte {range_start}, got a range from {offset}")
        total = response.content_length
        return Payload(
            response,
            prefix,
            offset,
            None if total is None else offset + total,
            resumable,
            self._max_inflate_ratio,
            declared_zip,
        )


# AC's engine answers its statuses with 202 (Accepted); the controllers seen so far turn
# them into 200. Either is a status, polled alike (design section 1.1).
_STATUS_CODES = (200, 202)


def _reason(response: aiohttp.ClientResponse) -> str:
    return printable(response.reason or "")


async def _raise_for_error(response: aiohttp.ClientResponse, type_: str, from_ac: bool) -> None:
    """Every answer that is neither a status nor data, as the error it means."""
    status = response.status
    where = f"{response.url.scheme}://{response.url.host}"
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
            _raise_if_beyond_retention(await _read_up_to(response, 4096), type_, status)
        raise ServerError(f"{where} answered {status} {_reason(response)}", status, from_ac)
    if status in _TRANSIENT_4XX or status == 416:
        raise TransientError(f"{where} answered {status} {_reason(response)}")
    if status >= 400:
        body = await _read_up_to(response, 4096)
        if from_ac:
            _raise_if_beyond_retention(body, type_, status)
        raise RemoteRejected(f"AC rejected the {type_} export ({status}): {_excerpt(body)}")
    if status not in (*_STATUS_CODES, 206):
        raise TransientError(f"{where} answered an unexpected {status} {_reason(response)}")


def _raise_if_beyond_retention(body: bytes, type_: str, status: int) -> None:
    text = _excerpt(body, 400)
    months = months_in(text)
    if months is not None:
        raise BeyondRetention(f"AC refused the {type_} export ({status}): {text}", months)


async def _status_in(
    response: aiohttp.ClientResponse, prefix: bytes, type_: str, window: ExportWindow
) -> tuple[bytes, ExportStatus | None]:
    """The status a 200 answer holds, if it is one; the bytes read so far either way."""
    where = f"{response.url.scheme}://{response.url.host}"
    if _looks_like_big_status(prefix):
        prefix += await _read_up_to(response, _MAX_STATUS_BYTES)
        if response.content.at_eof() and as_status(_load_json(prefix)) is not None:
            raise TransientError(f"{where} answered an oversized status ({len(prefix)} bytes)")
    small = len(prefix) < _PEEK_BYTES and response.content.at_eof()
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


def _redirect_target(current: URL, location: str) -> URL:
    """Where a redirect points, if it is safe to follow."""
    try:
        target = current.join(URL(location))
        host = target.host
    except ValueError:
        raise TransientError("redirect to a malformed URL") from None
    if target.scheme not in ("http", "https") or not host:
        raise RemoteRejected(f"redirect to a non-HTTP URL (scheme {target.scheme!r})")
    if current.scheme == "https" and target.scheme == "http":
        raise RemoteRejected(
            f"refusing a redirect from https to http://{host}: the data would travel in clear"
        )
    if target.user is not None or target.password is not None:
        raise RemoteRejected(f"refusing a redirect to a URL with credentials (host {host})")
    return target


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


def _content_range_start(value: str | None) -> int:
    """Where a ``Content-Range: bytes a-b/n`` starts; -1 when absent or unreadable."""
    if value is None:
        return -1
    unit, _, rest = value.partition(" ")
    try:
        return int(rest.split("-", 1)[0]) if unit == "bytes" else -1
    except ValueError:
        return -1


def client_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """Per-connect and per-read limits; no total, since a download may take long."""
    return aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)


def new_session(timeout_s: float) -> aiohttp.ClientSession:
    # A 1 MiB buffer: big enough that the sink gets few, large batches, small enough
    # to keep peak RSS near 60 MB (4 MiB cost 30 MB more for no speed).
    return aiohttp.ClientSession(
        timeout=client_timeout(timeout_s),
        read_bufsize=_READ_BUFFER_BYTES,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )
