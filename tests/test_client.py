"""The API client's classification of AC's answers (aioresponses for edge cases)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aioresponses import aioresponses
from pydantic import SecretStr

from acexport.ac.client import ExportClient, ExportStatus, Payload
from acexport.errors import AuthError, RateLimited, RemoteRejected, TransientError
from acexport.protocol import parse_retry_after
from acexport.windows import ExportWindow

BASE = "https://ac.example.com"
TOKEN = "api-test-token"
WINDOW = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
URL = re.compile(r"^https://ac\.example\.com/api/reports/export/page\?.*$")
STATUS = {
    "fromDate": "2022-01-01T00:00:00.000Z",
    "createdDate": "2022-06-29T17:50:46.824Z",
    "toDate": "2022-01-01T23:59:59.999Z",
    "message": "A new data export file for this date range and type will be created.",
    "type": "PAGE",
    "status": "PENDING",
}


@pytest.fixture
async def client() -> AsyncIterator[ExportClient]:
    async with aiohttp.ClientSession() as session:
        yield ExportClient(session, BASE, SecretStr(TOKEN))


async def answer(client: ExportClient) -> ExportStatus | Payload:
    async with client.request("page", WINDOW) as result:
        if isinstance(result, Payload):
            body = b"".join([chunk async for chunk in result.chunks()])
            result.prefix = body
        return result


async def test_status_object_is_recognised(client: ExportClient) -> None:
    """The documented PENDING object is a status, with its createdDate."""
    with aioresponses() as mocked:
        mocked.get(URL, payload=STATUS)
        result = await answer(client)
    assert result == ExportStatus("PENDING", STATUS["createdDate"], STATUS["message"])


async def test_request_carries_bearer_token_and_ms_dates(client: ExportClient) -> None:
    """The request has the Bearer token and AC's millisecond UTC dates."""
    with aioresponses() as mocked:
        mocked.get(URL, payload=STATUS)
        await answer(client)
        ((_, url), calls) = next(iter(mocked.requests.items()))
    assert calls[0].kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert url.query["fromDate"] == "2022-01-01T00:00:00.000Z"
    assert url.query["toDate"] == "2022-01-01T23:59:59.999Z"


async def test_each_request_asks_for_its_own_type_and_window(client: ExportClient) -> None:
    """The URL an export polls with is built once; another window or type gets its own."""
    later = ExportWindow(datetime(2022, 1, 2, tzinfo=UTC), datetime(2022, 1, 3, tzinfo=UTC))
    asked = [
        client.url(type_, window)
        for type_, window in (("page", WINDOW), ("page", later), ("event", later), ("page", WINDOW))
    ]
    assert [(url.path.rsplit("/", 1)[1], url.query["fromDate"]) for url in asked] == [
        ("page", "2022-01-01T00:00:00.000Z"),
        ("page", "2022-01-02T00:00:00.000Z"),
        ("event", "2022-01-02T00:00:00.000Z"),
        ("page", "2022-01-01T00:00:00.000Z"),
    ]
    assert asked[1].query["toDate"] == "2022-01-02T23:59:59.999Z"  # AC's inclusive end


async def test_one_record_membership_payload_is_data_not_status(client: ExportClient) -> None:
    """A small payload whose record has a 'status' field is still data."""
    record = b'{"segmentId": "1", "individualId": "2", "status": "ACTIVE"}\n'
    with aioresponses() as mocked:
        mocked.get(URL, body=record)
        result = await answer(client)
    assert isinstance(result, Payload)
    assert result.prefix == record


