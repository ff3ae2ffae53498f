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
    """A flipped byte in the deflate stream: a deflate error, a CRC mismatch or (inflated
    before its CRC is known) bytes that are not UTF-8, named."""
    payload = bytearray(zip_bytes({"page.jsonl": NDJSON}, streamed=True))
    rng = random.Random(3)
    for _ in range(20):
        damaged = bytearray(payload)
        damaged[rng.randrange(60, len(payload) // 2)] ^= 0x55
        with pytest.raises(PayloadError, match=r"damaged|CRC|JSON|UTF-8"):
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
    # Its own connection, fetched whole: an unfinished result left on DuckDB's default
    # connection made a later test in the same worker fail (ResourceInUseException).
    with duckdb.connect() as con:
        count = con.execute("SELECT count(*) FROM read_json(?)", [str(path)]).fetchall()
    assert count == [(len(RECORDS),)]


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


# Issue 21, items 7-12: what the second adversarial review found around the parser.

STORED = zipfile.ZIP_STORED


@pytest.mark.parametrize("streamed", [True, False], ids=["descriptor", "sizes-in-header"])
@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, STORED])
def test_a_member_without_a_final_line_break_is_not_glued_to_the_next(
    tmp_path: Path, streamed: bool, method: int
) -> None:
    """Item 7: each member's last line ends with the member."""
    members = {"a.json": b'{"a": 1}\n{"a": 2}', "b.json": b'{"b": 3}\n', "c.json": b'{"c": 4}'}
    data, records = read(tmp_path, zip_bytes(members, streamed=streamed, method=method), chunk=5)
    assert data == b'{"a": 1}\n{"a": 2}\n{"b": 3}\n{"c": 4}\n'
    assert records == 4


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
@pytest.mark.parametrize("streamed", [True, False], ids=["descriptor", "sizes-in-header"])
def test_bzip2_and_lzma_members_are_refused_before_inflating(
    tmp_path: Path, method: int, streamed: bool
) -> None:
    """Item 8: a few hundred bytes of bzip2 may inflate to a gigabyte through zipfile,
    with no bound: such members are refused, not read."""
    bomb = zip_bytes({"data.json": b"{}\n" * 2_000_000}, streamed=streamed, method=method)
    assert len(bomb) < 10_000
    with pytest.raises(PayloadError, match=f"compression method {method}"):
        read(tmp_path, bomb, limits=PayloadLimits(max_bytes=8 << 20))
    assert list(tmp_path.iterdir()) == []


def _spooled_pair() -> bytes:
    """Two stored members of unknown size: the ZIP is spooled and read by zipfile."""
    return zip_bytes(
        {"a.json": b'{"a": 1}\n', "b.json": b'{"b": 2}\n'}, streamed=True, method=STORED
    )


def _end_record(payload: bytes) -> int:
    return payload.rindex(b"PK\x05\x06")


def test_a_zip64_end_record_cut_short_is_a_payload_error(tmp_path: Path) -> None:
    """Item 9: was a bare struct.error."""
    payload = zip_bytes({"page.jsonl": NDJSON[:1000]}, streamed=True)
    with pytest.raises(PayloadError, match="cut short"):
        read(tmp_path, payload[: _end_record(payload)] + b"PK\x06\x06\x2c")


def test_a_spooled_zip_with_a_wrong_directory_offset_is_a_payload_error(tmp_path: Path) -> None:
    """Item 9: was reported as a disk error (SinkError, Invalid argument)."""
    payload = bytearray(_spooled_pair())
    end = _end_record(payload)
    payload[end + 16 : end + 20] = (10**6).to_bytes(4, "little")
    with pytest.raises(PayloadError):
        read(tmp_path, bytes(payload))
    assert list(tmp_path.iterdir()) == []


def test_a_name_flagged_utf8_that_is_not_is_a_payload_error(tmp_path: Path) -> None:
    """Item 9: was a UnicodeDecodeError from zipfile."""
    payload = zip_bytes({"café.json": b'{"a": 1}\n'}, streamed=True, method=STORED)
    with pytest.raises(PayloadError):
        read(tmp_path, payload.replace("é".encode(), b"\xff\xfe"))


def test_a_spooled_zip_missing_a_member_in_its_directory_is_refused(tmp_path: Path) -> None:
    """Item 10: zipfile read the one member its damaged directory listed, silently."""
    payload = _spooled_pair()
    first, second = payload.index(b"PK\x01\x02"), payload.rindex(b"PK\x01\x02")
    end = _end_record(payload)
    record = bytearray(payload[end:])
    record[8:12] = (1).to_bytes(2, "little") * 2  # one entry on this disk, one in all
    record[12:16] = (second - first).to_bytes(4, "little")
    with pytest.raises(PayloadError, match=r"does not (account|list)"):
        read(tmp_path, payload[:second] + bytes(record))


def test_bytes_after_a_spooled_zips_end_record_are_refused(tmp_path: Path) -> None:
    """Item 10: the spooled path accepted them."""
    with pytest.raises(PayloadError):
        read(tmp_path, _spooled_pair() + b"<html>proxy</html>")


