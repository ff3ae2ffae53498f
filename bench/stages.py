"""Seconds per GiB of each per-byte stage of an export, and which thread runs it.

One thread, in memory, on the emulator's AC-shaped records (event by default, in
BigQuery's JSON encoding; --iso-timestamps for older exports' form): the library
calls acexport makes for every byte, each timed alone (best of --repeat), then the
whole payload writer (ZIP in, one window's NDJSON file out, synced) on the same
data, with one window and with the same records spread over 31 windows (a
coalesced request), in time order and shuffled, the cases taking turns (best and
median of --repeat). The baseline printed beside them is the in-memory inflate with
CPython's zlib (what `unzip` does), the issue's limit.

    python bench/stages.py [--size-mb 256] [--type event|page] [--iso-timestamps]
"""

from __future__ import annotations

import argparse
import codecs
import hashlib
import io
import random
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from acexport.cli import tune_malloc
from acexport.emulator.data import PayloadSpec, iter_blocks
from acexport.formats import Compression
from acexport.payload import codec, linescan
from acexport.payload.split import RecordSplit, SplitPlan
from acexport.payload.writer import PayloadWriter

DAY = datetime(2022, 1, 1, tzinfo=UTC)
PIECE = 1 << 20  # acexport inflates at most 1 MiB a call


def records(type_: str, size_mb: int, days: int, iso: bool) -> bytes:
    """About ``size_mb`` MB of the type's records spread over ``days`` days, in order."""
    sample = b"".join(iter_blocks(PayloadSpec("w", type_, 0, 86_399_999, 1000, 0)))
    count = size_mb * 1_000_000 * 1000 // len(sample)
    from_ms = int(DAY.timestamp() * 1000)
    spec = PayloadSpec(
        "w", type_, from_ms, from_ms + days * 86_400_000 - 1, count, 0, iso_timestamps=iso
    )
    return b"".join(iter_blocks(spec))


def zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("data.json", "w") as member,
    ):
        member.write(data)
    return buffer.getvalue()