@pytest.mark.parametrize("status", [401, 403])
async def test_unauthorised_is_auth_error(client: ExportClient, status: int) -> None:
    """401/403 raise AuthError telling a human to renew the token."""
    with aioresponses() as mocked:
        mocked.get(URL, status=status, payload={"error": "Unauthorized"})
        with pytest.raises(AuthError, match="token"):
            await answer(client)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [(429, "7", 7.0), (503, "2", 2.0), (429, None, 30.0)],
)
async def test_throttling_honours_retry_after(
    client: ExportClient, status: int, retry_after: str | None, expected: float
) -> None:
    """429 (and 503 with Retry-After) raise RateLimited carrying the delay."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    with aioresponses() as mocked:
        mocked.get(URL, status=status, headers=headers, body="slow down")
        with pytest.raises(RateLimited) as caught:
            await answer(client)
    assert caught.value.retry_after_s == expected


def test_retry_after_as_http_date() -> None:
    """Retry-After may be an HTTP date; it becomes seconds from now."""
    now = datetime(2022, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Sat, 01 Jan 2022 12:00:09 GMT", now) == 9.0
    assert parse_retry_after("garbage") is None


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"status": 500, "body": "oops"}, "500"),
        ({"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"}, "502"),
        ({"status": 200, "body": "<html>Sign in</html>", "content_type": "text/html"}, "HTML"),
        ({"status": 200, "body": '{"status": "RUNN'}, "malformed status"),
    ],
)
async def test_server_errors_and_proxy_pages_are_transient(
    client: ExportClient, kwargs: dict[str, object], fragment: str
) -> None:
    """5xx, HTML pages and broken status JSON are TransientError, with what was seen."""
    with aioresponses() as mocked:
        mocked.get(URL, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(TransientError, match=fragment):
            await answer(client)


async def test_connection_error_is_transient(client: ExportClient) -> None:
    """A refused or reset connection is a TransientError naming the host, not the token."""
    with aioresponses() as mocked:
        mocked.get(URL, exception=aiohttp.ClientConnectionError("reset by peer"))
        with pytest.raises(TransientError, match=r"ac\.example\.com") as caught:
            await answer(client)
    assert TOKEN not in str(caught.value)


async def test_bad_request_is_rejected_with_acs_message(client: ExportClient) -> None:
    """A 400 raises RemoteRejected quoting what AC said."""
    with aioresponses() as mocked:
        mocked.get(URL, status=400, payload={"message": "toDate must be after fromDate"})
        with pytest.raises(RemoteRejected, match="toDate must be after fromDate"):
            await answer(client)


async def test_status_for_another_type_or_window_is_transient(client: ExportClient) -> None:
    """A status that does not match the request (type or dates) is not trusted."""
    with aioresponses() as mocked:
        mocked.get(URL, payload={**STATUS, "type": "EVENT"})
        mocked.get(URL, payload={**STATUS, "fromDate": "2021-01-01T00:00:00.000Z"})
        with pytest.raises(TransientError, match="type"):
            await answer(client)
        with pytest.raises(TransientError, match="fromDate"):
            await answer(client)


async def test_redirect_to_another_origin_drops_the_token(client: ExportClient) -> None:
    """Following a redirect to a storage host sends no Authorization header there."""
    storage = "https://storage.example.net/blob/1?sig=abc"
    with aioresponses() as mocked:
        mocked.get(URL, status=302, headers={"Location": storage})
        mocked.get(storage, body=b'{"id": 1}\n')
        result = await answer(client)
        calls = {str(url): c for (_, url), c in mocked.requests.items()}
    assert isinstance(result, Payload)
    assert (
        "Authorization"
        in calls[next(k for k in calls if "ac.example.com" in k)][0].kwargs["headers"]
    )
    assert "Authorization" not in calls[storage][0].kwargs["headers"]


async def test_redirect_on_the_same_origin_keeps_the_token(client: ExportClient) -> None:
    """A redirect that stays on AC's origin still authenticates."""
    moved = f"{BASE}/files/1"
    with aioresponses() as mocked:
        mocked.get(URL, status=307, headers={"Location": "/files/1"})
        mocked.get(moved, body=b'{"id": 1}\n')
        await answer(client)
        calls = {str(url): c for (_, url), c in mocked.requests.items()}
    assert calls[moved][0].kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


async def test_status_with_unknown_fields_is_still_a_status(client: ExportClient) -> None:
    """Fields AC may add later (progress, ids) do not make a status look like data."""
    with aioresponses() as mocked:
        mocked.get(URL, payload={**STATUS, "status": "RUNNING", "progress": 0.4, "jobId": "x1"})
        result = await answer(client)
    assert result == ExportStatus("RUNNING", STATUS["createdDate"], STATUS["message"])


async def test_redirect_back_to_ac_after_leaving_it_gets_no_token(client: ExportClient) -> None:
    """On AC -> storage -> AC, the last URL was chosen by storage: the token is not resent."""
    storage = "https://storage.example.net/hop"
    back = f"{BASE}/api/steal"
    with aioresponses() as mocked:
        mocked.get(URL, status=302, headers={"Location": storage})
        mocked.get(storage, status=302, headers={"Location": back})
        mocked.get(back, body=b'{"id": 1}\n')
        await answer(client)
        calls = {str(url): c for (_, url), c in mocked.requests.items()}
    assert "Authorization" not in calls[back][0].kwargs["headers"]


async def test_redirect_from_https_to_http_is_refused(client: ExportClient) -> None:
    """A downgrade to cleartext is not followed, even without the token."""
    with aioresponses() as mocked:
        mocked.get(URL, status=302, headers={"Location": "http://storage.example.net/x"})
        with pytest.raises(RemoteRejected, match="https to http"):
            await answer(client)


@pytest.mark.parametrize(
    "location", ["http://user:pass@storage.example.net/x", "https://[::1/x", "https://:80/"]
)
async def test_unusable_redirect_targets_are_classified(
    client: ExportClient, location: str
) -> None:
    """Credentials in the URL, a malformed URL or no host: an AC error, never a crash."""
    with aioresponses() as mocked:
        mocked.get(URL, status=302, headers={"Location": location})
        with pytest.raises((RemoteRejected, TransientError)):
            await answer(client)


