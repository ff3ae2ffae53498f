"""Typed Parquet output (issue 23): one schema per type, nothing lost, nothing silent.

The converter runs on real files with the real engine; end to end, the daemon
writes every type in both modes against the emulator, and each file's values
are checked against the records the emulator serves for the same request
(typed here by an implementation of our own, not the converter's SQL). The
files are read with DuckDB, pyarrow's dataset API and Polars.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from acexport.formats import Compression
from acexport.payload.parquet import ndjson_to_parquet, output_columns
from acexport.tables import TABLES, UNPARSED, Kind, json_schema, parquet_schema
from tests.conftest import EmulatorFactory, RunningEmulator
from tests.daemon_helpers import DaemonProcess, job, manifests, run_cli, write_config
from tests.test_docs import doc_queries

ROOT = Path(__file__).resolve().parent.parent
PARQUET = '[output]\nformat = "parquet"\n'


def test_published_json_schemas_are_generated_from_the_tables() -> None:
    """schemas/<type>.json and schemas/parquet/<type>.json are what acexport.tables
    generates: a changed table without regenerated files (python -m acexport.tables
    schemas) fails here."""
    for type_ in TABLES:
        published = json.loads((ROOT / "schemas" / f"{type_}.json").read_text())
        assert published == json_schema(type_), f"schemas/{type_}.json is stale"
        parquet = json.loads((ROOT / "schemas" / "parquet" / f"{type_}.json").read_text())
        assert parquet == parquet_schema(type_), f"schemas/parquet/{type_}.json is stale"
    assert sorted(p.stem for p in (ROOT / "schemas").glob("*.json")) == sorted(TABLES)


# -- what the output must be, typed independently of the converter -------------------


def timestamp(text: str) -> datetime:
    """BigQuery's '2024-01-05 13:00:00[.123456] UTC' or ISO 8601, as an instant."""
    return datetime.fromisoformat(text.removesuffix(" UTC") + ("+00:00" if " UTC" in text else ""))


def literal_properties(text: str) -> dict[str, str]:
    """AC's concatenated {"name":"value",...}: nothing inside was escaped."""
    if text == "{}":
        return {}
    return dict(pair.split('":"', 1) for pair in text[2:-2].split('","'))


def expected_value(kind: Kind, value: Any) -> Any:
    if value is None:
        return None
    if kind is Kind.INT64:
        return int(value)
    if kind is Kind.TIMESTAMP:
        return timestamp(value)
    if kind is Kind.PROPERTIES:
        if isinstance(value, list):  # the older `properties` array
            return {item["name"]: item["value"] for item in value}
        return literal_properties(value)
    if kind is Kind.FIELDS:
        return [{**item, "dataSourceId": int(item["dataSourceId"])} for item in value]
    return value


def expected_row(type_: str, record: dict[str, Any]) -> dict[str, Any]:
    row = {}
    for column in TABLES[type_]:
        value = record.get(column.name)
        if column.kind is Kind.PROPERTIES and value is None:
            value = record.get("properties")
        row[column.name] = expected_value(column.kind, value)
    row[UNPARSED] = None
    return row


def written_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet file's rows through pyarrow, maps as dicts."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    maps = [f.name for f in table.schema if str(f.type).startswith("map<")]
    for row in rows:
        for name in maps:
            if row[name] is not None:
                row[name] = dict(row[name])
    return rows


def canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)


# -- the converter on values AC may send ----------------------------------------------


