"""The AC export API client: one request answers a status, a payload, or an error.

It knows HTTP and AC's answers, nothing of files. Every failure is classified
into ``errors``: the caller decides what to do with it, in one place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from pydantic import SecretStr
from yarl import URL

from ..errors import (
    PayloadError,
    PayloadTooLarge,
    RemoteRejected,
    TransientError,
    Unreachable,
)
from ..limits import DEFAULT_INFLATE_RATIO, INFLATE_SLACK_BYTES
from ..windows import ExportWindow
from .answers import (
    PEEK_BYTES,
    STATUS_CODES,
    ExportStatus,
    describe,
    origin_text,
    raise_for_error,
    read_up_to,
    status_in,
)
from .serverclock import ServerClock

__all__ = [
    "ExportClient",
    "ExportStatus",
    "Payload",
    "TokenTrust",
    "new_session",
    "origin",
]

_MAX_REDIRECTS = 5
_READ_BUFFER_BYTES = 1024 * 1024  # aiohttp pauses the socket past twice this


@dataclass
class TokenTrust:
    """Whether AC has accepted a token yet.

    AC answers a bad token with an undocumented status, plausibly a 500; so 5xx
    answers to a token that never worked point at the token, not at an outage.
    """

    proven: bool = False


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
            raise TransientError(f"download cut: {describe(exc)}") from None
        if received == 0 and self.offset == 0 and self.response.content_length != 0:
            # AC's failure while streaming ends the body cleanly, possibly before any
            # byte; only an explicit Content-Length: 0 (legacy raw bodies) is an empty export.
            raise PayloadError("AC answered 200 with an empty body")


def origin(url: str | URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: a token is only ever sent back to the same origin."""
    parsed = URL(url) if isinstance(url, str) else url
    return parsed.scheme, (parsed.host or "").lower(), parsed.port


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
        self._url: tuple[tuple[str, str, str], URL] | None = None

    def url(self, type_: str, window: ExportWindow) -> URL:
        # An export asks for one URL at every poll: built once (yarl's parsing and
        # quoting were 7% of a request's time on the loop at a thousand workspaces).
        key = (type_, window.from_date, window.to_date)
        if self._url is None or self._url[0] != key:
            url = URL(f"{self._base}/api/reports/export/{type_}").with_query(
                fromDate=window.from_date, toDate=window.to_date
            )
            self._url = (key, url)
        return self._url[1]

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
            raise TransientError(f"reading AC's answer failed: {describe(exc)}") from None
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
                    f"cannot connect to {url.scheme}://{url.host}:{url.port}: {describe(exc)}"
                ) from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise TransientError(
                    f"cannot reach {url.scheme}://{url.host}:{url.port}: {describe(exc)}"
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
        await raise_for_error(response, type_, from_ac)
        where = origin_text(response.url)
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
        prefix = await read_up_to(response, PEEK_BYTES)
        if "text/html" in content_type or prefix.lstrip()[:1] == b"<":
            raise TransientError(f"{where} answered an HTML page instead of data")
        if response.status in STATUS_CODES:
            prefix, answer = await status_in(response, prefix, type_, window)
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
    # No cookie jar: AC's API authenticates by token, and a cookie set by AC or a host
    # it redirects to is neither kept nor sent back (nor filtered for every request).
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=client_timeout(timeout_s),
        read_bufsize=_READ_BUFFER_BYTES,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )
