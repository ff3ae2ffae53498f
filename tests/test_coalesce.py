"""Issue 26: time series asked for exactly, and many windows in one AC request.

Each window's file is checked against AC's engine itself (the emulator's rendering
of the rows whose eventDate lies in the window, ``start <= t < end``): no row lost,
none in two files, also for page rows of a boundary hour.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import itertools
import json
import math
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from acexport.emulator.data import PayloadSpec, iter_blocks
from acexport.errors import ExportFailed
from acexport.payload.split import RecordSplit, SplitPlan, timestamp_key
from tests.conftest import EmulatorFactory, FakeClock
from tests.daemon_helpers import DaemonProcess, job, manifests, run_cli, run_once_at, write_config
from tests.seaweed import Seaweed
from tests.test_s3 import bucket, s3_config

PER_DAY = 240  # AC's engine: events a day (page rows in proportion, each at an hour)
BIG = 10 * PER_DAY  # enough that committing 20 windows takes a while (SIGKILL lands in it)


async def acexport(*args: str) -> tuple[int, str, str]:
    code, out, err = await run_cli(*args)
    return code, out.decode(), err


def ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def expected_rows(
    type_: str, start: datetime, end: datetime, per_day: int = PER_DAY
) -> list[bytes]:
    """AC's rows of ``type_`` whose eventDate lies in ``[start, end)``, as AC renders them."""
    spec = PayloadSpec("acme", type_, ms(start), ms(end), 0, 0, records_per_day=per_day)
    bound = end.strftime("%Y-%m-%d %H:%M:%S")
    return sorted(
        line
        for block in iter_blocks(spec)
        for line in block.splitlines()
        if json.loads(line)["eventDate"] < bound
    )


def window_of(manifest: dict[str, str]) -> tuple[datetime, datetime]:
    start = datetime.fromisoformat(manifest["fromDate"])
    return start, datetime.fromisoformat(manifest["toDate"]) + timedelta(milliseconds=1)


def ndjson_rows(data: bytes) -> list[bytes]:
    return sorted(gzip.decompress(data).splitlines())


def parquet_keys(data: bytes, type_: str) -> list[tuple[str, str]]:
    """Each row's identity: an event's id, a page row's hour and session."""
    table = pq.read_table(io.BytesIO(data))
    dates = [t.strftime("%Y-%m-%d %H:%M:%S") for t in table.column("eventDate").to_pylist()]
    other = table.column("id" if type_ == "event" else "sessionId").to_pylist()
    return sorted(zip(dates, other, strict=True))


def expected_keys(type_: str, start: datetime, end: datetime) -> list[tuple[str, str]]:
    keys = []
    for line in expected_rows(type_, start, end):
        row = json.loads(line)
        keys.append((row["eventDate"][:19], row["id" if type_ == "event" else "sessionId"]))
    return sorted(keys)


# -- the split itself ------------------------------------------------------------------

DAY1 = datetime(2026, 11, 1, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY2 + timedelta(days=1)


def split_into(
    plan: SplitPlan, lines: list[bytes], step: int = 7
) -> tuple[list[list[bytes]], RecordSplit]:
    out: list[list[bytes]] = [[] for _ in plan.windows]
    split = RecordSplit(plan, [out[i].extend for i in range(len(plan.windows))])
    payload = b"".join(lines)
    for start in range(0, len(payload), step):  # chunks cut anywhere, mid-line too
        split.write_many([payload[start : start + step]])
    split.finish()
    return out, split


def test_a_record_goes_to_the_one_window_its_timestamp_is_in() -> None:
    """An event in a window's last millisecond (AC's microseconds) is in it; a page row
    of the boundary hour is in the next window only; BigQuery's form and ISO 8601."""
    plan = SplitPlan("event", DAY1, DAY3, [(DAY1, DAY2), (DAY2, DAY3)])
    lines = [
        b'{"id":"a","eventDate":"2026-11-01 23:59:59.999400 UTC"}\n',  # last ms of day 1
        b'{"id":"b","eventDate":"2026-11-02 00:00:00 UTC"}\n',  # the boundary: day 2
        b'{"id":"c","eventDate":"2026-11-01T00:00:00Z"}\n',
        b'{"id":"d","eventDate":"2026-11-02T01:30:00+02:00"}\n',  # 23:30 UTC on day 1
        b'{"id":"e", "eventDate" : "2026-11-02 12:00:00.5 UTC"}\n',
        b'{"id":"f","eventDate":"2026-11-03 00:00:00 UTC"}\n',  # the span's end: no window
    ]
    (day1, day2), split = split_into(plan, lines)
    assert [json.loads(x)["id"] for x in day1] == ["a", "c", "d"]
    assert [json.loads(x)["id"] for x in day2] == ["b", "e"]
    assert split.rows == [3, 2]
    assert split.skipped == 1


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":"x","eventDate":"2026-10-31 23:59:59.999999 UTC"}\n',  # before the range
        b'{"id":"x","eventDate":"2026-11-03 00:00:00.001000 UTC"}\n',  # after it
        b'{"id":"x","eventDate":"yesterday"}\n',
        b'{"id":"x"}\n',
        # Issue 34 item 15: beyond datetime in UTC; an OverflowError traceback before.
        b'{"id":"x","eventDate":"9999-12-31T23:00:00-02:00"}\n',
        b'{"id":"x","eventDate":"0001-01-01T00:30:00+01:00"}\n',
    ],
)
def test_a_record_outside_the_requested_range_or_unreadable_fails_the_export(
    line: bytes,
) -> None:
    """AC promised the range: such a record is not dropped, the export is not trusted."""
    plan = SplitPlan("event", DAY1, DAY3, [(DAY1, DAY2), (DAY2, DAY3)])
    with pytest.raises(ExportFailed, match="eventDate"):
        split_into(plan, [line])