def convert(tmp_path: Path, type_: str, lines: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    target = tmp_path / "out.parquet"
    typed = ndjson_to_parquet(source, target, type_, len(lines), Compression.ZSTD, tmp_path / "e")
    return typed, written_rows(target)


def test_values_that_do_not_fit_are_kept_in_unparsed_and_new_columns_as_text(
    tmp_path: Path,
) -> None:
    """INT64 from strings and numbers; timestamps in BigQuery's form (with and without
    fractions) and ISO 8601; eventProperties with unescaped quotes and backslashes
    recovered, an ambiguous one kept as text; the older properties array; a value that
    does not fit (views "n/a", a 3.5, a bad date) null with its original in _unparsed;
    a column AC added kept as text (JSON text for an object). No row is dropped."""
    lines = [
        json.dumps({
            "id": "e1", "channelId": "42", "dataSourceId": 7,
            "createDate": "2024-01-05 13:00:00 UTC",
            "eventDate": "2024-01-05 13:00:00.123456 UTC",
            "eventProperties": '{"title":"Say "hello"","path":"C:\\Program Files"}',
            "loyaltyTier": {"level": 3},
        }),
        json.dumps({
            "id": "e2", "channelId": "n/a", "dataSourceId": "3.5",
            "createDate": "not a date", "eventDate": "2024-01-05T13:00:00.000Z",
            "properties": [{"name": "title", "value": "Docs"}], "loyaltyTier": "gold",
        }),
        json.dumps({"id": "e3", "eventProperties": '{"a":"x","y","b":"z"}'}),
    ]  # fmt: skip
    typed, rows = convert(tmp_path, "event", lines)
    first, second, third = sorted(rows, key=lambda r: r["id"])

    assert first["channelId"] == 42
    assert first["dataSourceId"] == 7
    assert first["createDate"] == datetime(2024, 1, 5, 13, tzinfo=UTC)
    assert first["eventDate"] == datetime(2024, 1, 5, 13, 0, 0, 123456, tzinfo=UTC)
    assert first["eventProperties"] == {"title": 'Say "hello"', "path": "C:\\Program Files"}
    assert json.loads(first["loyaltyTier"]) == {"level": 3}
    assert first[UNPARSED] is None
    assert second["eventDate"] == datetime(2024, 1, 5, 13, tzinfo=UTC)
    assert second["eventProperties"] == {"title": "Docs"}
    assert second["channelId"] is None
    assert second["dataSourceId"] is None
    assert json.loads(second[UNPARSED]) == {
        "channelId": "n/a", "dataSourceId": "3.5", "createDate": "not a date"
    }  # fmt: skip
    assert second["loyaltyTier"] == "gold"
    assert third["eventProperties"] is None  # '"y"' has no value: ambiguous
    assert json.loads(third[UNPARSED]) == {"eventProperties": '{"a":"x","y","b":"z"}'}
    assert typed.rows == 3
    assert typed.new_columns == ("loyaltyTier",)
    assert typed.unparsed_values == 4
    names = [name for name, _ in output_columns("event", ["loyaltyTier"])]
    assert pq.read_schema(tmp_path / "out.parquet").names == names


def test_an_empty_export_is_a_parquet_file_with_the_types_schema(tmp_path: Path) -> None:
    typed, rows = convert(tmp_path, "page", [])
    assert rows == []
    assert typed.rows == 0
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert str(schema.field("views").type) == "int64"
    assert str(schema.field("eventDate").type) == "timestamp[us, tz=UTC]"


# -- end to end -------------------------------------------------------------------------


async def served_records(emu: RunningEmulator, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The records AC serves again for the manifest's exact request (within 24 hours the
    same stored ZIP: its bytes must be the ones the manifest describes), those of a time
    series' window only (its file is cut out of a request through the window's end)."""
    url = emu.export_url(manifest["type"])
    from_date = manifest.get("request_fromDate", manifest["fromDate"])
    params = {"fromDate": from_date, "toDate": manifest.get("request_toDate", manifest["toDate"])}
    headers = {"Authorization": f"Bearer {emu.tokens[manifest['workspace']]}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, params=params, headers=headers) as answer,
    ):
        body = await answer.read()
    assert hashlib.sha256(body).hexdigest() == manifest["payload_sha256"]
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        text = archive.read("data.json").decode()
    records = [json.loads(line) for line in text.splitlines() if line]
    if "request_fromDate" not in manifest:
        return records
    start = datetime.fromisoformat(manifest["fromDate"])
    end = datetime.fromisoformat(manifest["toDate"]) + timedelta(milliseconds=1)
    in_window = [start.strftime("%Y-%m-%d %H:%M:%S"), end.strftime("%Y-%m-%d %H:%M:%S")]
    return [r for r in records if in_window[0] <= r["eventDate"][:19] < in_window[1]]


@pytest.mark.slow
async def test_every_type_in_both_modes_typed_as_ac_served_it(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23's end-to-end test: `run --once` with format = "parquet" writes event and
    page windows and the four entity snapshots; every file's values equal the emulator's
    records typed independently; DuckDB, pyarrow and Polars read them typed; the
    manifests carry rows, fingerprint, new_columns, unparsed_values; verify passes, and
    fails naming a damaged file."""
    emu = await emulator(tokens={"acme": "acme-token"}, records=40)
    config = write_config(tmp_path, emu, job("a", "acme", catch_up="2d", lag="0s"), extra=PARQUET)
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(90) == 0, "\n".join(daemon.raw[-20:])

    written = manifests(tmp_path / "exports")
    assert {(m["type"], m["mode"]) for m in written} == {
        ("event", "windows"), ("page", "windows"), ("identity", "snapshot"),
        ("individual", "snapshot"), ("membership", "snapshot"), ("segment", "snapshot"),
    }  # fmt: skip
    for manifest in written:
        path = next((tmp_path / "exports").rglob(manifest["file"]))
        assert path.suffix == ".parquet"
        records = await served_records(emu, manifest)
        rows = written_rows(path)
        assert canonical(rows) == canonical([expected_row(manifest["type"], r) for r in records])
        assert manifest["format"] == "parquet"
        assert manifest["compression"] == "zstd"
        assert manifest["rows"] == manifest["records"] == len(records) > 0
        assert manifest["new_columns"] == []
        assert manifest["unparsed_values"] == 0
        assert len(manifest["schema_fingerprint"]) == 16
        # Issue 38 item 16: the file's columns are the published Parquet schema's.
        published = json.loads(
            (ROOT / "schemas" / "parquet" / f"{manifest['type']}.json").read_text()
        )
        with duckdb.connect() as con:
            described = con.execute(
                "DESCRIBE SELECT * FROM read_parquet(?, hive_partitioning = false)", [str(path)]
            ).fetchall()
        assert [(c["name"], c["duckdb"]) for c in published["columns"]] == [
            (row[0], row[1]) for row in described
        ]
        arrow = {field.name: str(field.type) for field in pq.read_schema(path)}
        for column in published["columns"]:  # (pyarrow names a map's field in its type)
            assert re.sub(r" \('[^']*'\)", "", arrow[column["name"]]) == column["arrow"]

    monkeypatch.chdir(tmp_path)
    (types,) = duckdb.sql(
        "SELECT DISTINCT typeof(views), typeof(eventDate) FROM read_parquet("
        "'exports/workspace=*/type=page/*/*.parquet', hive_partitioning = true)"
    ).fetchall()
    assert types == ("BIGINT", "TIMESTAMP WITH TIME ZONE")
    titles = duckdb.sql(
        "SELECT count(*) FROM read_parquet('exports/workspace=*/type=event/*/*.parquet', "
        "hive_partitioning = true) WHERE eventProperties['title'] IS NOT NULL"
    ).fetchall()
    events = sum(m["rows"] for m in written if m["type"] == "event")
    assert titles == [(events,)]
    dataset = ds.dataset(  # the manifests beside the files are skipped
        "exports/workspace=acme/type=event",
        format="parquet",
        partitioning="hive",
        exclude_invalid_files=True,
    )
    assert dataset.count_rows() == events
    assert str(dataset.schema.field("channelId").type) == "int64"
    polars = pytest.importorskip("polars")
    frame = polars.scan_parquet(
        "exports/workspace=acme/type=page/**/*.parquet", hive_partitioning=True
    ).collect()
    assert frame.height == sum(m["rows"] for m in written if m["type"] == "page")
    assert frame.schema["views"] == polars.Int64

    # The Parquet queries of docs/data.md, on this output: typed sums, titles from the map.
    top_titles, per_workspace = (duckdb.sql(q).fetchall() for q in doc_queries("read_parquet("))
    pages = sum(m["rows"] for m in written if m["type"] == "page")
    assert [row[0] for row in per_workspace] == ["acme"]
    assert per_workspace[0][1] >= pages  # views are integers, at least one per row
    assert 0 < sum(row[2] for row in top_titles) <= events
    assert all(isinstance(row[1], str) for row in top_titles)

    code, out, err = await run_cli("verify", "--config", str(config))
    assert code == 0, err
    assert f"{len(written)} files" in out.decode()
    damaged = next((tmp_path / "exports").rglob("page_*.parquet"))
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
    code, out, _ = await run_cli("verify", "--config", str(config), "--job", "a")
    assert code == 1
    assert out.decode().splitlines()[0].startswith(f"{damaged}: has other bytes")


