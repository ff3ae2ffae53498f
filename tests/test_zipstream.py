"""ZIP payloads read as they stream: every writer's layout, every way to be damaged."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acexport.errors import PayloadError, PayloadTooLarge
from acexport.limits import PayloadLimits
from acexport.payload.writer import PayloadWriter

RECORDS = [{"id": str(i), "name": f"visit {i} \u2014 caf\u00e9", "n": i * 7} for i in range(3000)]
NDJSON = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in RECORDS)


class _Unseekable(io.RawIOBase):
    """A response body: write-only, no seek, no tell (how AC's server streams)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def zip_bytes(
    members: dict[str, bytes],
    *,
    streamed: bool,
    method: int = zipfile.ZIP_DEFLATED,
    zip64: bool = False,
) -> bytes:
    """A ZIP as a streaming server (data descriptors) or a file writer (sizes up front)."""
    target: io.RawIOBase | io.BytesIO = _Unseekable() if streamed else io.BytesIO()
    with zipfile.ZipFile(target, "w", method) as archive:  # type: ignore[arg-type]
        for name, data in members.items():
            with archive.open(name, "w", force_zip64=zip64) as member:
                member.write(data)
    return bytes(target.data if isinstance(target, _Unseekable) else target.getvalue())


def read(
    tmp_path: Path, payload: bytes, chunk: int = 65536, limits: PayloadLimits | None = None
) -> tuple[bytes, int]:
    writer = PayloadWriter(tmp_path, "none", limits)
    try:
        for start in range(0, len(payload), chunk):
            writer.feed(payload[start : start + chunk])
        summary = writer.finish()
    except BaseException:
        writer.discard()
        raise
    data = summary.path.read_bytes()
    summary.path.unlink()
    assert summary.served_format == "zip"
    return data, summary.records


@pytest.mark.parametrize("streamed", [True, False], ids=["descriptor", "sizes-in-header"])
@pytest.mark.parametrize("zip64", [False, True], ids=["zip32", "zip64"])
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_every_layout_streams_to_the_same_lines(
    tmp_path: Path, streamed: bool, zip64: bool, chunk: int
) -> None:
    """Data descriptors (32- or 64-bit) or sizes up front, in any chunking: same lines."""
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=streamed, zip64=zip64)
    assert read(tmp_path, payload, chunk=chunk) == (NDJSON, len(RECORDS))


def test_several_members_json_and_jsonl_and_a_directory(tmp_path: Path) -> None:
    """Members in order: a directory entry, a JSON array, JSON Lines."""
    array = json.dumps(RECORDS[:10]).encode()
    some = NDJSON[: NDJSON.index(b"\n", 500) + 1]
    payload = zip_bytes({"d/": b"", "a.json": array, "b.jsonl": some}, streamed=True)
    data, records = read(tmp_path, payload, chunk=1000)
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[:10] == RECORDS[:10]
    assert data[-len(some) :] == some
    assert records == 10 + some.count(b"\n")


def test_a_stored_member_of_unknown_size_falls_back_to_spooling(tmp_path: Path) -> None:
    """Stored with a data descriptor cannot be read in one pass: spooled, same result."""
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=True, method=zipfile.ZIP_STORED)
    assert read(tmp_path, payload, chunk=4096) == (NDJSON, len(RECORDS))
    assert list(tmp_path.iterdir()) == []  # the spool is gone too


def test_a_stored_member_of_known_size_streams(tmp_path: Path) -> None:
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=False, method=zipfile.ZIP_STORED)
    assert read(tmp_path, payload, chunk=333) == (NDJSON, len(RECORDS))


