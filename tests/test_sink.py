"""The sink: sniffing, conversion to NDJSON, verification, atomic commit, cleanup."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acexport.errors import PayloadError
from acexport.payload import PayloadWriter
from acexport.sink import Manifest, Sink

RECORDS = [
    {"id": "1", "name": "Zoë \u2014 \U0001f331", "nested": {"a": [1, 2, {"b": None}]}},
    {"id": "2", "text": 'line\nbreak escaped, "quotes" and \\ backslash'},
    {"id": "3", "n": 12345678901234567890, "f": 1.5e-7, "t": True},
]


def ndjson(records: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def convert(tmp_path: Path, payload: bytes, chunk: int = 7, compression: str = "none") -> bytes:
    writer = PayloadWriter(tmp_path, compression)  # type: ignore[arg-type]
    for start in range(0, len(payload), chunk):
        writer.feed(payload[start : start + chunk])
    summary = writer.finish()
    assert summary.payload_bytes == len(payload)
    assert summary.payload_sha256 == hashlib.sha256(payload).hexdigest()
    data = summary.path.read_bytes()
    summary.path.unlink()
    return gzip.decompress(data) if compression == "gzip" else data


def parse_lines(data: bytes) -> list[object]:
    return [json.loads(line) for line in data.splitlines()]


def test_ndjson_passes_through_unchanged(tmp_path: Path) -> None:
    """NDJSON is written as served and its records counted."""
    payload = ndjson(RECORDS)
    assert convert(tmp_path, payload) == payload


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_becomes_one_record_per_line(tmp_path: Path, indent: int | None) -> None:
    """A JSON array, compact or pretty-printed, becomes one record per NDJSON line."""
    payload = json.dumps(RECORDS, indent=indent, ensure_ascii=False).encode()
    out = convert(tmp_path, payload, chunk=5)
    assert parse_lines(out) == RECORDS
    assert out.count(b"\n") == len(RECORDS)


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_json_array_conversion_is_independent_of_chunking(cuts: list[int]) -> None:
    """However the bytes are split (mid-character, mid-number), the output is the same."""
    import tempfile

    payload = json.dumps(RECORDS * 5, ensure_ascii=False).encode()
    with tempfile.TemporaryDirectory() as tmp:
        writer = PayloadWriter(Path(tmp), "none")
        pos = 0
        for size in cuts:
            writer.feed(payload[pos : pos + size])
            pos += size
        writer.feed(payload[pos:])
        summary = writer.finish()
        assert summary.records == 15
        assert parse_lines(summary.path.read_bytes()) == RECORDS * 5


def test_zip_of_json_and_jsonl_members(tmp_path: Path) -> None:
    """A ZIP payload's JSON and JSON Lines members are converted, in archive order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("part-1.json", json.dumps(RECORDS[:2]))
        archive.writestr("dir/", b"")
        archive.writestr("part-2.jsonl", ndjson(RECORDS[2:]))
    writer = PayloadWriter(tmp_path, "gzip")
    writer.feed(buffer.getvalue())
    summary = writer.finish()
    assert summary.format == "zip"
    assert summary.records == 3
    assert parse_lines(gzip.decompress(summary.path.read_bytes())) == RECORDS
    assert [p.suffix for p in tmp_path.iterdir()] == [".part"]  # the spool is gone


def test_gzip_output_holds_the_same_records(tmp_path: Path) -> None:
    """compression=gzip writes a gzip file of the same NDJSON."""
    payload = ndjson(RECORDS)
    assert convert(tmp_path, payload, compression="gzip") == payload


def test_empty_payload_is_zero_records(tmp_path: Path) -> None:
    """An export with no data is a valid, empty file."""
    writer = PayloadWriter(tmp_path, "none")
    summary = writer.finish()
    assert (summary.records, summary.payload_bytes) == (0, 0)
    assert convert(tmp_path, b"[]") == b""


def test_missing_final_newline_is_accepted_if_the_last_record_is_whole(tmp_path: Path) -> None:
    """A last line without newline is complete JSON: it is kept, and a newline added."""
    payload = ndjson(RECORDS).rstrip(b"\n")
    assert convert(tmp_path, payload) == ndjson(RECORDS)


@pytest.mark.parametrize(
    "payload",
    [
        ndjson(RECORDS)[:-10],  # NDJSON cut inside the last record
        json.dumps(RECORDS).encode()[:-1],  # array without its closing bracket
        json.dumps(RECORDS).encode()[:40],  # array cut inside an element
        b"<html><body>502 Bad Gateway</body></html>",
        b"PK\x03\x04 this is not really a zip",
        b'{"id": 1}\n{"id": 2}\n]',
        b"[1, 2] trailing",
    ],
    ids=["ndjson-cut", "array-unclosed", "array-cut", "html", "broken-zip", "bad-tail", "trail"],
)
def test_cut_or_damaged_payloads_are_rejected(tmp_path: Path, payload: bytes) -> None:
    """Truncated or non-JSON payloads raise PayloadError, never a silent partial file."""
    writer = PayloadWriter(tmp_path, "none")

    def feed_all_and_finish() -> None:
        for start in range(0, len(payload), 16):
            writer.feed(payload[start : start + 16])
        writer.finish()

    with pytest.raises(PayloadError):
        feed_all_and_finish()
    writer.discard()
    assert list(tmp_path.iterdir()) == []


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _manifest(name: str) -> Manifest:
    return Manifest(
        workspace="acme",
        type="page",
        fromDate="2022-01-01T00:00:00.000Z",
        toDate="2022-01-01T23:59:59.999Z",
        createdDate=None,
        downloadedAt="2022-01-02T00:00:00.000Z",
        file=name,
        records=3,
        payload_bytes=0,
        payload_sha256="",
        format="ndjson",
        compression="none",
    )


async def test_commit_places_file_then_manifest_and_leaves_no_temp(tmp_path: Path) -> None:
    """A committed export is the data file plus its manifest; the temp dir is empty."""
    sink = Sink(tmp_path / "state" / "tmp", "none")
    writer = sink.new_writer()
    payload = ndjson(RECORDS)
    await sink.receive(writer, _chunks(payload, 10))
    summary = await sink.finish(writer)
    destination = tmp_path / "out" / "acme" / "page.jsonl"
    manifest_path = await sink.commit(summary, destination, _manifest(destination.name))
    sink.close()
    assert destination.read_bytes() == payload
    assert json.loads(manifest_path.read_text())["file"] == "page.jsonl"
    assert manifest_path.name == "page.jsonl.manifest.json"
    assert list((tmp_path / "state" / "tmp").iterdir()) == []


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """Temp files of a crashed run are cleaned; a live process's are kept."""
    sink = Sink(tmp_path, "none")
    dead = tmp_path / "999999999-abc.part"
    mine = tmp_path / f"{os.getpid()}-def.part"
    dead.write_bytes(b"x")
    mine.write_bytes(b"y")
    assert sink.clean_stale(everything=False) == 1
    assert not dead.exists()
    assert mine.exists()
    assert sink.clean_stale(everything=True) == 1
    sink.close()
