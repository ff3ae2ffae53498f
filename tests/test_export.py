"""One export end to end against the emulator: faults, expiry, resume, auth, secrets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing
from pydantic import SecretStr

from acexport.ac.client import ExportClient, ExportStatus
from acexport.ac.polling import Backoff
from acexport.config import HttpSettings
from acexport.emulator import FaultSettings
from acexport.emulator.data import RECORD_TYPES
from acexport.errors import AuthError, TransientError
from acexport.export import ExportObserver, ExportSpec, Timing, run_export
from acexport.ops.logging import configure_logging, register_secret
from acexport.windows import ExportWindow
from tests.conftest import EmulatorFactory, RunningEmulator
from tests.daemon_helpers import local_sink

WINDOW = ExportWindow(datetime(2022, 1, 1, tzinfo=UTC), datetime(2022, 1, 2, tzinfo=UTC))
FAST = Timing(poll=Backoff(0.02, 0.1), retry=Backoff(0.01, 0.05), max_attempts=40)


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def spec_for(tmp_path: Path, type_: str, compression: str = "none") -> ExportSpec:
    suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
    return ExportSpec("acme", type_, WINDOW, PurePosixPath(f"{type_}{suffix}"))


async def export(
    emu: RunningEmulator,
    session: aiohttp.ClientSession,
    tmp_path: Path,
    type_: str = "page",
    *,
    compression: str = "none",
    token: str = "acme-token",
    timing: Timing = FAST,
    observer: ExportObserver | None = None,
    **kwargs: Any,
) -> Any:
    sink = local_sink(tmp_path / "out", tmp_path / "tmp", compression)
    client = ExportClient(session, emu.url, SecretStr(token))
    try:
        return await run_export(
            spec_for(tmp_path, type_, compression), client, sink, timing, observer, **kwargs
        )
    finally:
        sink.close()


def job_for(report: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(j for j in reversed(report["jobs"]) if j["type"] == type_ and j["state"] == "READY")


@pytest.mark.slow
async def test_every_type_survives_the_real_protocol_with_ac_failures_and_truncation(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """ZIP bodies cut short, ERROR from AC and 500 outages: every type still arrives intact."""
    faults = FaultSettings(error_rate=0.25, truncate_rate=0.2, fail_rate=0.1)
    emu = await emulator(records=3000, faults=faults, processing_s=0.02)
    for type_ in RECORD_TYPES:
        outcome = await export(emu, session, tmp_path, type_, compression="gzip")
        job = job_for(await emu.jobs(), type_)
        assert outcome.manifest.payload_sha256 == job["sha256"]
        assert outcome.manifest.records == job["records"] == 3000
        assert outcome.manifest.payload_format == "zip"
        lines = gzip.decompress(
            (tmp_path / "out" / spec_for(tmp_path, type_, "gzip").key).read_bytes()
        )
        assert len(lines.splitlines()) == 3000
    report = await emu.jobs()
    # Which faults a run draws depends on timing; each kind is pinned down on its own
    # (test_truncated_zip_..., test_ac_errors_..., the emulator's tests). Here: some did.
    assert sum(report["workspaces"]["acme"]["faults"].values()) >= 1
    assert report["workspaces"]["acme"]["max_unready"] == 1
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_every_type_survives_faults_redirects_gzip_and_json(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Under 5xx, 429, cuts, redirects, gzip and JSON arrays, every type arrives intact."""
    faults = FaultSettings(fail_rate=0.2, throttle_rate=0.1, cut_rate=0.2, retry_after_s=0)
    emu = await emulator(
        redirect=True,
        gzip=True,
        ranges=True,
        format="json",
        records=3000,
        faults=faults,
        processing_s=0.05,
    )
    for type_ in RECORD_TYPES:
        outcome = await export(emu, session, tmp_path, type_, compression="gzip")
        job = job_for(await emu.jobs(), type_)
        assert outcome.manifest.payload_sha256 == job["sha256"]
        assert outcome.manifest.records == job["records"] == 3000
        assert outcome.manifest.payload_format == "json"
        assert outcome.manifest.format == "ndjson"
        written = (tmp_path / "out" / spec_for(tmp_path, type_, "gzip").key).read_bytes()
        assert outcome.manifest.file_bytes == len(written)
        assert outcome.manifest.file_sha256 == hashlib.sha256(written).hexdigest()
        assert len(gzip.decompress(written).splitlines()) == 3000
    report = await emu.jobs()
    assert report["workspaces"]["acme"]["max_unready"] == 1
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_ndjson_output_holds_the_records_served(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The output file holds exactly the records the emulator served, as NDJSON."""
    emu = await emulator(format="json", records=500)
    outcome = await export(emu, session, tmp_path, "individual")
    async with session.get(
        emu.export_url("individual"),
        params={"fromDate": WINDOW.from_date, "toDate": WINDOW.to_date},
        headers={"Authorization": "Bearer acme-token"},
    ) as response:
        served = json.loads(await response.read())
    written = [
        json.loads(line)
        for line in Path(outcome.manifest_location)
        .with_name("individual.jsonl")
        .read_text()
        .splitlines()
    ]
    assert written == served
    manifest = json.loads(Path(outcome.manifest_location).read_text())
    assert manifest["fromDate"] == "2022-01-01T00:00:00.000Z"
    assert manifest["toDate"] == "2022-01-01T23:59:59.999Z"
    assert manifest["createdDate"].endswith("Z")
    assert manifest["file"] == "individual.jsonl"


async def test_the_data_is_stored_after_the_seat_it_was_asked_in_is_given_back(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A seat to ask AC is held for a request and its download, not while the data is
    stored: at 1,000 lanes, commits held those seats through their fsyncs, and polls
    and submissions waited 0.1-1.1 s for one (issue 35). Storing has a seat of its own,
    taken once the last seat to ask was given back."""
    manifest = tmp_path / "out" / "page.jsonl.manifest.json"
    held: list[tuple[str, bool]] = []  # (what, whether the manifest was there)

    @contextlib.asynccontextmanager
    async def seat(_: bool) -> AsyncIterator[None]:
        held.append(("ask", manifest.exists()))
        yield
        held.append(("asked", manifest.exists()))

    @contextlib.asynccontextmanager
    async def store_seat() -> AsyncIterator[None]:
        held.append(("store", manifest.exists()))
        yield
        held.append(("stored", manifest.exists()))

    emu = await emulator(records=500, processing_s=0.05)
    outcome = await export(emu, session, tmp_path, seat=seat, store_seat=store_seat)
    asking, storing = held[:-2], held[-2:]
    assert len(asking) >= 4  # submitted, then polled at least once
    assert asking == [("ask", False), ("asked", False)] * (len(asking) // 2)
    assert storing == [("store", False), ("stored", True)]
    assert Path(outcome.manifest_location) == manifest


async def test_cut_download_resumes_with_range(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With --range, a cut identity-encoded download resumes where it stopped."""
    emu = await emulator(
        records=20000, format="ndjson", ranges=True, faults=FaultSettings(cut_rate=1.0)
    )

    async def sleep(_: float) -> None:
        await asyncio.sleep(0.01)
        if (await emu.jobs())["workspaces"]["acme"]["faults"].get("cut"):
            await emu.control("faults", {"cut_rate": 0.0})  # one cut, then let it through

    outcome = await export(emu, session, tmp_path, "page", sleep=sleep)
    job = job_for(await emu.jobs(), "page")
    assert outcome.manifest.payload_sha256 == job["sha256"]
    assert job["downloads_started"] == 2
    assert job["resumed_downloads"] == 1  # the second asked for the rest, not all again
    assert job["bytes_sent"] < 2 * job["bytes"]


async def test_expired_ready_data_is_resubmitted(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """If ready data expires before it is fetched, the export is requested anew."""
    emu = await emulator(records=2000, expiry_s=0.2, faults=FaultSettings(cut_rate=1.0))
    slow = Timing(poll=Backoff(0.02, 0.05), retry=Backoff(0.3, 0.3), max_attempts=10)

    class HealAfterExpiry(ExportObserver):
        async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
            jobs = (await emu.jobs())["jobs"]
            if any(job["state"] == "EXPIRED" for job in jobs):
                await emu.control("faults", {"cut_rate": 0.0})

    outcome = await export(
        emu, session, tmp_path, "segment", timing=slow, observer=HealAfterExpiry()
    )
    assert outcome.expired_resubmits == 1
    states = [job["state"] for job in (await emu.jobs())["jobs"]]
    assert states == ["EXPIRED", "READY"]
    assert outcome.manifest.payload_sha256 == job_for(await emu.jobs(), "segment")["sha256"]


async def test_truncated_zip_is_downloaded_again_from_the_start(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A ZIP body that ends cleanly but early is fetched again whole, from the same AC export."""
    emu = await emulator(records=5000, faults=FaultSettings(truncate_rate=1.0))

    async def sleep(_: float) -> None:
        await asyncio.sleep(0.01)
        if (await emu.jobs())["workspaces"]["acme"]["faults"].get("truncate"):
            await emu.control("faults", {"truncate_rate": 0.0})

    outcome = await export(emu, session, tmp_path, "page", sleep=sleep)
    (job,) = (await emu.jobs())["jobs"]  # one AC export: a short body is not a new export
    assert outcome.manifest.payload_sha256 == job["sha256"]
    assert job["downloads_started"] == 2
    assert outcome.manifest.records == 5000


async def test_zero_record_window_is_committed_empty(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A ZIP with an empty member is a done window: an empty gzip file and records 0."""
    emu = await emulator(records=0)
    outcome = await export(emu, session, tmp_path, "segment", compression="gzip")
    assert outcome.manifest.records == 0
    assert outcome.requests <= 3
    destination = tmp_path / "out" / spec_for(tmp_path, "segment", "gzip").key
    assert gzip.decompress(destination.read_bytes()) == b""
    assert json.loads(Path(outcome.manifest_location).read_text())["records"] == 0


async def test_dates_sent_pass_ac_strict_parser(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """fromDate/toDate are sent as yyyy-MM-ddTHH:mm:ss.SSSZ, which the strict parser accepts."""
    from acexport.emulator.app import parse_strict_date

    client = ExportClient(session, "https://ac.example.com", SecretStr("t"))
    odd = ExportWindow(
        datetime(2022, 3, 27, 1, 0, tzinfo=UTC), datetime(2022, 3, 27, 1, 0, 0, 5000, tzinfo=UTC)
    )
    for window in (WINDOW, odd):
        query = client.url("page", window).query
        for key in ("fromDate", "toDate"):
            assert parse_strict_date(query[key]) is not None, query[key]
            assert len(query[key]) == len("2022-01-01T00:00:00.000Z")
    emu = await emulator(records=10)
    outcome = await export(emu, session, tmp_path, "event")
    assert outcome.manifest.records == 10


async def test_expiring_data_takes_the_slot_back_before_asking_again(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Near the end of AC's download window, the export asks for the lane's slot back
    before the request that may find the data expired and submit it anew."""
    emu = await emulator(records=3000, expiry_s=0.3, faults=FaultSettings(truncate_rate=1.0))
    events: list[str] = []

    class Recorder(ExportObserver):
        async def ready(self, processing_s: float) -> None:
            events.append("ready")

        async def may_resubmit(self) -> None:
            events.append("may_resubmit")

        async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
            events.append(answer.status)
            if "ready" in events:  # expired and submitted again: let the next one through
                await emu.control("faults", {"truncate_rate": 0.0})

    timing = replace(FAST, retry=Backoff(0.1, 0.1), download_window_s=0.3)
    outcome = await export(emu, session, tmp_path, "segment", timing=timing, observer=Recorder())
    first_ready = events.index("ready")
    resubmitted = events.index("PENDING", first_ready)
    assert "may_resubmit" in events[first_ready:resubmitted]
    assert events.count("ready") == 2
    assert outcome.manifest.payload_sha256 == job_for(await emu.jobs(), "segment")["sha256"]


async def test_bad_token_answered_401_fails_at_once(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A 401 ends the export with AuthError after one request, no retry loop."""
    emu = await emulator(auth_failure=401)
    with pytest.raises(AuthError):
        await export(emu, session, tmp_path, token="not-the-token")
    assert (await emu.jobs())["workspaces"]["acme"]["requests"] == 0
    assert not (tmp_path / "out").exists()


async def test_bad_token_answered_500_is_named_within_a_minute(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Only 500s to a token AC never accepted end, within about a minute, blaming the token."""
    emu = await emulator()
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)  # time is not spent, only counted

    timing = Timing.from_settings(HttpSettings())  # the defaults an operator gets
    with pytest.raises(AuthError, match="revoked AC token") as raised:
        await export(emu, session, tmp_path, token="revoked", timing=timing, sleep=sleep)
    assert "check the token" in str(raised.value)
    assert sum(waits) <= 70
    assert len(waits) < timing.max_attempts


async def test_500s_to_a_token_that_worked_are_an_outage(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Once AC accepted the token, 500s are retried as an outage, not blamed on the token."""
    emu = await emulator()
    client = ExportClient(session, emu.url, SecretStr("acme-token"))
    client.trust.proven = True
    await emu.control("faults", {"fail_rate": 1.0})
    sink = local_sink(tmp_path / "out", tmp_path / "tmp")
    calls = 0

    async def sleep(_: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 15:
            await emu.control("faults", {"fail_rate": 0.0})

    try:
        outcome = await run_export(spec_for(tmp_path, "page"), client, sink, FAST, sleep=sleep)
    finally:
        sink.close()
    assert outcome.manifest.records == 100


def _mocked_statuses(mocked: Any, answers: list[dict[str, Any]]) -> None:
    url = "https://ac.example.com/api/reports/export/page"
    for body in answers:
        mocked.get(f"{url}?fromDate={WINDOW.from_date}&toDate={WINDOW.to_date}", payload=body)


async def test_ac_errors_are_polled_through_then_fail_past_the_budget(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """ERROR answers are AC restarting; past max_ac_failures in a row the export fails."""
    from aioresponses import aioresponses

    from acexport.errors import ExportFailed

    error = {"status": "ERROR", "message": "The last data export file failed.", "createdDate": "x"}
    timing = replace(FAST, max_ac_failures=3)
    with aioresponses() as mocked:
        _mocked_statuses(mocked, [error] * 3)
        sink = local_sink(tmp_path / "out", tmp_path)
        client = ExportClient(session, "https://ac.example.com", SecretStr("tkn-123"))
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(ExportFailed, match=r"AC kept failing.*3 times"),
        ):
            await run_export(spec_for(tmp_path, "page"), client, sink, timing)
        sink.close()
    assert [e["event"] for e in logs].count("export_failed_at_ac") == 3


async def test_unknown_status_is_a_transient_answer(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A status AC never sends is retried like any malformed answer, within max_attempts."""
    from aioresponses import aioresponses

    weird = {"status": "EXPLODED", "message": "?", "createdDate": "x"}
    timing = replace(FAST, max_attempts=4)
    with aioresponses() as mocked:
        _mocked_statuses(mocked, [weird] * 4)
        sink = local_sink(tmp_path / "out", tmp_path)
        client = ExportClient(session, "https://ac.example.com", SecretStr("tkn-123"))
        with pytest.raises(TransientError, match="unknown status 'EXPLODED'"):
            await run_export(spec_for(tmp_path, "page"), client, sink, timing)
        sink.close()


@pytest.mark.slow
async def test_token_appears_in_no_log_line(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """At debug level, through faults and a final auth failure, no line holds the token."""
    token = "tok-" + "x7" * 20
    emu = await emulator(
        tokens={"acme": token},
        redirect=True,
        faults=FaultSettings(
            fail_rate=0.3, throttle_rate=0.2, garbage_rate=0.2, cut_rate=0.3, retry_after_s=0
        ),
    )
    stream = io.StringIO()
    register_secret(token)
    configure_logging("json", "debug", stream)
    await export(emu, session, tmp_path, "event", token=token)
    with pytest.raises(AuthError):
        await export(emu, session, tmp_path, "page", token=token + "-revoked")
    structlog.get_logger().error("probe", detail=f"Authorization: Bearer {token}")
    output = stream.getvalue()
    lines = output.splitlines()
    assert len(lines) > 3
    assert all(json.loads(line)["event"] for line in lines)
    assert token not in output
    assert "[REDACTED]" in output


async def test_zip_payload_is_converted_to_ndjson(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A ZIP of JSON Lines (sniffed from its bytes) arrives as NDJSON; sha256 is the ZIP's."""
    emu = await emulator(records=2500, redirect=True)
    outcome = await export(emu, session, tmp_path, "membership", compression="gzip")
    job = job_for(await emu.jobs(), "membership")
    assert outcome.manifest.payload_format == "zip"
    assert outcome.manifest.payload_sha256 == job["sha256"]
    assert outcome.manifest.records == 2500
    lines = gzip.decompress(
        (tmp_path / "out" / spec_for(tmp_path, "membership", "gzip").key).read_bytes()
    )
    assert len([json.loads(line) for line in lines.splitlines()]) == 2500


async def test_a_retry_after_of_a_year_waits_only_http_retry_max(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """429 with Retry-After: 31536000 is clamped to retry_max (logged), and the export ends."""
    faults = FaultSettings(throttle_rate=1.0, retry_after_s=31_536_000)
    emu = await emulator(tokens={"acme": "acme-token"}, processing_s=0.01, faults=faults)
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        await emu.control("faults", {"throttle_rate": 0.0})

    with structlog.testing.capture_logs() as logs:
        outcome = await export(emu, session, tmp_path, "page", sleep=sleep)
    assert outcome.manifest.payload_sha256 == job_for(await emu.jobs(), "page")["sha256"]
    assert waits[0] == FAST.retry.max_s
    assert max(waits) <= FAST.retry.max_s
    clamped = [entry for entry in logs if entry["event"] == "retry_after_clamped"]
    assert clamped[0]["asked_s"] == 31_536_000


async def test_a_clock_ahead_of_acs_plans_by_acs_time(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 21 item 4: a local clock two days ahead exported windows that had not
    happened at AC (0 records, recorded done). AC's Date header holds planning back,
    and the difference is logged loudly."""
    from datetime import UTC, datetime, timedelta

    from structlog.testing import capture_logs

    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from tests.daemon_helpers import job, write_config

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=3)
    config = write_config(tmp_path, emu, job("d", "alpha", types=["page"], catch_up="4d", lag="0s"))
    ahead = timedelta(days=2)
    with capture_logs() as logs:
        async with Daemon(
            load_settings(config), config, clock=lambda: datetime.now(UTC) + ahead
        ) as daemon:
            assert await daemon.run_once()
    served = [datetime.fromisoformat(j["toDate"]) for j in (await emu.jobs())["jobs"]]
    assert served
    assert max(served) < datetime.now(UTC)  # nothing after AC's now
    (skew,) = [e for e in logs if e["event"] == "clock_skew"]
    assert abs(skew["local_ahead_of_ac_s"] - ahead.total_seconds()) < 10


async def test_statuses_answered_202_as_ac_engine_does_are_polled_to_completion(
    emulator: EmulatorFactory, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Issue 22 item 4: AC's engine answers its statuses with 202. Each was an
    'unexpected' answer counted as a failure; now a status like a 200's, no retries."""
    emu = await emulator(status_code=202, processing_s=0.2, records=50)
    with structlog.testing.capture_logs() as logs:
        outcome = await export(emu, session, tmp_path, "page")
    assert outcome.manifest.records == 50
    assert outcome.requests >= 2  # at least one status before the data
    assert not [e for e in logs if e["event"] == "export_retrying"]


async def test_a_failed_export_is_logged_with_its_workspace_type_and_window(
    tmp_path: Path,
) -> None:
    """Issue 24 item 3: `export_failed`, the most important event, carried neither the
    workspace, nor the type, nor the window."""
    from aiohttp import web
    from structlog.testing import capture_logs

    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from tests.daemon_helpers import export_server

    async def reject(_: web.Request) -> web.Response:
        return web.json_response({"message": "no such thing", "status": "ERROR"}, status=400)

    async with export_server(reject) as base:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{tmp_path / "state"}"\noutput_dir = "{tmp_path / "out"}"\n'
            f'listen = ""\n[workspaces.acme]\nbase_url = "{base}"\ntoken = "t"\n'
            '[[jobs]]\nname = "d"\nworkspace = "acme"\ntypes = ["page"]\ncatch_up = "1d"\n'
            'lag = "0s"\n'
        )
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with Daemon(load_settings(config), config) as daemon:
                assert not await daemon.run_once()
    failed = [e for e in logs if e["event"] == "export_failed"]
    assert failed
    for event in failed:
        assert event["workspace"] == "acme"
        assert event["type"] == "page"
        assert event["window"].endswith("T00:00:00.000Z")
        assert "no such thing" in event["error"]


async def test_a_look_that_queues_nothing_is_not_an_info_line(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Issue 24 item 9: `job_looked due=8 queued=0` every minute was info-level noise."""
    from structlog.testing import capture_logs

    from acexport.config import load_settings
    from acexport.daemon import Daemon
    from tests.daemon_helpers import job, write_config

    emu = await emulator(tokens={"alpha": "alpha-token"}, records=3)
    config = write_config(tmp_path, emu, job("d", "alpha", types=["page"], catch_up="2d", lag="0s"))
    with capture_logs() as logs:
        async with Daemon(load_settings(config), config) as daemon:
            assert await daemon.run_once()
            assert await daemon.run_once()  # everything is done: nothing to queue
    looks = [(e["queued"], e["log_level"]) for e in logs if e["event"] == "job_looked"]
    assert looks == [(2, "info"), (0, "debug")]
