"""Download speed and memory of `acexport export` against curl, from the same emulator URL.

Figure: median wall time of `acexport export` (stream, hash, unzip, count,
verify, fsync, rename, manifest) for a ready export of about --size-mb MB of
JSON Lines, and its peak RSS.

With `--format zip` (the default, AC's real format: a chunked ZIP) the
baseline is `curl -o x.zip && unzip -p x.zip > out.jsonl && sync out.jsonl`
(with `--gzip`: `unzip -p x.zip | gzip -1 > out.jsonl.gz`), the same work and
durability. With `--format ndjson` (the legacy raw body, served with
Content-Length) it is `curl -o FILE && sync FILE`. Plain `curl -o` is printed
for reference. All in the same run, alternating rounds.
Targets: time ratio <= 1.15 against the baseline; peak RSS < 100 MB at any size.

    python bench/download_vs_curl.py [--size-mb 1024] [--rounds 5] [--gzip]
                                     [--format zip|ndjson] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from acexport.emulator.process import EmulatorClient, running_emulator

TOKEN = "bench-token"
DAY = ("2022-01-01", "fromDate=2022-01-01T00:00:00.000Z&toDate=2022-01-02T00:00:00.000Z")
PAGE_RECORD_BYTES = 410  # the emulator's page rows (hourly aggregates), on average


def timed(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} failed with {process.returncode}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gzip", action="store_true", help="acexport writes gzip output")
    parser.add_argument("--format", choices=("zip", "ndjson"), default="zip")
    parser.add_argument("--quick", action="store_true", help="256 MB, 3 rounds")
    parser.add_argument("--dir", type=Path, help="where files are written (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.rounds = 256, 3
    for tool in ("curl", "unzip", "gzip"):
        if not shutil.which(tool):
            print(f"{tool} is required for this benchmark", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="acexport-bench-", dir=args.dir))
    records = args.size_mb * 1_000_000 // PAGE_RECORD_BYTES
    try:
        with running_emulator(
            "--token",
            f"bench={TOKEN}",
            "--processing-time",
            "0",
            "--records",
            str(records),
            "--storage-dir",
            str(work / "storage"),
            *(["--format", "ndjson", "--range"] if args.format == "ndjson" else []),
        ) as base:
            return compare(base, work, args.rounds, args.gzip, args.format == "zip")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def baseline(curl_cmd: list[str], download: Path, zipped: bool, gzip: bool) -> float:
    """Seconds for curl plus the same durability (and unzipping, for a ZIP)."""
    started = time.perf_counter()
    timed(curl_cmd)
    written = download
    if zipped:
        written = download.with_name("baseline.jsonl" + (".gz" if gzip else ""))
        pipeline = f"unzip -p '{download}'" + (" | gzip -1" if gzip else "") + f" > '{written}'"
        subprocess.run(["sh", "-c", pipeline], check=True)
    subprocess.run(["sync", str(written)], check=True)
    elapsed = time.perf_counter() - started
    written.unlink(missing_ok=True)
    download.unlink(missing_ok=True)
    return elapsed


def compare(base: str, work: Path, rounds: int, gzip: bool, zipped: bool) -> int:
    url = f"{base}/api/reports/export/page?{DAY[1]}"
    auth = f"Authorization: Bearer {TOKEN}"
    while True:  # until ready: rendering a GiB takes a few seconds
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request) as response:
            if not response.read(64).startswith(b'{"fromDate"'):
                break
        time.sleep(0.5)
    job = EmulatorClient(base).jobs()[0]
    env = {**os.environ, "BENCH_TOKEN": TOKEN}
    suffix = ".jsonl.gz" if gzip else ".jsonl"
    ours_cmd = [
        sys.executable,
        "-m",
        "acexport",
        "export",
        "--base-url",
        base,
        "--token-env",
        "BENCH_TOKEN",
        "--type",
        "page",
        "--from",
        DAY[0],
        "--to",
        DAY[0],
        "--quiet",
        "--output",
        str(work / f"ours{suffix}"),
    ]
    curl_file = work / ("curl.zip" if zipped else "curl.jsonl")
    curl_cmd = ["curl", "-sf", "-H", auth, "-o", str(curl_file), url]
    ours, curl_sync, curl_plain, rss = [], [], [], []
    for _ in range(rounds):
        seconds, peak = timed(ours_cmd, env)
        ours.append(seconds)
        rss.append(peak)
        manifest = json.loads((work / f"ours{suffix}.manifest.json").read_text())
        assert manifest["payload_sha256"] == job["sha256"], "acexport's data differs"
        for path in work.glob("ours*"):
            path.unlink()
        curl_sync.append(baseline(curl_cmd, curl_file, zipped, gzip))
        curl_plain.append(timed(curl_cmd)[0])
        curl_file.unlink()
    ratio = statistics.median(ours) / statistics.median(curl_sync)
    size_mb = job["bytes"] / 1e6
    name = "curl -o && unzip -p && sync" if zipped else "curl -o && sync"
    if zipped and gzip:
        name = "curl && unzip|gzip -1 && sync"
    print(
        f"payload {size_mb:.0f} MB {'ZIP' if zipped else 'NDJSON'} "
        f"({job['records']} records), {rounds} alternating rounds, medians"
        f"{', acexport writes gzip' if gzip else ''}:"
    )
    print(
        f"  acexport export     {statistics.median(ours):6.2f} s "
        f"({size_mb / statistics.median(ours):5.0f} MB/s)  peak RSS {max(rss) / 1024:.0f} MB"
    )
    print(
        f"  {name:30} {statistics.median(curl_sync):6.2f} s "
        f"({size_mb / statistics.median(curl_sync):5.0f} MB/s)  <- baseline"
    )
    print(f"  curl -o (no sync)   {statistics.median(curl_plain):6.2f} s  (reference)")
    print(f"  ratio acexport / baseline = {ratio:.2f}  (target <= 1.15)")
    print(f"  peak RSS {max(rss) / 1024:.0f} MB  (target < 100 MB)")
    return 0 if ratio <= 1.15 and max(rss) < 100 * 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