@pytest.mark.slow
async def test_a_one_off_export_to_a_parquet_file(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """`acexport export --output x.parquet` writes typed Parquet and its manifest."""
    emu = await emulator(tokens={"acme": "acme-token"}, records=12)
    target = tmp_path / "page.parquet"
    code, _, err = await run_cli(
        "export", "--base-url", emu.url, "--token-env", "ACME_TOKEN", "--type", "page",
        "--from", "2026-11-01", "--to", "2026-11-01", "--output", str(target), "-q",
        env={"ACME_TOKEN": "acme-token"},
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads((tmp_path / "page.parquet.manifest.json").read_text())
    assert manifest["format"] == "parquet"
    assert manifest["rows"] == 12
    assert pq.read_table(target).schema.field("views").type == "int64"


def test_verify_exits_1_for_a_file_gone_missing(tmp_path: Path) -> None:
    """A manifest whose file is gone is named; an unreadable manifest too."""
    out = tmp_path / "exports"
    (out / "x").mkdir(parents=True)
    (out / "x" / "a.jsonl.manifest.json").write_text(  # a file gone
        json.dumps({"manifest_version": 2, "file": "a.jsonl", "file_bytes": 1, "file_sha256": ""})
    )
    (out / "x" / "b.jsonl").write_text("{}\n")
    (out / "x" / "b.jsonl.manifest.json").write_text("{not json")
    config = tmp_path / "c.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "s"}"\noutput_dir = "{out}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "acexport", "verify", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{out / 'x' / 'a.jsonl'}: is missing" in result.stdout
    assert f"{out / 'x' / 'b.jsonl'}: its manifest is not valid JSON" in result.stdout
    assert "2 problems in 2 files checked" in result.stdout


def test_new_columns_are_logged_once_per_type_and_counted_per_file() -> None:
    """schema_drift once per (type, column) per process; the metrics count every file
    holding a new column, and every value kept in _unparsed."""
    from structlog.testing import capture_logs

    from acexport.events import ExportEnded
    from acexport.export.commit import report_new_columns
    from acexport.ops.metrics import Metrics

    with capture_logs() as logs:
        report_new_columns("page", ["scrollDepth"])
        report_new_columns("page", ["scrollDepth"])
        report_new_columns("event", ["scrollDepth", "consent"])
    drift = [line for line in logs if line["event"] == "schema_drift"]
    assert [line["new_columns"] for line in drift] == [["scrollDepth"], ["scrollDepth", "consent"]]

    metrics = Metrics()
    for _ in range(2):
        metrics.export_ended(
            ExportEnded(
                "l", "acme", "page", "j", ok=True, new_columns=("scrollDepth",), unparsed_values=3
            )
        )
    text = metrics.render().decode()
    assert 'acexport_new_columns_total{column="scrollDepth",type="page"} 2.0' in text
    assert 'acexport_unparsed_values_total{type="page"} 6.0' in text


# -- issue 34 items 5 and 6: wide rows and odd keys land ------------------------------

_INDIVIDUAL = (
    '{"id":"1","emailAddress":"a@x","createDate":"2024-01-05 13:00:00 UTC",'
    '"modifiedDate":"2024-01-05 13:00:00 UTC"'
)


def test_ten_thousand_individuals_with_forty_custom_fields_fit_duckdbs_memory(
    tmp_path: Path,
) -> None:
    """Reproduced: 10,000 individuals x 40 custom fields (4 kB rows) ran DuckDB out of
    its 256 MB at every look, the snapshot never landed. Row groups are sized by bytes,
    and an out-of-memory conversion is retried with one thread and smaller groups."""
    from acexport.payload.parquet import row_group_rows

    lines = [
        json.dumps(
            {
                "id": f"{i:064x}",
                "emailAddress": f"u{i}@example.com",
                "createDate": "2024-01-05 13:00:00 UTC",
                "modifiedDate": "2024-01-05 13:00:00 UTC",
                "fields": [
                    {"dataSourceId": "3000", "name": f"customField{j}", "value": "v" * 60}
                    for j in range(40)
                ],
            }
        )
        for i in range(10_000)
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    assert row_group_rows(source.stat().st_size, len(lines)) < 20_000  # by bytes
    typed = ndjson_to_parquet(
        source, tmp_path / "out.parquet", "individual", 10_000, Compression.ZSTD, tmp_path / "e"
    )
    assert typed.rows == 10_000
    table = pq.read_table(tmp_path / "out.parquet", columns=["fields"])
    assert len(table.column("fields")[0].as_py()) == 40


def test_a_conversion_error_is_classified_as_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine error that is not about keys is a ConversionError (acexport's side,
    recorded as a failed export), not an unexpected crash."""
    from acexport.errors import ConversionError
    from acexport.payload import parquet

    def fails(*_: object, **__: object) -> None:
        raise duckdb.IOException("IO Error: cannot open the file")

    monkeypatch.setattr(parquet, "_convert", fails)
    with pytest.raises(ConversionError, match="not AC's data"):
        convert(tmp_path, "individual", [_INDIVIDUAL + "}"])


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([_INDIVIDUAL + ',"Foo":"1","foo":"2"}'], {"Foo": "1", "foo__2": "2"}),
        ([_INDIVIDUAL + ',"":"x"}'], {"__2": "x"}),
        ([_INDIVIDUAL + ',"foo":"1","foo":"2"}'], {"foo": "1", "foo__2": "2"}),
        ([_INDIVIDUAL + ',"_unparsed":"served"}'], {"_unparsed__2": "served"}),
        ([_INDIVIDUAL + ',"EmailAddress":"B@x"}'], {"EmailAddress__2": "B@x"}),
    ],
    ids=["case twins", "empty key", "a key twice", "_unparsed served", "a known column's twin"],
)
def test_odd_keys_are_renamed_and_every_served_value_lands(
    tmp_path: Path, lines: list[str], expected: dict[str, str]
) -> None:
    """Reproduced: keys differing only in case, an empty key, a repeated key made the
    conversion fail forever (DuckDB Binder, Parser, InvalidInput errors), and a served
    `_unparsed` was silently dropped. Renamed, reported as new columns, every value kept."""
    typed, rows = convert(tmp_path, "individual", lines)
    assert typed.rows == 1
    assert set(typed.new_columns) == set(expected)
    assert {k: rows[0][k] for k in expected} == expected
    assert rows[0]["emailAddress"] == "a@x"
    assert not list(tmp_path.rglob("*.keys.jsonl"))
