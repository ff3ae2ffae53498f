"""The emulator behaves like AC's export API, over a real loopback socket."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import time
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from acexport.emulator import FaultSettings, storage
from acexport.emulator.data import RECORD_TYPES, PayloadSpec
from acexport.emulator.storage import IN_MEMORY_BYTES, MEMORY_BUDGET_BYTES, Storage
from tests.conftest import EmulatorFactory, FakeClock, RunningEmulator

DAY = {"fromDate": "2022-01-01T00:00:00.000Z", "toDate": "2022-01-01T23:59:59.999Z"}


async def ask(
    session: aiohttp.ClientSession,
    emu: RunningEmulator,
    type_: str = "page",
    token: str | None = "acme-token",
    params: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], bytes]:
    headers = kwargs.pop("headers", {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with session.get(
        emu.export_url(type_), params=DAY if params is None else params, headers=headers, **kwargs
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def wait_ready_raw(
    session: aiohttp.ClientSession, emu: RunningEmulator, type_: str, **kwargs: Any
) -> bytes:
    """The body of the first answer that is data, as served."""
    async with asyncio.timeout(10):
        while True:
            status, _, body = await ask(session, emu, type_, **kwargs)
            assert status == 200
            if not body.startswith(b'{"fromDate"'):
                return body
            await asyncio.sleep(0.02)


def all_ready(report: dict[str, Any]) -> bool:
    """Every export is READY and its data rendered (for ``emu.wait_for``)."""
    return all(j["state"] == "READY" and j["bytes"] is not None for j in report["jobs"])


def unzip(body: bytes) -> bytes:
    """The JSON Lines of a ZIP payload holding one member."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        (member,) = archive.namelist()
        return archive.read(member)


async def wait_ready(
    session: aiohttp.ClientSession, emu: RunningEmulator, type_: str, **kwargs: Any
) -> bytes:
    """The JSON Lines of the first answer that is data (unzipped)."""
    return unzip(await wait_ready_raw(session, emu, type_, **kwargs))


