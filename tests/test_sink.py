"""The sink: sniffing, conversion to NDJSON, verification, atomic commit, cleanup."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acexport.errors import PayloadError, SinkError
from acexport.formats import Compression
from acexport.output import local
from acexport.output.local import LocalStore
from acexport.output.manifest import Manifest
from acexport.output.sink import Sink
from acexport.payload.outfile import OutputFile
from acexport.payload.tempfiles import claim_temp_dir, clean_abandoned
from acexport.payload.writer import PayloadSummary, PayloadWriter

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
    assert summary.served_format == "zip"
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
        job="nightly",
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
        payload_format="ndjson",
        file_bytes=0,
        file_sha256="",
        format="ndjson",
        compression="none",
    )


def test_manifest_is_indented_json_as_readers_know_it() -> None:
    """The manifest's bytes are what json.dumps(indent=2) writes, names and nulls included;
    an NDJSON file's manifest leaves out the Parquet-only fields, a Parquet file's has them."""
    from dataclasses import asdict, replace

    parquet_only = {"rows", "schema_fingerprint", "new_columns", "unparsed_values"}
    parquet_only |= {"request_fromDate", "request_toDate", "request_windows"}  # split only
    parquet_only |= {"unchanged"}  # a re-export's only
    manifest = replace(_manifest('päge "\\ quoted".jsonl'), workspace="Zoë")
    fields = {k: v for k, v in asdict(manifest).items() if k not in parquet_only}
    expected = json.dumps(fields, indent=2, ensure_ascii=False) + "\n"
    assert manifest.to_json() == expected.encode()
    assert json.loads(manifest.to_json())["createdDate"] is None
    typed = replace(manifest, format="parquet", rows=3, schema_fingerprint="f", new_columns=[],
                    unparsed_values=0)  # fmt: skip
    expected = json.dumps(asdict(typed), indent=2, ensure_ascii=False) + "\n"
    assert typed.to_json() != expected.encode()  # the request's fields are left out
    split = replace(typed, request_fromDate="a", request_toDate="b", request_windows=2)
    expected = json.dumps(
        {k: v for k, v in asdict(split).items() if k != "unchanged"}, indent=2, ensure_ascii=False
    )
    assert split.to_json() == (expected + "\n").encode()
    confirmed = replace(split, unchanged=True)
    expected = json.dumps(asdict(confirmed), indent=2, ensure_ascii=False) + "\n"
    assert confirmed.to_json() == expected.encode()


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(max_size=40),
    number=st.integers(min_value=-(2**63), max_value=2**63),
    unchanged=st.sampled_from([None, True, False]),
)
def test_a_manifest_of_any_text_and_numbers_is_json_dumps_indent_2(
    text: str, number: int, unchanged: bool | None
) -> None:
    """to_json writes values without json.dumps (bench/instructions.py): the bytes stay
    json.dumps(indent=2)'s for any text (quotes, controls, non-ASCII) and integer."""
    from dataclasses import asdict, replace

    manifest = replace(
        _manifest(text), workspace=text, records=number, createdDate=None, unchanged=unchanged
    )
    left_out = {"rows", "schema_fingerprint", "new_columns", "unparsed_values"}
    left_out |= {"request_fromDate", "request_toDate", "request_windows"}
    left_out |= {"unchanged"} if unchanged is None else set()
    fields = {k: v for k, v in asdict(manifest).items() if k not in left_out}
    expected = json.dumps(fields, indent=2, ensure_ascii=False) + "\n"
    assert manifest.to_json() == expected.encode()


async def test_commit_places_file_then_manifest_and_leaves_no_temp(
    tmp_path: Path, commit_steps: str
) -> None:
    """A committed export is the data file plus its manifest; the temp dir is empty."""
    sink = _sink(tmp_path / "out", tmp_path / "state" / "tmp")
    writer = sink.new_writer("event")
    payload = ndjson(RECORDS)
    await sink.receive(writer, _chunks(payload, 10))
    finished = await sink.finish(
        writer, PurePosixPath("acme/page.jsonl"), lambda _: _manifest("page.jsonl")
    )
    destination = tmp_path / "out" / "acme" / "page.jsonl"
    assert finished.location is not None  # a local store commits where the file was finished
    manifest_path = Path(finished.location)
    sink.close()
    assert destination.read_bytes() == payload
    assert json.loads(manifest_path.read_text())["file"] == "page.jsonl"
    assert manifest_path.name == "page.jsonl.manifest.json"
    assert list((tmp_path / "state" / "tmp").iterdir()) == []