@settings(max_examples=60, deadline=None)
@given(cut=st.floats(0.0, 0.9999))
def test_a_zip_cut_anywhere_fails_and_leaves_nothing(tmp_path_factory, cut: float) -> None:  # type: ignore[no-untyped-def]
    """Cut before the end record's last byte: PayloadError, never a short file."""
    tmp_path = tmp_path_factory.mktemp("cut")
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=True)
    with pytest.raises(PayloadError):
        read(tmp_path, payload[: int(len(payload) * cut)] or b"PK\x03\x04", chunk=997)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_member_is_refused(tmp_path: Path) -> None:
    """A flipped byte in the deflate stream: a deflate error or a CRC mismatch, named."""
    payload = bytearray(zip_bytes({"page.jsonl": NDJSON}, streamed=True))
    rng = random.Random(3)
    for _ in range(20):
        damaged = bytearray(payload)
        damaged[rng.randrange(60, len(payload) // 2)] ^= 0x55
        with pytest.raises(PayloadError, match=r"damaged|CRC|JSON"):
            read(tmp_path, bytes(damaged))
        assert list(tmp_path.iterdir()) == []


def test_a_central_directory_that_disagrees_is_refused(tmp_path: Path) -> None:
    """The stream's member and the central directory must agree (here: the name)."""
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=True)
    central = payload.rindex(b"PK\x01\x02")
    forged = payload[: central + 46] + b"evil.jsonl" + payload[central + 46 + 10 :]
    with pytest.raises(PayloadError, match=r"central directory names .evil\.jsonl."):
        read(tmp_path, forged)


def test_bytes_after_the_end_record_are_refused(tmp_path: Path) -> None:
    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=True)
    with pytest.raises(PayloadError, match="after its end record"):
        read(tmp_path, payload + b"<html>proxy page</html>")


def test_a_streamed_zip_bomb_is_stopped_while_it_inflates(tmp_path: Path) -> None:
    """The inflate ratio is enforced as bytes arrive, with bounded memory."""
    bomb = zip_bytes({"page.jsonl": b"{}\n" * 20_000_000}, streamed=True)  # 60 MB in ~60 kB
    with pytest.raises(PayloadTooLarge, match="inflates"):
        read(tmp_path, bomb, limits=PayloadLimits(max_ratio=100))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compressed_output_is_standard_and_duckdb_reads_it(
    tmp_path: Path, compression: str
) -> None:
    """gzip (ISA-L) passes `gzip -t`; zstd is a standard frame; DuckDB reads both."""
    import subprocess

    import duckdb

    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=True)
    writer = PayloadWriter(tmp_path, compression)  # type: ignore[arg-type]
    for start in range(0, len(payload), 10_000):
        writer.feed(payload[start : start + 10_000])
    summary = writer.finish()
    suffix = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst"}[compression]
    path = summary.path.rename(tmp_path / f"page{suffix}")
    if compression == "gzip":
        subprocess.run(["gzip", "-t", str(path)], check=True)
    else:
        import zstandard

        assert zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()) == NDJSON
    count = duckdb.execute("SELECT count(*) FROM read_json(?)", [str(path)]).fetchone()
    assert count == (len(RECORDS),)


@pytest.mark.parametrize(
    ("streamed", "method"),
    [(True, zipfile.ZIP_DEFLATED), (False, zipfile.ZIP_STORED), (True, zipfile.ZIP_STORED)],
)
def test_a_finished_writer_is_freed_without_the_cycle_collector(
    tmp_path: Path, streamed: bool, method: int
) -> None:
    """No reference cycle survives an export: at a thousand lanes, the collector's full
    passes over such garbage stalled the event loop for 100 ms and more."""
    import gc

    payload = zip_bytes({"page.jsonl": NDJSON}, streamed=streamed, method=method)
    gc.collect()
    gc.disable()
    try:
        writer = PayloadWriter(tmp_path, "gzip")
        for start in range(0, len(payload), 4096):
            writer.feed(payload[start : start + 4096])
        writer.finish().path.unlink()
        del writer
        gc.set_debug(gc.DEBUG_SAVEALL)
        assert gc.collect() == 0, [type(garbage).__name__ for garbage in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