async def test_first_request_pending_then_running_then_data(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """PENDING, then RUNNING with startedDate, then a chunked ZIP with no Content-Length."""
    emu = await emulator(processing_s=0.3)
    status, _, body = await ask(session, emu)
    first = json.loads(body)
    assert status == 200
    assert first["status"] == "PENDING"
    assert first["type"] == "PAGE"
    assert first["fromDate"] == DAY["fromDate"]
    assert first["toDate"] == DAY["toDate"]
    assert "will be created" in first["message"]
    assert "startedDate" not in first
    created = datetime.fromisoformat(first["createdDate"])
    assert abs(created.timestamp() - time.time()) < 5
    second = json.loads((await ask(session, emu))[2])
    assert second["status"] == "RUNNING"
    assert second["createdDate"] == first["createdDate"]
    assert datetime.fromisoformat(second["startedDate"]) >= created
    assert "being created" in second["message"]
    raw = await wait_ready_raw(session, emu, "page", headers={"Range": "bytes=10-"})
    status, headers, again = await ask(session, emu, headers={"Range": "bytes=10-"})
    assert status == 200  # Range is ignored: the whole body again
    assert again == raw
    assert headers["Content-Type"] == "application/zip"
    assert headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in headers
    assert "Accept-Ranges" not in headers
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        assert archive.namelist() == ["data.json"]  # BigQuery's shards, as one entry
    lines = unzip(raw).decode().splitlines()
    assert len(lines) == 100
    required = {"canonicalUrl", "channelId", "eventDate", "sessionId", "title", "userId"}
    assert all(required <= set(json.loads(line)) for line in lines)


async def test_second_request_while_pending_says_already_scheduled(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A request for an export that waits in the queue gets the 'already scheduled' message."""
    emu = await emulator(processing_s=0.5)
    await ask(session, emu, "page")
    await ask(session, emu, "event")
    again = json.loads((await ask(session, emu, "event"))[2])
    assert again["status"] == "PENDING"
    assert "has already been scheduled" in again["message"]


async def test_error_rate_answers_error_once_then_starts_a_new_export(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A failed export answers ERROR (HTTP 200) once; the next request is a new PENDING export."""
    clock = FakeClock()
    emu = await emulator(processing_s=60, faults=FaultSettings(error_rate=1.0), clock=clock)
    await ask(session, emu)
    clock.advance(61)
    status, _, body = await ask(session, emu)
    failed = json.loads(body)
    assert status == 200
    assert failed["status"] == "ERROR"
    assert "failed" in failed["message"]
    await emu.control("faults", {"error_rate": 0.0})
    retried = json.loads((await ask(session, emu))[2])
    assert retried["status"] == "PENDING"
    assert "The last data export for this date range and type failed" in retried["message"]
    assert retried["createdDate"] > failed["createdDate"]
    clock.advance(61)
    data = await wait_ready(session, emu, "page")
    assert len(data.splitlines()) == 100
    report = await emu.jobs()
    assert [job["state"] for job in report["jobs"]] == ["ERROR", "READY"]
    assert report["workspaces"]["acme"]["faults"] == {"error": 1}


async def test_truncate_rate_ends_the_body_cleanly_but_early(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--truncate-rate 1 ends a chunked ZIP cleanly before its central directory."""
    emu = await emulator(records=5000, faults=FaultSettings(truncate_rate=1.0))
    await ask(session, emu)
    await emu.wait_for(all_ready)
    status, _, body = await ask(session, emu)  # no exception: the end is clean
    assert status == 200
    (job,) = (await emu.jobs())["jobs"]
    assert len(body) < job["bytes"]
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))
    assert (await emu.jobs())["workspaces"]["acme"]["faults"]["truncate"] == 1


async def test_zero_records_is_a_zip_with_an_empty_member(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A window with no records is a valid ZIP holding one empty JSON Lines member."""
    emu = await emulator(records=0)
    await ask(session, emu)
    assert await wait_ready(session, emu, "page") == b""


async def test_one_job_processed_at_a_time_per_workspace(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """A second export stays PENDING while the first is processed, FIFO."""
    clock = FakeClock()
    emu = await emulator(processing_s=60, clock=clock)
    await ask(session, emu, "page")
    clock.advance(30)
    assert json.loads((await ask(session, emu, "event"))[2])["status"] == "PENDING"
    clock.advance(31)
    await wait_ready(session, emu, "page")
    assert json.loads((await ask(session, emu, "event"))[2])["status"] == "RUNNING"
    clock.advance(61)
    await wait_ready(session, emu, "event")
    report = await emu.jobs()
    page, event = report["jobs"]
    assert event["timeline"]["started"] == pytest.approx(page["timeline"]["ready"])
    assert report["workspaces"]["acme"]["max_unready"] == 2


async def test_the_worker_tick_starts_pending_exports_only_at_ticks(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--tick: AC's worker runs every 5 minutes and processes what is pending then,
    one after another; an export asked for during a run waits for the next tick."""
    clock = FakeClock(1_800_000_000.0 + 10)  # 10 s after a tick
    emu = await emulator(processing_s=20, tick_s=300.0, clock=clock)

    def rendered(report: dict[str, Any]) -> bool:  # (in a thread, stamped by the clock)
        return all(j["bytes"] is not None for j in report["jobs"])

    await ask(session, emu, "page")
    await ask(session, emu, "event")
    await emu.wait_for(rendered)
    clock.advance(290 + 5)  # the tick at +300 s, 5 s into the first export's run
    await ask(session, emu, "segment")
    await emu.wait_for(rendered)
    clock.advance(600)
    report = await emu.jobs()
    started = {j["type"]: j["timeline"]["started"] - 1_800_000_000.0 for j in report["jobs"]}
    assert started == {"page": 300.0, "event": 320.0, "segment": 600.0}


async def test_workspaces_are_processed_independently(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Another workspace's job is not queued behind this workspace's job."""
    clock = FakeClock()
    tokens = {"acme": "acme-token", "other": "other-token"}
    emu = await emulator(tokens=tokens, processing_s=60, clock=clock)
    await ask(session, emu, "page")
    body = json.loads((await ask(session, emu, "page", token="other-token"))[2])
    assert body["status"] == "PENDING"
    clock.advance(1)
    body = json.loads((await ask(session, emu, "page", token="other-token"))[2])
    assert body["status"] == "RUNNING"


async def test_expired_data_starts_a_new_job(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """After the download window the same request is PENDING again, with a new createdDate."""
    clock = FakeClock()
    emu = await emulator(processing_s=60, expiry_s=86400, clock=clock)
    first = json.loads((await ask(session, emu))[2])
    clock.advance(61)
    await wait_ready(session, emu, "page")
    clock.advance(86400)
    again = json.loads((await ask(session, emu))[2])
    assert again["status"] == "PENDING"
    assert again["createdDate"] > first["createdDate"]
    states = [job["state"] for job in (await emu.jobs())["jobs"]]
    assert states == ["EXPIRED", "RUNNING"]


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_missing_or_unknown_token_is_a_500_error_page(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, token: str | None
) -> None:
    """No token or an unknown one fails before the controller: a 500 HTML page, no job."""
    emu = await emulator()
    status, headers, body = await ask(session, emu, token=token)
    assert status == 500
    assert headers["Content-Type"].startswith("text/html")
    assert b"<html>" in body
    assert (await emu.jobs())["jobs"] == []


@pytest.mark.parametrize("code", [401, 403])
async def test_auth_failure_status_can_be_chosen(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, code: int
) -> None:
    """--auth-failure 401|403 answers a bad token with that status instead."""
    emu = await emulator(auth_failure=code)
    status, _, body = await ask(session, emu, token="wrong")
    assert status == code
    assert "token" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"toDate": DAY["toDate"]}, "ISO 8601"),
        ({"fromDate": DAY["fromDate"]}, "ISO 8601"),
        ({"fromDate": "yesterday", "toDate": DAY["toDate"]}, "ISO 8601"),
        ({"fromDate": "2022-01-01", "toDate": DAY["toDate"]}, "ISO 8601"),
        ({"fromDate": "2022-01-01T00:00:00Z", "toDate": DAY["toDate"]}, "ISO 8601"),
        ({"fromDate": "2022-01-01T00:00:00.000+01:00", "toDate": DAY["toDate"]}, "ISO 8601"),
        ({"fromDate": DAY["fromDate"], "toDate": "2022-13-01T00:00:00.000Z"}, "ISO 8601"),
        ({"fromDate": DAY["toDate"], "toDate": DAY["fromDate"]}, "Wrong range date"),
    ],
)
async def test_dates_are_parsed_strictly(
    emulator: EmulatorFactory,
    session: aiohttp.ClientSession,
    params: dict[str, str],
    message: str,
) -> None:
    """Missing, bare, second-precision, offset or reversed dates get AC's 400 ERROR body."""
    emu = await emulator()
    status, _, body = await ask(session, emu, params=params)
    assert status == 400
    error = json.loads(body)
    assert error["status"] == "ERROR"
    assert message in error["message"]
    assert (await emu.jobs())["jobs"] == []


async def test_minutes_without_seconds_are_accepted(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """``yyyy-MM-ddTHH:mm`` is the other form AC's formatter accepts."""
    emu = await emulator()
    params = {"fromDate": "2022-01-01T00:00", "toDate": "2022-01-01T23:59"}
    status, _, body = await ask(session, emu, params=params)
    assert status == 200
    assert json.loads(body)["toDate"] == "2022-01-01T23:59:00.000Z"


@pytest.mark.parametrize("type_", ["visits", "Page", "PAGE"])
async def test_unknown_or_miscased_type_is_400(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, type_: str
) -> None:
    """Types are case-sensitive; anything else is AC's 400 naming the six types."""
    emu = await emulator()
    status, _, body = await ask(session, emu, type_=type_)
    assert status == 400
    error = json.loads(body)
    assert error["status"] == "ERROR"
    assert all(f'"{name}"' in error["message"] for name in RECORD_TYPES)


async def test_data_is_deterministic_and_realistic(emulator: EmulatorFactory) -> None:
    """Same workspace, type, window and seed give the same bytes; rows carry the
    required columns of AC's tables (design section 1.1)."""
    first = await emulator(seed=7)
    second = await emulator(seed=7)
    other_seed = await emulator(seed=8)
    required = {
        "event": {"applicationId", "channelId", "createDate", "dataSourceId", "eventDate",
                  "eventId", "id", "projectId", "sessionId", "userId"},
        "page": {"canonicalUrl", "channelId", "eventDate", "sessionId", "title", "userId"},
        "identity": {"createDate", "id", "projectId"},
        "individual": {"createDate", "emailAddress", "id", "modifiedDate"},
        "membership": {"channelId", "createDate", "identityId", "modifiedDate", "segmentId"},
        "segment": {"id", "name", "createDate", "modifiedDate", "individualCount"},
    }  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for type_ in RECORD_TYPES:
            payloads = []
            for emu in (first, second, other_seed):
                await ask(session, emu, type_)
                payloads.append(await wait_ready(session, emu, type_))
            assert payloads[0] == payloads[1]
            assert payloads[0] != payloads[2]
            lines = payloads[0].splitlines()
            records = [json.loads(line) for line in lines]
            assert len(records) == len(set(lines)) == 100
            for record in records:
                assert required[type_] <= set(record)
    text = payloads[0].decode()
    assert not text.isascii()


def bq_time(value: str) -> datetime:
    """BigQuery's TIMESTAMP text, ``2024-01-05 13:00:00[.123456] UTC``."""
    assert value.endswith(" UTC"), value
    return datetime.fromisoformat(value.removesuffix(" UTC")).replace(tzinfo=UTC)


async def test_rows_are_in_bigquerys_json_encoding(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """INT64 as strings, TIMESTAMPs as `... UTC` (microseconds when there are any),
    <, > and & escaped, NULL columns absent, eventProperties concatenated without
    escaping (some are not JSON), or the older properties array when asked."""
    emu = await emulator(records=400)
    await ask(session, emu, "event")
    body = await wait_ready(session, emu, "event")
    events = [json.loads(line) for line in body.splitlines()]
    assert all(isinstance(e["channelId"], str) and e["channelId"].isdigit() for e in events)
    times = [e["eventDate"] for e in events]
    assert all(bq_time(t) for t in times)
    assert any("." in t for t in times)
    assert b"\\u003c" in body or b"\\u0026" in body or b"<" not in body
    assert len({frozenset(e) for e in events}) > 1  # NULLs left out: rows differ in columns
    broken = 0
    for event in events:
        try:
            props = json.loads(event["eventProperties"])
            assert isinstance(props, dict)
        except ValueError:
            broken += 1
            assert '"' in event["eventProperties"][1:-1]
    assert 0 < broken < len(events)

    legacy = await emulator(records=50, legacy_properties=True)
    await ask(session, legacy, "event")
    rows = [json.loads(line) for line in (await wait_ready(session, legacy, "event")).splitlines()]
    assert all("eventProperties" not in r and r["properties"][0]["name"] == "title" for r in rows)


async def test_record_dates_lie_inside_the_window(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Every row's filter column falls inside the requested window."""
    emu = await emulator(records=500)
    start = datetime(2022, 1, 1, tzinfo=UTC)
    end = datetime(2022, 1, 2, tzinfo=UTC)
    for type_, column in (("event", "eventDate"), ("individual", "createDate")):
        await ask(session, emu, type_)
        data = await wait_ready(session, emu, type_)
        for line in data.splitlines():
            assert start <= bq_time(json.loads(line)[column]) < end


async def test_the_engine_filters_by_each_types_column_both_bounds_inclusive(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """With --records-per-day the rows exist whatever is asked, and an export holds
    those whose filter column lies in [fromDate, toDate] (AC's >= and <=): two
    6-hour windows of events hold a 12-hour range's rows exactly; page rows carry
    their hour, so a toDate on the hour takes that hour's rows in as well."""
    emu = await emulator(records_per_day=2400)

    async def rows(type_: str, start: str, end: str) -> list[dict[str, Any]]:
        params = {"fromDate": start, "toDate": end}
        await ask(session, emu, type_, params=params)
        body = await wait_ready(session, emu, type_, params=params)
        return [json.loads(line) for line in body.splitlines()]

    first = await rows("event", "2022-01-01T00:00:00.000Z", "2022-01-01T05:59:59.999Z")
    second = await rows("event", "2022-01-01T06:00:00.000Z", "2022-01-01T11:59:59.999Z")
    both = await rows("event", "2022-01-01T00:00:00.000Z", "2022-01-01T11:59:59.999Z")
    assert len(first) == len(second) == 600
    assert sorted(r["id"] for r in first + second) == sorted(r["id"] for r in both)
    pages = await rows("page", "2022-01-01T00:00:00.000Z", "2022-01-01T05:59:59.999Z")
    assert len(pages) == 150  # a quarter of the events, six hours
    assert {bq_time(r["eventDate"]).minute for r in pages} == {0}
    inclusive = await rows("page", "2022-01-01T00:00:00.000Z", "2022-01-01T06:00:00.000Z")
    assert len(inclusive) == 175  # the 06:00 hour's rows too


async def test_entities_change_so_a_later_export_shows_their_new_state(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """Entities are filtered by createDate and shown as they are when exported: the
    same range asked again 40 days later (its first data expired) has the same
    individuals, some with a newer modifiedDate and other values."""
    clock = FakeClock(datetime(2022, 1, 5, tzinfo=UTC).timestamp())
    emu = await emulator(records_per_day=100_000, clock=clock, expiry_s=60.0)
    params = {"fromDate": "2022-01-01T00:00:00.000Z", "toDate": "2022-01-01T23:59:59.999Z"}

    async def individuals() -> dict[str, dict[str, Any]]:
        await ask(session, emu, "individual", params=params)
        body = await wait_ready(session, emu, "individual", params=params)
        return {r["id"]: r for r in (json.loads(line) for line in body.splitlines())}

    early = await individuals()
    clock.advance(40 * 86400)
    late = await individuals()
    assert early.keys() == late.keys()
    assert len(early) == 1000
    assert all(bq_time(r["createDate"]).date().isoformat() == "2022-01-01" for r in late.values())
    changed = [i for i in early if early[i]["modifiedDate"] != late[i]["modifiedDate"]]
    assert len(changed) > len(early) // 2
    assert any(early[i]["jobTitle"] != late[i]["jobTitle"] for i in changed)


async def test_json_array_format(emulator: EmulatorFactory, session: aiohttp.ClientSession) -> None:
    """--format json serves one JSON array holding every record."""
    emu = await emulator(format="json", records=5000)
    await ask(session, emu, "individual")
    data = await wait_ready_raw(session, emu, "individual")
    assert data.startswith(b"[")
    assert len(json.loads(data)) == 5000


async def test_inspection_reports_digest_timeline_and_requests(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """/_emulator/jobs lists each job's timeline, request count, bytes, sha256 and records."""
    emu = await emulator(processing_s=0.1, records=300)
    await ask(session, emu, "membership")
    data = await wait_ready_raw(session, emu, "membership")
    report = await emu.jobs()
    (job,) = report["jobs"]
    assert job["workspace"] == "acme"
    assert job["type"] == "membership"
    assert job["state"] == "READY"
    assert job["bytes"] == len(data)
    assert job["sha256"] == hashlib.sha256(data).hexdigest()
    assert job["records"] == 300
    assert job["requests"] >= 2
    assert job["downloads_completed"] == 1
    timeline = job["timeline"]
    assert timeline["created"] <= timeline["started"] < timeline["ready"] < timeline["expires"]
    assert report["workspaces"]["acme"]["max_unready"] == 1


async def test_gzip_when_the_client_accepts_it(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--gzip serves Content-Encoding: gzip to clients that accept it, plain to others."""
    emu = await emulator(gzip=True, format="ndjson")
    await ask(session, emu, "event")
    plain = await wait_ready_raw(session, emu, "event")
    headers = {"Accept-Encoding": "gzip"}
    status, response_headers, raw = await ask(
        session, emu, "event", headers=headers, auto_decompress=False
    )
    assert status == 200
    assert response_headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(raw) == plain
    (job,) = (await emu.jobs())["jobs"]
    assert job["sha256"] == hashlib.sha256(plain).hexdigest()
    _, identity_headers, _ = await ask(
        session, emu, "event", headers={"Accept-Encoding": "identity"}
    )
    assert "Content-Encoding" not in identity_headers


@pytest.mark.parametrize(
    ("records", "budget", "on_disk"),
    [(20, MEMORY_BUDGET_BYTES, False), (20000, MEMORY_BUDGET_BYTES, True), (20, 0, True)],
)
async def test_a_payload_is_served_alike_from_memory_or_from_its_file(
    emulator: EmulatorFactory,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    records: int,
    budget: int,
    on_disk: bool,
) -> None:
    """A small payload stays in memory; one over IN_MEMORY_BYTES, or past the memory
    budget, goes to a file (its gzip copy beside it): all answer a Range, gzip and the
    digest the same way."""
    monkeypatch.setattr(storage, "MEMORY_BUDGET_BYTES", budget)
    emu = await emulator(
        records=records, format="ndjson", ranges=True, gzip=True, storage_dir=tmp_path
    )
    await ask(session, emu, "event")
    plain = await wait_ready_raw(session, emu, "event")
    assert len(plain) > IN_MEMORY_BYTES or budget < len(plain) or not on_disk
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        [
            f"{job['id']}.json{suffix}"
            for job in (await emu.jobs())["jobs"]
            for suffix in ("", ".gz")
        ]
        if on_disk
        else []
    )
    identity = {"Range": "bytes=10-", "Accept-Encoding": "identity"}
    status, headers, tail = await ask(session, emu, "event", headers=identity)
    assert (status, tail) == (206, plain[10:])
    assert headers["Content-Range"] == f"bytes 10-{len(plain) - 1}/{len(plain)}"
    status, headers, raw = await ask(
        session, emu, "event", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
    )
    assert (status, headers["Content-Encoding"]) == (200, "gzip")
    assert gzip.decompress(raw) == plain
    (job,) = (await emu.jobs())["jobs"]
    assert job["sha256"] == hashlib.sha256(plain).hexdigest()
    assert job["bytes"] == len(plain)


def test_the_memory_budget_is_given_back_when_a_payload_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AC keeps an export until its range is asked again: an emulator left running
    holds at most MEMORY_BUDGET_BYTES in memory, the rest in files, and a payload
    discarded (replaced by a new export of its range) frees its share."""
    spec = PayloadSpec("acme", "page", 0, 3_600_000 - 1, records=20, seed=0, format="zip")
    probe = Storage(tmp_path, gzip_copies=False)
    small = probe.render("probe", spec, lambda: None).result()
    probe.close()
    assert small.stored.body is not None
    monkeypatch.setattr(storage, "MEMORY_BUDGET_BYTES", len(small.stored.body) + 10)
    kept = Storage(tmp_path, gzip_copies=False)
    try:
        first = kept.render("first", spec, lambda: None).result()
        second = kept.render("second", spec, lambda: None).result()
        assert first.stored.path is None
        assert first.stored.body == small.stored.body
        assert second.stored.path == tmp_path / "second.zip"  # no room left in memory
        assert second.stored.path.read_bytes() == small.stored.body
        kept.discard(first)
        third = kept.render("third", spec, lambda: None).result()
        assert third.stored.path is None  # the first's room, given back
        kept.discard(second)
        assert not second.stored.path.exists()
    finally:
        kept.close()


async def test_redirect_to_signed_storage_on_another_origin(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--redirect answers 302 to another origin whose signed URL needs and refuses a token."""
    emu = await emulator(redirect=True)
    await ask(session, emu, "page")
    await emu.wait_for(all_ready)
    status, headers, _ = await ask(session, emu, "page", allow_redirects=False)
    assert status == 302
    location = headers["Location"]
    assert location.startswith("http://localhost:")
    async with session.get(location) as response:
        assert response.status == 200
        data = await response.read()
    assert len(unzip(data).splitlines()) == 100
    (job,) = (await emu.jobs())["jobs"]
    assert hashlib.sha256(data).hexdigest() == job["sha256"]
    with_token = {"Authorization": "Bearer acme-token"}
    async with session.get(location, headers=with_token) as response:
        assert response.status == 400
    forged = location[:-4] + ("0000" if not location.endswith("0000") else "1111")
    async with session.get(forged) as response:
        assert response.status == 403


async def test_fail_rate_answers_5xx(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--fail-rate 1 answers every request with a 500 or a 503 carrying Retry-After."""
    emu = await emulator(faults=FaultSettings(fail_rate=1.0))
    seen = set()
    for _ in range(20):
        status, headers, _ = await ask(session, emu)
        seen.add(status)
        if status == 503:
            assert headers["Retry-After"] == "1"
    assert seen == {500, 503}
    report = await emu.jobs()
    assert report["jobs"] == []
    assert report["workspaces"]["acme"]["faults"] == {"fail": 20}


async def test_throttle_rate_answers_429_with_retry_after(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--throttle-rate 1 answers 429 with the configured Retry-After."""
    emu = await emulator(faults=FaultSettings(throttle_rate=1.0, retry_after_s=3))
    status, headers, _ = await ask(session, emu)
    assert status == 429
    assert headers["Retry-After"] == "3"


async def test_garbage_rate_answers_html_or_broken_json(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--garbage-rate 1 answers HTML pages or JSON that does not parse."""
    emu = await emulator(faults=FaultSettings(garbage_rate=1.0))
    kinds = set()
    for _ in range(30):
        status, headers, body = await ask(session, emu)
        if headers["Content-Type"].startswith("text/html"):
            assert b"<html" in body
            kinds.add(f"html-{status}")
        else:
            with pytest.raises(json.JSONDecodeError):
                json.loads(body)
            kinds.add("json")
    assert kinds == {"html-200", "html-502", "json"}


async def test_cut_rate_closes_the_connection_mid_download(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--cut-rate 1 sends fewer bytes than Content-Length and closes; --range resumes."""
    emu = await emulator(records=20000, format="ndjson", ranges=True)
    await ask(session, emu, "page")
    await emu.wait_for(all_ready)
    await emu.control("faults", {"cut_rate": 1.0})
    received = b""
    cuts = 0
    async with asyncio.timeout(20):
        while True:
            headers = {"Authorization": "Bearer acme-token", "Range": f"bytes={len(received)}-"}
            try:
                async with session.get(emu.export_url("page"), params=DAY, headers=headers) as r:
                    assert r.status == 206
                    async for chunk in r.content.iter_any():
                        received += chunk
                break
            except aiohttp.ClientPayloadError:
                cuts += 1
            if cuts > 8:
                await emu.control("faults", {"cut_rate": 0.0})
    (job,) = (await emu.jobs())["jobs"]
    assert cuts >= 1
    assert hashlib.sha256(received).hexdigest() == job["sha256"]
    assert (await emu.jobs())["workspaces"]["acme"]["faults"]["cut"] == cuts


async def test_slow_caps_the_download_rate(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """--slow streams at roughly the configured bytes per second."""
    emu = await emulator(records=100, faults=FaultSettings(slow_bytes_per_s=200_000))
    await ask(session, emu, "page")
    await emu.wait_for(all_ready)
    started = time.monotonic()
    status, _, body = await ask(session, emu, "page")
    elapsed = time.monotonic() - started
    assert status == 200
    assert elapsed >= len(body) / 200_000 * 0.8


async def test_revoked_token_is_refused_until_restored(
    emulator: EmulatorFactory, session: aiohttp.ClientSession
) -> None:
    """The control route revokes and restores a workspace's token."""
    emu = await emulator()
    await emu.control("workspaces/acme", {"revoked": True})
    assert (await ask(session, emu))[0] == 500
    await emu.control("workspaces/acme", {"revoked": False})
    assert (await ask(session, emu))[0] == 200