def test_loose_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    """Temp files of a crashed older acexport (loose in the root) are cleaned; a live
    process's are kept."""
    dead = tmp_path / "acexport-999999999-0123456789abcdef.part"
    mine = tmp_path / f"acexport-{os.getpid()}-0123456789abcdef.spool"
    dead.write_bytes(b"x")
    mine.write_bytes(b"y")
    assert clean_abandoned(tmp_path) == 1
    assert not dead.exists()
    assert mine.exists()


def test_a_live_processs_temp_dir_is_never_cleaned_a_dead_ones_is(tmp_path: Path) -> None:
    """Issue 21 item 24: a daemon starting on a state dir deleted the temp files of an
    `acexport export --config` running beside it; and pids lie across PID namespaces.
    Each process holds its own directory's lock: only abandoned ones are cleaned."""
    root = tmp_path / "tmp"
    alive = claim_temp_dir(root)
    (alive.path / "acexport-1-0123456789abcdef.part").write_bytes(b"in flight")
    # A process that died (SIGKILL) left its directory: its lock is held by nobody.
    child = subprocess.run(
        [sys.executable, "-c",
         "import sys; from pathlib import Path; from acexport.payload.tempfiles import "
         "claim_temp_dir; d = claim_temp_dir(Path(sys.argv[1])); "
         "(d.path / 'acexport-2-0123456789abcdef.spool').write_bytes(b'x'); "
         # A Parquet conversion killed mid-way: its file and DuckDB's spill directory
         # (the full soak with format = "parquet" found them left behind).
         "(d.path / 'acexport-2-0123456789abcdef.parquet.part').write_bytes(b'x'); "
         "(d.path / 'acexport-2-0123456789abcdef.engine').mkdir(); "
         "(d.path / 'acexport-2-0123456789abcdef.engine' / 'duckdb_temp_1.tmp').write_bytes(b'x'); "
         "print(d.path)",
         str(root)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    dead = Path(child.stdout.strip())
    assert dead.is_dir()

    assert clean_abandoned(root) == 3
    assert not dead.exists()
    assert (alive.path / "acexport-1-0123456789abcdef.part").exists()
    alive.release()
    assert list(root.iterdir()) == []


def test_cleanup_never_touches_names_acexport_did_not_make(tmp_path: Path) -> None:
    """Files that merely start with digits and a dash (a user's) survive every cleanup."""
    user_files = ["2022-01-01-report.csv", "12345-notes.txt", "999999999-abc.part", "acexport-1"]
    for name in user_files:
        (tmp_path / name).write_text("keep me")
    (tmp_path / "proc-not-ours").mkdir()
    assert clean_abandoned(tmp_path) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*user_files, "proc-not-ours"])


def _sink(root: Path, temp: Path) -> Sink:
    return Sink(temp, "none", LocalStore(root, temp))


