"""Lane utilisation: does the daemon keep AC's one-export-at-a-time slot busy?

Figure: wall time of `acexport run --once` for N exports on one workspace
(P seconds of processing and S MB each) divided by N * P, the time AC alone
needs. Baseline (same run, same emulator, another workspace): strictly
sequential submit -> poll -> download -> next, as a simple client does it.
Target: ratio <= 1.10, because downloads overlap the next export's processing.

    python bench/lane_utilisation.py [--exports 20] [--processing 2] [--size-mb 200] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import SecretStr

from acexport.ac.client import ExportClient, new_session
from acexport.ac.polling import Backoff
from acexport.emulator.process import EmulatorClient, running_emulator
from acexport.export import ExportSpec, Timing, run_export
from acexport.ops.logging import configure_logging
from acexport.output.local import LocalStore
from acexport.output.sink import Sink
from acexport.windows import ExportWindow

PAGE_RECORD_BYTES = 410  # the emulator's page rows (hourly aggregates), on average


def jobs(base: str) -> list[dict[str, Any]]:
    return EmulatorClient(base).jobs()


def ours(base: str, work: Path, exports: int) -> float:
    config = work / "ours.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{work / "state"}"\noutput_dir = "{work / "ours"}"\n'
        'log_format = "json"\nlisten = ""\n'
        '[http]\npoll_initial = "100ms"\npoll_max = "1s"\n[output]\ncompression = "none"\n'
        f'[workspaces.ours]\nbase_url = "{base}"\ntoken = "ours-token"\n'
        f'[[jobs]]\nname = "j"\nworkspace = "ours"\ntypes = ["page"]\nwindow = "1h"\n'
        f'catch_up = "{exports}h"\nlag = "0s"\n'
    )
    config.chmod(0o600)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "acexport", "run", "--once", "--config", str(config)],
        check=True,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ACEXPORT_CONFIG": ""},
    )
    return time.perf_counter() - started


async def sequential(base: str, work: Path, exports: int) -> float:
    """One export after another, each downloaded before the next is submitted."""
    configure_logging("json", "error")  # quiet: the figures are what this prints
    end = datetime(2022, 1, 2, tzinfo=UTC)
    timing = Timing(poll=Backoff(0.1, 1.0), retry=Backoff(0.1, 1.0))
    sink = Sink(work / "tmp", "none", LocalStore(work / "base", work / "tmp"))
    started = time.perf_counter()
    async with new_session(60) as session:
        client = ExportClient(session, base, SecretStr("base-token"))
        for index in range(exports):
            start = end - timedelta(hours=index + 1)
            window = ExportWindow(start, start + timedelta(hours=1))
            spec = ExportSpec("base", "page", window, PurePosixPath(f"{index}.jsonl"))
            await run_export(spec, client, sink, timing)
    sink.close()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exports", type=int, default=20)
    parser.add_argument("--processing", type=float, default=2.0, help="seconds per export")
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="10 exports, 1 s, 50 MB")
    args = parser.parse_args()
    if args.quick:
        args.exports, args.processing, args.size_mb = 10, 1.0, 50
    work = Path(tempfile.mkdtemp(prefix="acexport-lane-"))
    records = args.size_mb * 1_000_000 // PAGE_RECORD_BYTES
    try:
        with running_emulator(
            "--token",
            "ours=ours-token",
            "--token",
            "base=base-token",
            "--processing-time",
            str(args.processing),
            "--records",
            str(records),
            "--storage-dir",
            str(work / "storage"),
        ) as base:
            ours_s = ours(base, work, args.exports)
            shutil.rmtree(work / "ours", ignore_errors=True)
            timeline = sorted(
                (j["timeline"] for j in jobs(base) if j["workspace"] == "ours"),
                key=lambda t: t["created"],
            )
            base_s = asyncio.run(sequential(base, work, args.exports))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ideal = args.exports * args.processing
    ratio = ours_s / ideal
    print(
        f"{args.exports} exports x {args.processing:g} s processing x {args.size_mb} MB "
        f"on one workspace; AC alone needs {ideal:.1f} s"
    )
    print(f"  acexport run --once        {ours_s:6.1f} s  ratio {ratio:.2f}  (target <= 1.10)")
    gaps = [b["created"] - a["ready"] for a, b in itertools.pairwise(timeline)]
    busy = timeline[-1]["ready"] - timeline[0]["created"]
    print(
        f"    AC slot: first created -> last ready {busy:.1f} s; idle between exports "
        f"mean {1000 * sum(gaps) / len(gaps):.0f} ms, max {1000 * max(gaps):.0f} ms; "
        f"before the first {ours_s - busy:.1f} s outside it (start-up, last download)"
    )
    print(f"  sequential (baseline)      {base_s:6.1f} s  ratio {base_s / ideal:.2f}")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