def best(work: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def plan(days: int, type_: str = "event") -> SplitPlan:
    windows = [(DAY + timedelta(days=d), DAY + timedelta(days=d + 1)) for d in range(days)]
    return SplitPlan(type_, DAY, windows[-1][1] - timedelta(milliseconds=1), windows)


def stage_times(
    data: bytes, archive: bytes, type_: str, repeat: int
) -> list[tuple[str, float, str]]:
    pieces = [data[at : at + PIECE] for at in range(0, len(data), PIECE)]
    member = memoryview(archive)[30 + len("data.json") :]

    def inflate(inflater_of: Callable[[], codec.Inflater]) -> None:
        inflater = inflater_of()
        for at in range(0, len(member), PIECE):
            rest = member[at : at + PIECE]
            while rest and not inflater.eof:
                inflater.decompress(rest, PIECE)
                rest = inflater.unconsumed_tail

    def utf8() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")()
        for piece in pieces:
            view = memoryview(piece)
            for at in range(0, len(view), 256 << 10):
                decoder.decode(view[at : at + (256 << 10)])

    def utf8_scan() -> None:
        carried = b""
        for piece in pieces:
            rest = linescan.utf8_rest(piece, carried)
            assert rest is not None
            carried = rest

    def split(days: int) -> Callable[[], None]:
        def run() -> None:
            sink = RecordSplit(plan(days, type_), [lambda lines: None] * days)
            sink.write_many(pieces)
            sink.finish()

        return run

    def gzip() -> None:
        compressor = codec.gzip_compressor()
        for piece in pieces:
            compressor.compress(piece)
        compressor.flush()

    def zstd() -> None:
        compressor = codec.zstd_compressor()
        for piece in pieces:
            compressor.compress(piece)
        compressor.flush()

    def sha256(what: list[bytes]) -> Callable[[], None]:
        def run() -> None:
            digest = hashlib.sha256()
            for piece in what:
                digest.update(piece)

        return run

    zip_pieces = [archive[at : at + PIECE] for at in range(0, len(archive), PIECE)]
    released, holds = "GIL released", "holds the GIL"
    scans = released if linescan.COMPILED else holds
    stages = [
        ("inflate (zlib: unzip's)", lambda: inflate(lambda: zlib.decompressobj(-15)), "-"),
        (f"inflate ({codec.LIBRARY}: acexport's)", lambda: inflate(codec.raw_inflater), released),
        ("CRC-32 of the member", lambda: [codec.crc32(p) for p in pieces], released),
        ("SHA-256 of the payload as served", sha256(zip_pieces), f"hash, {released}"),
        ("count lines, in Python", lambda: [p.count(b"\n") for p in pieces], holds),
        (
            "line breaks and shape (linescan)",
            lambda: [linescan.line_breaks(p) for p in pieces],
            f"hash (raw bodies), {scans}",
        ),
        ("split, one window (with its count)", split(1), f"convert, {scans}"),
        ("UTF-8 check, in Python", utf8, holds),
        ("UTF-8 check (linescan)", utf8_scan, f"write, {scans}"),
        ("SHA-256 of the file", sha256(pieces), f"write, {released}"),
        ("gzip level 1", gzip, f"write, {released}"),
        ("zstd level 3", zstd, f"write, {released}"),
    ]
    return [(name, best(work, repeat), thread) for name, work, thread in stages]


WRITER = """
import sys
from pathlib import Path
sys.path[:0] = [{bench!r}]
from stages import plan, run_writer
print(run_writer(Path({zip!r}), int({days}), {compression!r}, Path({temp!r}), {type!r}))
"""


def run_writer(zip_path: Path, days: int, compression: str, temp: Path, type_: str) -> str:
    """In a child process: the payload writer on the ZIP, wall seconds and peak RSS."""
    tune_malloc()
    archive = zip_path.read_bytes()
    began = time.perf_counter()
    writer = PayloadWriter(temp, Compression(compression), split=plan(days, type_))
    for at in range(0, len(archive), 64 << 10):
        writer.feed_many([archive[at : at + (64 << 10)]])
    summaries = writer.finish_parts()
    elapsed = time.perf_counter() - began
    for summary in summaries:
        summary.path.unlink()
    rss = peak_rss_mb() - len(archive) / 1e6
    return f"{elapsed:.3f} {rss:.0f} {sum(s.records for s in summaries)}"


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def writer_time(
    zip_path: Path, days: int, compression: str, temp: Path, type_: str
) -> tuple[float, float, int]:
    script = WRITER.format(
        bench=str(Path(__file__).parent), zip=str(zip_path), days=days,
        compression=compression, temp=str(temp), type=type_,
    )  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    wall, rss, count = out.stdout.split()
    return float(wall), float(rss), int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--type", choices=("event", "page"), default="event")
    parser.add_argument("--iso-timestamps", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="128 MB, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.repeat = 128, 2
    tune_malloc()
    one_day = records(args.type, args.size_mb, 1, args.iso_timestamps)
    gib = (1 << 30) / len(one_day)
    archive = zipped(one_day)
    size, zipped_size = len(one_day) / 1e6, len(archive) / 1e6
    print(f"{size:.0f} MB of {args.type} records ({zipped_size:.0f} MB zipped), one thread, "
          f"best of {args.repeat}, seconds per GiB of JSON Lines:")  # fmt: skip
    for name, seconds, thread in stage_times(one_day, archive, args.type, args.repeat):
        print(f"  {name:<38} {seconds * gib:6.2f} s/GiB   {thread}")
    month = records(args.type, args.size_mb, 31, args.iso_timestamps)
    shuffled = month.splitlines(keepends=True)
    random.Random(35).shuffle(shuffled)
    with tempfile.TemporaryDirectory(prefix="acexport-stages-") as work:
        temp = Path(work)
        zips = {"1 window": zipped(one_day), "31 windows, in time order": zipped(month),
                "31 windows, shuffled": zipped(b"".join(shuffled))}  # fmt: skip
        print(
            "the payload writer, ZIP in, files synced (seconds per GiB, peak RSS beyond the ZIP):"
        )
        paths = {}
        for index, (name, data) in enumerate(zips.items()):
            paths[name] = temp / f"in{index}.zip"
            paths[name].write_bytes(data)
        for compression in ("none", "gzip", "zstd"):
            # The cases take turns, each round starting with the next one: a run just
            # after another's 1 GiB was deleted is slower on this disk, whatever it is
            # (one window measured 0.94 s/GiB first and 1.6 s after 31 windows).
            runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in zips}
            for round_ in range(args.repeat):
                names = list(zips)
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    days = 1 if name == "1 window" else 31
                    runs[name].append(writer_time(paths[name], days, compression, temp, args.type))
            for name, done in runs.items():
                walls = sorted(run[0] for run in done)
                rss = max(run[1] for run in done)
                print(f"  {compression:<5} {name:<28} {walls[0] * gib:6.2f} s/GiB "
                      f"(median {walls[len(walls) // 2] * gib:.2f})  RSS {rss:4.0f} MB  "
                      f"records {done[0][2]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