@pytest.fixture(params=["in one call", "step by step"])
def commit_steps(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A local commit in C (one GIL release, ``_localcommit.c``) and in Python (an
    install without a compiler, and the C's fallbacks): the same files, the same
    refusals."""
    if request.param == "step by step":
        monkeypatch.setattr(local, "_compiled", None)
    else:
        assert local._compiled is not None, "built at install (setup.py): not built here"
    return str(request.param)


async def _commit(sink: Sink, key: str) -> str | None:
    writer = sink.new_writer("event")
    await sink.receive(writer, _chunks(ndjson(RECORDS), 10))
    path = PurePosixPath(key)
    finished = await sink.finish(writer, path, lambda _: _manifest(path.name))
    return finished.location


async def test_symlinked_directory_inside_the_output_tree_is_refused(
    tmp_path: Path, commit_steps: str
) -> None:
    """A link planted below the output root is not followed: nothing lands at its target."""
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "acme").symlink_to(elsewhere)
    sink = _sink(root, tmp_path / "tmp")
    with pytest.raises(SinkError, match="link"):
        await _commit(sink, "acme/page.jsonl")
    sink.close()
    assert list(elsewhere.iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_directories_are_made_when_missing_and_a_file_in_their_place_is_refused(
    tmp_path: Path, commit_steps: str
) -> None:
    """A commit opens each directory of its key first and makes it only if missing: the
    root, a day removed since (by ``keep``, by hand), or every level, are made again;
    a plain file where a directory should be is refused, as a link is."""
    root = tmp_path / "out"  # not there yet
    sink = _sink(root, tmp_path / "tmp")
    await _commit(sink, "acme/type=page/date=1/page.jsonl")
    shutil.rmtree(root / "acme" / "type=page")
    await _commit(sink, "acme/type=page/date=2/page.jsonl")
    shutil.rmtree(root)
    await _commit(sink, "acme/type=page/date=3/page.jsonl")
    (root / "acme" / "type=event").write_text("not a directory")
    with pytest.raises(SinkError, match="not a directory"):
        await _commit(sink, "acme/type=event/date=1/event.jsonl")
    sink.close()
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.jsonl")) == [
        "acme/type=page/date=3/page.jsonl"
    ]
    assert (root / "acme/type=page/date=3/page.jsonl").read_bytes() == ndjson(RECORDS)
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_a_linked_output_root_itself_is_allowed(tmp_path: Path, commit_steps: str) -> None:
    """The configured root may be a link (e.g. /var/lib/acexport/exports -> /data)."""
    real, root = tmp_path / "data", tmp_path / "out"
    real.mkdir()
    root.symlink_to(real)
    sink = _sink(root, tmp_path / "tmp")
    await _commit(sink, "acme/page.jsonl")
    sink.close()
    assert (real / "acme" / "page.jsonl").read_bytes() == ndjson(RECORDS)


async def test_staging_across_filesystems_never_writes_through_a_planted_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cross-filesystem moves stage under an unguessable name, created O_EXCL|O_NOFOLLOW."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    root = tmp_path / "out"
    root.mkdir()
    # Plant links at every name the old scheme would have used.
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (root / f".page.jsonl.{pid}.tmp").symlink_to(victim)
    real_replace = os.replace
    calls = 0

    def cross_device_first(src: Any, dst: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if kwargs.get("src_dir_fd") is None:  # the temp dir -> output tree rename
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", cross_device_first)
    monkeypatch.setattr(local, "_compiled", None)  # the steps in Python, os.replace's
    sink = _sink(root, tmp_path / "tmp")
    destination = root / "page.jsonl"
    await _commit(sink, "page.jsonl")
    sink.close()
    assert victim.read_text() == "precious"
    assert not destination.is_symlink()
    assert destination.read_bytes() == ndjson(RECORDS)
    assert calls >= 2


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a tmpfs at /dev/shm")
async def test_a_temp_dir_on_another_filesystem_is_copied_in_by_either_commit(
    tmp_path: Path, commit_steps: str
) -> None:
    """A state dir on another filesystem than the output (two container volumes):
    rename fails with EXDEV, and the file is copied beside its name and renamed in."""
    with tempfile_in_shm() as temp:
        sink = _sink(tmp_path / "out", temp)
        await _commit(sink, "acme/page.jsonl")
        sink.close()
        assert list(temp.iterdir()) == []
    assert (tmp_path / "out/acme/page.jsonl").read_bytes() == ndjson(RECORDS)
    assert (tmp_path / "out/acme/page.jsonl.manifest.json").is_file()
    assert [p.name for p in (tmp_path / "out/acme").iterdir() if p.name.startswith(".")] == []


async def test_a_failed_commit_names_the_file_and_leaves_no_temp(
    tmp_path: Path, commit_steps: str
) -> None:
    """A step that fails after the data file is in place (here the manifest's rename,
    onto a directory) is a SinkError naming the file, with no temp file left."""
    root = tmp_path / "out"
    (root / "acme" / "page.jsonl.manifest.json").mkdir(parents=True)
    sink = _sink(root, tmp_path / "tmp")
    with pytest.raises(SinkError, match=r"committing .*acme/page\.jsonl failed: Is a directory"):
        await _commit(sink, "acme/page.jsonl")
    sink.close()
    assert list((tmp_path / "tmp").iterdir()) == []


@contextlib.contextmanager
def tempfile_in_shm() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _writer_result(tmp_path: Path, payload: bytes, **limits: int) -> PayloadSummary:
    from acexport.limits import PayloadLimits

    writer = PayloadWriter(tmp_path, "none", PayloadLimits(**limits))
    try:
        for start in range(0, len(payload), 1 << 20):
            writer.feed(payload[start : start + (1 << 20)])
        return writer.finish()
    except BaseException:
        writer.discard()
        raise


GOOD = b'{"id": "1", "title": "Caf\xc3\xa9"}\n'


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (GOOD * 1000 + b"<html><body>502 Bad Gateway</body></html>\n" + GOOD * 10, "line break"),
        (GOOD * 1000 + b"\n" + GOOD, "line break"),
        (GOOD * 1000 + b'{"id": "\xff\xfe"}\n' + GOOD, "UTF-8"),
        (GOOD * 1000 + b'{"id": "\xc3' + b'"}\n', "UTF-8"),
        (b'{"status": "PENDING", "message": "come back later", "createdDate": "x"}\n', "status"),
        (b'[{"status": "RUNNING", "createdDate": "x", "message": "m"}]', "status"),
    ],
)
def test_ndjson_is_checked_on_every_line(tmp_path: Path, payload: bytes, why: str) -> None:
    """HTML or bad UTF-8 in the middle, or a lone status object, is never committed."""
    with pytest.raises(PayloadError, match=why):
        _writer_result(tmp_path, payload)
    assert list(tmp_path.iterdir()) == []


def test_a_one_record_membership_is_data(tmp_path: Path) -> None:
    """A membership record has a status too (ACTIVE/INACTIVE): judged by shape, it is data."""
    record = (
        b'{"id": "1", "segmentId": "2", "individualId": "3", "status": "ACTIVE", '
        b'"dateFirstAdded": "2022-01-01T00:00:00.000Z", "dateChanged": "2022-01-01T00:00:00.000Z"}'
    )
    assert _writer_result(tmp_path, record + b"\n").records == 1
    assert _writer_result(tmp_path, b"[" + record + b"]").records == 1


def test_endless_body_stops_at_max_payload(tmp_path: Path) -> None:
    """Past http.max_payload the payload fails with PayloadTooLarge and nothing is kept."""
    from acexport.errors import PayloadTooLarge

    with pytest.raises(PayloadTooLarge, match="max_payload"):
        _writer_result(tmp_path, GOOD * 100_000, max_bytes=1_000_000)
    assert list(tmp_path.iterdir()) == []


def _zip_of(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("page.jsonl", member)
    return buffer.getvalue()


def test_zip_bomb_is_refused_by_the_inflate_ratio(tmp_path: Path) -> None:
    """A ZIP member inflating beyond max_inflate_ratio fails; nothing is kept."""
    from acexport.errors import PayloadTooLarge

    bomb = _zip_of(b"{}\n" * 10_000_000)  # 30 MB of records in about 30 kB
    with pytest.raises(PayloadTooLarge, match="max_inflate_ratio"):
        _writer_result(tmp_path, bomb, max_ratio=200)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_huge_whitespace_and_huge_lines_are_handled_in_linear_time(tmp_path: Path) -> None:
    """96 MB of whitespace in a ZIP member, and a 40 MB line, are dealt with in one pass."""
    import time

    started = time.monotonic()
    blank = _writer_result(tmp_path, _zip_of(b" " * 96_000_000), max_ratio=100_000)
    assert blank.records == 0
    long_line = b'{"x": "' + b"a" * 40_000_000 + b'"}\n'
    assert _writer_result(tmp_path, _zip_of(long_line), max_ratio=100_000).records == 1
    assert _writer_result(tmp_path, b"[" + long_line + b"]").records == 1
    # Quadratic handling took 51 s for 192 MB; linear takes about a second here.
    assert time.monotonic() - started < 30


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.sampled_from([b'{"a": 1}', b'{"b": "x\\u00e9"}', b"{}"]), min_size=1),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=8),
    bad=st.sampled_from([None, b"", b"<html>", b'"x"', b"\xff"]),
)
def test_line_checks_do_not_depend_on_chunking(
    lines: list[bytes], crlf: bool, cuts: list[int], bad: bytes | None
) -> None:
    """However the bytes are cut into chunks, good NDJSON passes and a bad line is caught."""
    from acexport.payload.records import LineChecks, NdjsonLines

    if bad is not None:
        lines = [*lines[:1], bad, *lines[1:]]
    newline = b"\r\n" if crlf else b"\n"
    payload = newline.join(lines) + newline
    edges = sorted({0, len(payload), *(c % (len(payload) + 1) for c in cuts)})
    written: list[bytes] = []
    converter = NdjsonLines(written.extend, LineChecks())
    try:
        converter.feed_many([payload[a:b] for a, b in itertools.pairwise(edges)])
        converter.finish()
    except PayloadError:
        assert bad is not None
    else:
        assert bad is None
        assert b"".join(written).count(b"\n") == len(lines)


@pytest.mark.parametrize("compiled", [True, False], ids=["in one call", "step by step"])
def test_a_small_new_file_is_written_whole_never_over_a_file_or_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiled: bool
) -> None:
    """``write_new`` (the held small output files, the manifests): created new, whole;
    a file already there or a link at its name is refused and left as it was."""
    from acexport.payload import tempfiles

    if not compiled:
        monkeypatch.setattr(tempfiles, "_compiled", None)
    else:
        assert tempfiles.COMPILED, "built at install (setup.py): not built here"
    path = tmp_path / "new"
    tempfiles.write_new(path, b"x" * 300_000)
    assert path.read_bytes() == b"x" * 300_000
    with pytest.raises(FileExistsError):
        tempfiles.write_new(path, b"other")
    assert path.read_bytes() == b"x" * 300_000
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "link").symlink_to(victim)
    with pytest.raises(FileExistsError):
        tempfiles.write_new(tmp_path / "link", b"other")
    assert victim.read_text() == "precious"
    tempfiles.write_new(tmp_path / "unsynced", b"", sync=False)
    assert (tmp_path / "unsynced").read_bytes() == b""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))  # a full disk, mid-write
    try:
        with pytest.raises(OSError, match="too large") as failed:
            tempfiles.write_new(tmp_path / "cut", b"x" * 300_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert failed.value.errno == errno.EFBIG
    assert not (tmp_path / "cut").exists()  # nothing half written left behind


@pytest.mark.parametrize("size", [100, 128 << 10, (128 << 10) + 200, 3 << 20])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_a_file_held_in_memory_or_written_through_is_the_same_file(
    tmp_path: Path, size: int, compression: str
) -> None:
    """Output under 128 KiB is held and written at close in one call, larger output
    is written as it comes: on both sides of the edge the file, its size and its
    hash are what was converted, and no temp file is left behind but the output."""
    line = b'{"id": 1, "pad": "' + b"p" * 90 + b'"}\n'
    payload = line * max(1, size // len(line))  # about ``size``, in whole lines
    writer = PayloadWriter(tmp_path, compression)
    for start in range(0, len(payload), 7001):
        writer.feed_many([payload[start : start + 7001]])
    summary = writer.finish()
    data = summary.path.read_bytes()
    assert (gzip.decompress(data) if compression == "gzip" else data) == payload
    assert summary.file_bytes == len(data)
    assert summary.file_sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == [summary.path.name]


@pytest.mark.parametrize("batch", [100_000, 400_000, 3 << 20])
def test_a_written_file_asks_for_writeback_once_per_mib_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """The kernel is asked to start writing back every MiB as it is written (so the
    final fsync finds little left), once: in batches of any size the asks cover the
    file in order, each at least a MiB, none twice; a small file never asks."""
    from acexport.payload import outfile

    asks: list[tuple[int, int]] = []

    def recorded(fd: int, offset: int, count: int, flags: int) -> int:
        asks.append((offset, count))
        return 0

    monkeypatch.setattr(outfile, "_sync_file_range", recorded)
    size = (9 << 20) + 12345
    out = OutputFile(tmp_path / "out.part", Compression.NONE)
    for start in range(0, size, batch):
        out.write_many([b"x" * min(batch, size - start)])
    out.close()
    assert (tmp_path / "out.part").stat().st_size == size
    assert asks, "a 9 MiB file asks for writeback"
    assert all(count >= 1 << 20 for _, count in asks)
    assert [offset for offset, _ in asks] == list(
        itertools.accumulate([0] + [count for _, count in asks[:-1]])
    )
    assert size - sum(count for _, count in asks) < max(batch, 1 << 20)

    asks.clear()
    small = OutputFile(tmp_path / "small.part", Compression.NONE)
    small.write_many([b"x" * 900_000])
    small.close()
    assert asks == []


def _listing_by_walking(root: Path, prefix: str) -> dict[str, int]:
    """Every file or link under ``root`` (links to directories neither followed nor
    listed) whose name starts with ``prefix``: what a listing must answer."""
    sizes = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            if relative.startswith(prefix):
                sizes[relative] = path.lstat().st_size
    return sizes


async def test_a_local_listing_reads_only_what_the_prefix_can_name(tmp_path: Path) -> None:
    root = tmp_path / "out"
    for name, size in {
        "a/b/x.jsonl": 3,
        "a/b/x.jsonl.manifest.json": 5,
        "a/bc/y.jsonl": 7,  # shares the text "a/b", not the directory
        "a/b/deeper/z.jsonl": 11,
        "other/w.jsonl": 13,
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * size)
    (root / "a/b/linked").symlink_to(root / "other")  # not followed, not listed
    (root / "a/b/file-link").symlink_to(root / "other/w.jsonl")  # listed, as a link
    store = LocalStore(root, tmp_path / "state")

    assert await store.listed_under("a/b/") == {
        "a/b/x.jsonl": 3,
        "a/b/x.jsonl.manifest.json": 5,
        "a/b/deeper/z.jsonl": 11,
        "a/b/file-link": len(str(root / "other/w.jsonl")),
    }
    assert await store.listed_under("a/b") == {
        **await store.listed_under("a/b/"),
        "a/bc/y.jsonl": 7,
    }
    assert await store.listed_under("a/b/x") == {
        "a/b/x.jsonl": 3,
        "a/b/x.jsonl.manifest.json": 5,
    }
    assert await store.listed_under("") == _listing_by_walking(root, "")
    assert await store.listed_under("nothing/here/") == {}
    for outside in ("../", "../out/a/", "/", str(root / "a") + "/"):  # nothing beyond the root
        assert await store.listed_under(outside) == {}
    assert await LocalStore(tmp_path / "never-made", tmp_path).listed_under("") == {}


@settings(max_examples=60, deadline=None)
@given(
    names=st.lists(
        st.lists(st.sampled_from(["a", "ab", "b", "a.x"]), min_size=1, max_size=4),
        max_size=12,
    ),
    prefix=st.one_of(st.text(alphabet="ab./x", max_size=8), st.sampled_from(["../", "/", "a/../"])),
)
def test_a_local_listing_answers_as_walking_the_whole_tree_would(
    names: list[list[str]], prefix: str
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory) / "out"
        root.mkdir()
        for parts in names:
            path = root.joinpath(*parts)
            with contextlib.suppress(OSError):  # a name already made a directory, or so
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(b"x" * len(parts))
        store = LocalStore(root, Path(directory))
        assert store._listed_under(prefix) == _listing_by_walking(root, prefix)
