"""The README's DuckDB queries, run against what `run --once` really wrote."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, write_config

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_queries(reader: str = "read_json(") -> list[str]:
    """Every indented SQL block of the README that reads the local exports/ directory
    with ``reader``.

    (The S3 section's query is run against a real bucket by tests/test_s3.py.)"""
    blocks = re.findall(r"(?:\n {4}[^\n]*)+", README.read_text())
    queries = [
        "\n".join(line[4:] for line in block.strip("\n").splitlines())
        for block in blocks
        if "'exports/" in block and reader in block
    ]
    return [query.strip().rstrip(";") for query in queries]


def test_the_readme_has_queries() -> None:
    """The README shows the queries this module runs, and the two on Parquet that
    tests/test_parquet.py runs on typed output."""
    assert len(readme_queries()) == 4
    assert len(readme_queries("read_parquet(")) == 2


async def test_readme_queries_read_the_hive_layout(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each README query runs on real output, and its counts match the manifests."""
    tokens = {"acme": "acme-token", "beta": "beta-token"}
    emu = await emulator(tokens=tokens, records=25)
    jobs = job("a", "acme", catch_up="2d", lag="0s") + job(  # every type, snapshots too
        "b", "beta", types=["page"], catch_up="1d", lag="0s"
    )
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace("retention = 1200", "retention = 13"))
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 0
    written = manifests(tmp_path / "exports")
    monkeypatch.chdir(tmp_path)  # the queries read exports/ relative to where they run
    results = {query: duckdb.sql(query).fetchall() for query in readme_queries()}
    (latest,) = [rows for query, rows in results.items() if "type=individual" in query]
    (by_type_and_date,) = [rows for query, rows in results.items() if "date, count" in query]
    (per_workspace,) = [rows for query, rows in results.items() if "visitors" in query]
    (local_days,) = [rows for query, rows in results.items() if "local_day" in query]
    (snapshot,) = [m for m in written if m["type"] == "individual"]
    assert latest == [("acme", snapshot["file"].split("_")[1].split(".")[0], snapshot["records"])]
    expected: Counter[tuple[str, str]] = Counter()
    for manifest in [m for m in written if m["mode"] == "windows"]:
        path = next((tmp_path / "exports").rglob(manifest["file"]))
        expected[(manifest["type"], path.parent.name.removeprefix("date="))] += manifest["records"]
    got = {(row[0], str(row[1])): row[2] for row in by_type_and_date}
    assert got == dict(expected)
    visits = {row[0]: row[1] for row in per_workspace}
    pages = [m for m in written if m["type"] == "page"]
    assert visits == {
        ws: sum(m["records"] for m in pages if m["workspace"] == ws) for ws in ("acme", "beta")
    }
    assert all(row[2] >= row[1] for row in per_workspace)  # views: INT64 as text, cast
    assert all(row[3] >= 1 for row in per_workspace)
    # Issue 38 item 13: the events by their Berlin day, as recomputed from the files.
    berlin = ZoneInfo("Europe/Berlin")
    by_day: Counter[date] = Counter()
    for path in (tmp_path / "exports").rglob("event_*.jsonl.gz"):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            stamp = json.loads(line)["eventDate"].removesuffix(" UTC")
            instant = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            by_day[instant.astimezone(berlin).date()] += 1
    assert dict(local_days) == dict(by_day)