async def test_storage_403_asks_ac_again_instead_of_blaming_the_token(
    client: ExportClient,
) -> None:
    """A 403 from the storage origin (an expired signed URL) is transient, not AuthError."""
    storage = "https://storage.example.net/blob/1?sig=old"
    with aioresponses() as mocked:
        mocked.get(URL, status=302, headers={"Location": storage})
        mocked.get(storage, status=403, body=b"<Error>Request has expired</Error>")
        with pytest.raises(TransientError, match="storage"):
            await answer(client)


async def test_deeply_nested_status_body_is_classified(client: ExportClient) -> None:
    """A 20,000-deep JSON value as a status body is a classified answer, not a crash."""
    deep = b'{"status": "PENDING", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}"
    with aioresponses() as mocked:
        mocked.get(URL, body=deep)
        with pytest.raises(TransientError):
            await answer(client)


@pytest.mark.parametrize("body", [{"status": "DONE"}, {"status": "DONE", "type": "PAGE"}])
async def test_an_object_of_status_keys_is_a_status_whatever_its_value(
    client: ExportClient, body: dict[str, str]
) -> None:
    """Issue 21 item 27: judged by keys, ``{"status": "DONE"}`` is an (unknown) status,
    not a one-record export."""
    with aioresponses() as mocked:
        mocked.get(URL, payload=body)
        result = await answer(client)
    assert result == ExportStatus("DONE", None, None)


async def test_remote_text_cannot_drive_the_terminal(client: ExportClient) -> None:
    """Issue 21 item 22: C0/C1 controls and DEL in AC's text are escaped before they
    reach an error (and so the ledger, the log and ``status``)."""
    evil = "bad\x1b[2K\rdate\x1b]0;pwned\x07\x7f\x9b"
    with aioresponses() as mocked:
        mocked.get(URL, status=400, payload={"message": evil, "status": "ERROR"})
        with pytest.raises(RemoteRejected) as raised:
            await answer(client)
    text = str(raised.value)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)
    assert "bad\\x1b[2K\\x0ddate\\x1b]0;pwned\\x07\\x7f\\x9b" in text
    with aioresponses() as mocked:
        mocked.get(URL, payload={**STATUS, "message": evil})
        status = await answer(client)
    assert isinstance(status, ExportStatus)
    assert status.message is not None
    assert "\x1b" not in status.message
    assert "\\x1b" in status.message


async def test_a_202_status_is_a_status_and_a_202_without_one_is_transient(
    client: ExportClient,
) -> None:
    """AC's engine answers statuses with 202 (issue 22 item 4); a 202 that holds no
    status is not data either."""
    with aioresponses() as mocked:
        mocked.get(URL, status=202, payload=STATUS)
        assert await answer(client) == ExportStatus(
            "PENDING", STATUS["createdDate"], STATUS["message"]
        )
        mocked.get(URL, status=202, body=b'{"id": "1"}\n')
        with pytest.raises(TransientError, match="202 without a status"):
            await answer(client)


@pytest.mark.parametrize(("status", "body"), [(500, b"oops"), (200, b'{"status": "RUNN')])
async def test_errors_name_the_origin_with_its_port(status: int, body: bytes) -> None:
    """Issue 38 item 8: "http://127.0.0.1 answered 500" for http://127.0.0.1:8080; with
    several AC-likes on one host, which one answered matters."""
    from aiohttp import web

    from tests.daemon_helpers import export_server

    async def reply(_: web.Request) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json")

    async with export_server(reply) as base, aiohttp.ClientSession() as session:
        client = ExportClient(session, base, SecretStr(TOKEN))
        with pytest.raises(TransientError) as raised:
            await answer(client)
    assert base in str(raised.value)
    assert base.rsplit(":", 1)[1] not in ("80", "443")


async def test_a_cookie_set_by_the_server_is_never_sent_back() -> None:
    """The daemon's session keeps no cookies (real sockets): AC authenticates by token,
    and a cookie from AC or a host it redirects to must not travel with later requests."""
    from aiohttp import web

    from acexport.ac.client import new_session

    seen: list[str | None] = []

    async def export(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response(STATUS)
        response.set_cookie("session", "from-ac")
        return response

    app = web.Application()
    app.router.add_get("/api/reports/export/page", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with new_session(5.0) as session:
            # A name, not an IP address: aiohttp's default jar keeps no cookie of an IP.
            client = ExportClient(session, f"http://localhost:{port}", SecretStr(TOKEN))
            for _ in range(2):
                assert isinstance(await answer(client), ExportStatus)
    finally:
        await runner.cleanup()
    assert seen == [None, None]
