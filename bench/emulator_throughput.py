"""How fast the emulator serves a ready export, with curl as the client.

By default as AC does (a ZIP written chunk by chunk); ``--format ndjson --range``
measures the legacy path served with ``sendfile``.

Figure: MB/s curl receives from `acexport emulator` for a large export.
Baseline (same run): curl reading the same bytes from a local file (file://),
i.e. what curl itself can swallow. Target: at least 300 MB/s from the emulator.

    python bench/emulator_throughput.py [--records N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
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
WINDOW = "fromDate=2022-01-01T00:00:00.000Z&toDate=2022-01-01T23:59:59.999Z"
TARGET_MB_S = 300.0


def curl(url: str, *headers: str) -> tuple[int, float]:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    size, seconds = out.split()
    return int(size), float(seconds)


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request) as response:
            head = response.read(64)
        if not head.startswith(b'{"fromDate"'):
            return
        time.sleep(0.5)
    raise TimeoutError("export never became ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_500_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--types", default="event,page")
    parser.add_argument("--quick", action="store_true", help="small export, 3 rounds")
    parser.add_argument("--format", choices=("zip", "ndjson"), default="zip")
    parser.add_argument("--range", action="store_true", help="Content-Length + sendfile")
    args = parser.parse_args()
    if args.quick:
        args.records, args.rounds = 300_000, 3
    if not shutil.which("curl"):
        print("curl is required for this benchmark", file=sys.stderr)
        return 2
    storage = Path(tempfile.mkdtemp(prefix="acexport-bench-"))
    try:
        with running_emulator(
            "--token",
            f"bench={TOKEN}",
            "--processing-time",
            "0",
            "--records",
            str(args.records),
            "--storage-dir",
            str(storage),
            "--format",
            args.format,
            *(["--range"] if args.range else []),
        ) as base:
            suffix = ".zip" if args.format == "zip" else ".json"
            worst = min(
                measure(base, type_, storage / f"{{}}{suffix}", args.rounds)
                for type_ in args.types.split(",")
            )
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    verdict = "meets" if worst >= TARGET_MB_S else "MISSES"
    print(f"slowest type {worst:.0f} MB/s {verdict} the {TARGET_MB_S:.0f} MB/s target")
    return 0 if worst >= TARGET_MB_S else 1


def measure(base: str, type_: str, stored: Path, rounds: int) -> float:
    """Median MB/s curl gets from the emulator for one ready export; prints the row."""
    url = f"{base}/api/reports/export/{type_}?{WINDOW}"
    wait_ready(url)
    job = next(j for j in EmulatorClient(base).jobs() if j["type"] == type_)
    served, local = [], []
    for _ in range(rounds):
        size, seconds = curl(url, f"Authorization: Bearer {TOKEN}")
        assert size == job["bytes"], (size, job["bytes"])
        served.append(size / seconds / 1e6)
        size, seconds = curl(f"file://{str(stored).format(job['id'])}")
        local.append(size / seconds / 1e6)
    rate = statistics.median(served)
    print(
        f"{type_:>10}: {job['bytes'] / 1e6:8.1f} MB  emulator {rate:7.0f} MB/s"
        f"  | baseline curl file:// {statistics.median(local):7.0f} MB/s"
        f"  (median of {rounds})"
    )
    return rate


if __name__ == "__main__":
    sys.exit(main())