@pytest.mark.parametrize("chunk", [1, 2])
def test_a_bom_split_across_pieces_is_still_a_bom(tmp_path: Path, chunk: int) -> None:
    """Item 11: a member starting with a BOM, arriving a byte at a time."""
    lines = NDJSON[: NDJSON.index(b"\n", 2000) + 1]
    payload = zip_bytes({"data.json": b"\xef\xbb\xbf" + lines}, streamed=False, method=STORED)
    assert read(tmp_path, payload, chunk=chunk) == (lines, lines.count(b"\n"))


def test_the_array_record_cap_counts_bytes_not_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 12: 300,000 four-byte characters are 1.2 MB, past a 1 MiB cap."""
    from acexport.payload import records

    monkeypatch.setattr(records, "MAX_RECORD_BYTES", 1 << 20)
    element = json.dumps({"text": "\U0001f600" * 300_000}, ensure_ascii=False).encode()
    payload = b"[" + element + b"]"
    writer = PayloadWriter(tmp_path, "none")

    def feed_all() -> None:
        for start in range(0, len(payload), 65536):
            writer.feed(payload[start : start + 65536])
        writer.finish()

    with pytest.raises(PayloadError, match="larger than"):
        feed_all()
    writer.discard()


# The fuzz for ZIPs of several members: any mix of methods, encodings and endings.
member_bodies = st.lists(
    st.tuples(
        st.lists(st.integers(0, 10**6), min_size=0, max_size=5),  # the records
        st.sampled_from(["ndjson", "ndjson-no-final-break", "array"]),
        st.booleans(),  # a leading BOM
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    members=member_bodies,
    method=st.sampled_from([zipfile.ZIP_DEFLATED, STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]),
    streamed=st.booleans(),
    chunk=st.sampled_from([1, 2, 3, 7, 64, 4096]),
)
def test_any_multi_member_zip_gives_each_record_on_its_own_line(  # type: ignore[no-untyped-def]
    tmp_path_factory, members, method: int, streamed: bool, chunk: int
) -> None:
    tmp_path = tmp_path_factory.mktemp("multi")
    contents, expected = {}, []
    for index, (values, shape, bom) in enumerate(members):
        records = [{"n": value, "member": index} for value in values]
        expected += records
        lines = [json.dumps(record).encode() for record in records]
        if shape == "array":
            body = json.dumps(records).encode()
        else:
            body = b"\n".join(lines) + (b"\n" if shape == "ndjson" and lines else b"")
        contents[f"m{index}.json"] = (b"\xef\xbb\xbf" if bom else b"") + body
    payload = zip_bytes(contents, streamed=streamed, method=method)
    if method not in (zipfile.ZIP_DEFLATED, STORED):
        with pytest.raises(PayloadError, match="compression method"):
            read(tmp_path, payload, chunk=chunk)
    else:
        data, count = read(tmp_path, payload, chunk=chunk)
        assert [json.loads(line) for line in data.splitlines()] == expected
        assert count == len(expected)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("streamed", [True, False], ids=["descriptor", "sizes-in-header"])
@pytest.mark.parametrize("where", ["inside", "at the end"])
def test_invalid_utf8_in_a_zip_member_is_refused_as_in_a_raw_body(
    tmp_path: Path, streamed: bool, where: str
) -> None:
    """Issue 34 item 14 (reproduced): invalid UTF-8 inside AC's ZIP was committed while
    a raw NDJSON body with the same bytes was refused (the CRC-32 proves the bytes are
    AC's, not that they are text). Nothing is left behind."""
    bad = b'{"city": "Krak\xf3w"}\n' if where == "inside" else b'{"city": "x"}\n{"a": "\xe2\x82'
    lines = b'{"city": "Berlin"}\n' * 1000 + bad
    for payload in (zip_bytes({"data.json": lines}, streamed=streamed), lines):
        with pytest.raises(PayloadError, match="not valid UTF-8"):
            read(tmp_path, payload)
        assert list(tmp_path.iterdir()) == []


def test_the_utf8_check_of_views_asks_their_piece_once_and_still_refuses_bad_bytes() -> None:
    """The split hands the writer views of each inflated piece; whether a view is ASCII
    is asked of its piece (issue 35: decoding every view cost 0.7 s a GiB). Views of a
    piece with a non-ASCII character still decode, a character cut between two pieces
    joins, and invalid bytes in a view are refused."""
    from acexport.payload.records import Utf8Check

    ascii_piece = b'{"city": "Berlin"}\n' * 100
    check = Utf8Check()
    for start in range(0, len(ascii_piece), 19):
        check.feed(memoryview(ascii_piece)[start : start + 19])
    text = '{"city": "Kraków"}\n'.encode()
    cut = text.index(b"\xc3") + 1  # between the two bytes of "ó"
    check.feed(memoryview(text)[:cut])
    check.feed(memoryview(text)[cut:])
    check.finish()
    bad = b'{"city": "Krak\xf3w"}\n'
    refused = Utf8Check()
    refused.feed(memoryview(ascii_piece)[:19])
    with pytest.raises(PayloadError, match="not valid UTF-8"):
        refused.feed(memoryview(ascii_piece + bad)[len(ascii_piece) :])