def test_timestamp_keys_sort_as_instants() -> None:
    forms = [b"2026-11-01 23:59:59.9994 UTC", b"2026-11-01T23:59:59.999400Z",
             b"2026-11-02T00:59:59.9994+01:00", b"2026-11-01 23:59:59.999400123"]  # fmt: skip
    assert {timestamp_key(form) for form in forms} == {b"2026-11-01T23:59:59.999400"}
    assert timestamp_key(b"2026-11-01") is None


# -- end to end ------------------------------------------------------------------------


async def test_a_60_day_backfill_takes_few_requests_and_every_window_holds_its_rows(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """A 60-day backfill of event and page against AC's engine with its worker's tick
    (scaled): at most 2 x ceil(60/31) AC exports instead of 120, and each of the 120
    files holds exactly its window's rows."""
    emu = await emulator(records_per_day=PER_DAY, tick_s=0.1, processing_s=0.05)
    config = write_config(tmp_path, emu, job("d", "acme", types=["event", "page"], catch_up="0s"))
    code, _, err = await acexport("backfill", "--config", str(config), "--job", "d",
                                  "--from", "2026-08-01", "--to", "2026-09-29")  # fmt: skip
    assert code == 0, err[-2000:]

    served = (await emu.jobs())["jobs"]
    assert len(served) <= 2 * math.ceil(60 / 31), [(j["fromDate"], j["toDate"]) for j in served]
    written = manifests(tmp_path / "exports")
    assert len(written) == 120
    assert len({(m["type"], m["fromDate"]) for m in written}) == 120
    by_sha = {j["sha256"]: j for j in served}
    for manifest in written:
        request = by_sha[manifest["payload_sha256"]]  # the request it was cut out of
        assert (manifest["request_fromDate"], manifest["request_toDate"]) == (
            request["fromDate"],
            request["toDate"],
        )
        start, end = window_of(manifest)
        path = next((tmp_path / "exports").rglob(manifest["file"]))
        assert ndjson_rows(path.read_bytes()) == expected_rows(manifest["type"], start, end)
        assert manifest["records"] == len(expected_rows(manifest["type"], start, end))
    # A page row of each boundary hour is in one file: 60 days of whole hours.
    pages = sum(m["records"] for m in written if m["type"] == "page")
    assert pages == len(expected_rows("page", datetime(2026, 8, 1, tzinfo=UTC),
                                      datetime(2026, 9, 30, tzinfo=UTC)))  # fmt: skip


@pytest.mark.slow
async def test_coalesced_parquet_windows_land_in_s3_each_with_its_rows(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """The same split into Parquet files in an S3 bucket, three requests of up to a
    week for 20 days of each type."""
    emu = await emulator(records_per_day=PER_DAY, tick_s=0.1, processing_s=0.05)
    name = bucket(seaweed)
    jobs = job("d", "acme", types=["event", "page"], catch_up="0s", coalesce_max="7d")
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name, extra="")
    config.write_text(config.read_text().replace("[output]\n", '[output]\nformat = "parquet"\n'))
    code, _, err = await acexport("backfill", "--config", str(config), "--job", "d",
                                  "--from", "2026-08-01", "--to", "2026-08-20")  # fmt: skip
    assert code == 0, err[-2000:]

    assert len((await emu.jobs())["jobs"]) == 2 * 3
    objects = seaweed.objects(name)
    found = [json.loads(v) for k, v in objects.items() if k.endswith(".manifest.json")]
    assert len(found) == 40
    for manifest in found:
        start, end = window_of(manifest)
        (key,) = [k for k in objects if k.endswith("/" + manifest["file"])]
        assert manifest["request_windows"] in (6, 7)
        keys = parquet_keys(objects[key], manifest["type"])
        assert keys == expected_keys(manifest["type"], start, end)


@pytest.mark.slow
async def test_sigkill_mid_split_leaves_whole_windows_and_resumes_the_same_request(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Killed while a coalesced request's windows are being committed: what is in the
    output is whole (data and manifest), and a restart finishes the rest from the same
    AC export; every window once, with its rows."""
    emu = await emulator(records_per_day=BIG, processing_s=0.05)
    config = write_config(tmp_path, emu, job("d", "acme", types=["event"], catch_up="0s"))
    backfill = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "acexport", "backfill", "--config", str(config), "--job", "d",
        "--from", "2026-08-01", "--to", "2026-08-20", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(600):
            if manifests(tmp_path / "exports"):
                break
            await asyncio.sleep(0.01)
        backfill.send_signal(signal.SIGKILL)
    finally:
        await backfill.wait()
    before = manifests(tmp_path / "exports")
    assert 0 < len(before) < 20, "the kill did not land mid-split"
    data = list((tmp_path / "exports").rglob("*.jsonl.gz"))
    assert len(data) in (len(before), len(before) + 1)  # at most one without its manifest

    final = await DaemonProcess.start(config, "--once")
    assert await final.wait(120) == 0, "\n".join(final.raw[-20:])
    written = manifests(tmp_path / "exports")
    assert Counter(m["fromDate"] for m in written) == Counter({m["fromDate"]: 1 for m in written})
    assert len(written) == 20
    assert len((await emu.jobs())["jobs"]) == 1  # the same AC export, resumed
    for manifest in written:
        start, end = window_of(manifest)
        path = next((tmp_path / "exports").rglob(manifest["file"]))
        assert ndjson_rows(path.read_bytes()) == expected_rows("event", start, end, BIG)
    leftovers = [p.name for p in (tmp_path / "exports").rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    # The killed process's per-window temp files were cleaned by the next start.
    assert list((tmp_path / "state" / "tmp").iterdir()) == []


async def test_status_shows_a_coalesced_request_as_one_ac_export_of_many_windows(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """While one request for five windows is at AC, `status` shows one export in flight
    naming its first and last window and their number, not five."""
    emu = await emulator(records_per_day=PER_DAY, processing_s=30)
    jobs = job("d", "acme", types=["page"], catch_up="5d", lag="0s", schedule="every 1h")
    config = write_config(tmp_path, emu, jobs)
    daemon = await DaemonProcess.start(config)
    try:
        await daemon.wait_for(lambda: bool(daemon.events("export_coalesced")))
        assert daemon.events("export_coalesced")[0]["windows"] == 5
        _, out, _ = await acexport("status", "--config", str(config), "--json")
        (lane,) = json.loads(out)["lanes"]
        (flight,) = lane["in_flight"]
        assert flight["windows"] == 5
        assert flight["type"] == "page"
        assert " to " in flight["window"]
        _, out, _ = await acexport("status", "--config", str(config))
        assert "(5 windows in one AC request)" in out
    finally:
        daemon.send(signal.SIGTERM)
        assert await daemon.wait() == 0


async def test_a_window_of_a_coalesced_request_is_restated_on_its_own(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """Two days exported in one request are restated later each on its own: its own
    range asked for, revision 2 naming the file it replaces. (The rows kept the old
    request's range, and a restatement asked for the whole span again as revision 1.)"""
    clock = FakeClock(time.time())
    emu = await emulator(clock=clock, records=6, restate_rate=1.0)
    jobs = job("d", "acme", types=["page"], catch_up="2d", lag="0s", restate="2d")
    config = write_config(tmp_path, emu, jobs)

    async def run_once() -> None:
        await run_once_at(config, clock)

    await run_once()
    first = {m["fromDate"]: m for m in manifests(tmp_path / "exports")}
    assert len(first) == 2
    assert {m["request_windows"] for m in first.values()} == {2}
    clock.advance(3 * 86400)
    await run_once()

    restated = {m["fromDate"]: m for m in manifests(tmp_path / "exports") if m["fromDate"] in first}
    for from_date, manifest in restated.items():
        assert manifest["revision"] == 2
        assert manifest["previous_sha256"] == first[from_date]["file_sha256"]
        assert (manifest["request_fromDate"], manifest["request_windows"]) == (from_date, 1)
    asked = [(j["fromDate"], j["toDate"]) for j in (await emu.jobs())["jobs"]]
    assert len(asked) == len(set(asked))  # the two days' request was not asked again


def test_batches_in_bigquerys_form_are_placed_as_record_by_record() -> None:
    """The split's fast path (a batch whose values are all BigQuery's form, compared as
    text) places every record where the record-by-record path does, around the bounds
    (fractions of any length, trailing zeros, the end instant, the last microsecond)."""
    import random

    rng = random.Random(26)
    bounds = [DAY1, DAY1 + timedelta(hours=7, milliseconds=500), DAY2, DAY3]
    plan = SplitPlan("page", DAY1, DAY3, list(itertools.pairwise(bounds)))
    lines = []
    for n in range(3000):
        at = rng.choice(bounds) + timedelta(microseconds=rng.choice([-1, 0, 1, 999, 5000]))
        at = min(max(at, DAY1), DAY3 + timedelta(microseconds=999))
        fraction = f"{at.microsecond:06d}"[: rng.randint(0, 6)] if at.microsecond else ""
        fraction = fraction.rstrip("0") if rng.random() < 0.5 else fraction
        if fraction and int(fraction.ljust(6, "0")) != at.microsecond:
            fraction = f"{at.microsecond:06d}"  # keep the instant exact
        text = f"{at:%Y-%m-%d %H:%M:%S}{'.' + fraction if fraction else ''} UTC"
        lines.append(b'{"eventDate":"%s","n":%d}\n' % (text.encode(), n))
    fast, fast_split = split_into(plan, lines)  # 7-byte chunks: batches of a few lines
    one_batch, one_split = split_into(plan, lines, step=len(b"".join(lines)))
    slow: list[list[bytes]] = [[] for _ in plan.windows]
    slow_split = RecordSplit(plan, [slow[i].extend for i in range(len(plan.windows))])
    slow_split._route_by_text = lambda *args: False  # type: ignore[method-assign]
    slow_split.write_many([b"".join(lines)])
    slow_split.finish()

    def joined(out: list[list[bytes]]) -> list[bytes]:
        return [b"".join(window) for window in out]

    assert joined(fast) == joined(one_batch) == joined(slow)
    assert fast_split.rows == one_split.rows == slow_split.rows
    assert fast_split.skipped == one_split.skipped == slow_split.skipped > 0
    assert sum(fast_split.rows) > 0


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_splits_window_files_are_whole_streams_of_exactly_their_lines(
    tmp_path: Path, compression: str
) -> None:
    """Issue 34 item 11: a split's zstd windows share one context, each writing its
    lines in frames (one context a window took a 100-window split to 154 MB): every
    file is still one stream that zstd, the zstandard library and DuckDB read whole."""
    import subprocess

    import duckdb
    import zstandard

    from acexport.formats import Compression
    from acexport.payload import outfile
    from acexport.payload.writer import PayloadWriter

    windows = [(DAY1 + timedelta(hours=h), DAY1 + timedelta(hours=h + 1)) for h in range(24)]
    plan = SplitPlan("event", DAY1, DAY2, windows)
    per_hour = 1 + 3 * outfile.FRAME_BYTES // 60_000  # several frames a window
    lines = [
        json.dumps({"id": f"{h}-{n}", "eventDate": f"2026-11-01 {h:02d}:{n % 60:02d}:00 UTC",
                    "pad": "x" * 60}).encode() + b"\n"
        for n in range(per_hour) for h in range(24)
    ]  # fmt: skip
    writer = PayloadWriter(tmp_path, Compression(compression), split=plan)
    payload = b"".join(lines)
    for start in range(0, len(payload), 1 << 20):
        writer.feed(payload[start : start + (1 << 20)])
    summaries = writer.finish_parts()
    for hour, summary in enumerate(summaries):
        data = summary.path.read_bytes()
        if compression == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
            text = reader.read()
            cli = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True)
            assert cli.stdout == text
        elif compression == "gzip":
            text = gzip.decompress(data)
        else:
            text = data
        assert sorted(text.splitlines()) == sorted(
            line.rstrip(b"\n") for line in lines if json.loads(line)["id"].startswith(f"{hour}-")
        )
        assert summary.records == per_hour
    if compression == "zstd":
        target = tmp_path / "w.jsonl.zst"
        summaries[5].path.rename(target)
        query = f"SELECT count(*) FROM read_json('{target}')"  # noqa: S608 - our tmp path
        assert duckdb.connect().sql(query).fetchall() == [(per_hour,)]
