"""Backfill at AC's pace: one request for many windows against one per window.

Figure: a 90-day backfill of `event` and `page` in daily windows (`acexport backfill`,
foreground) against the emulator running AC's engine with its worker's tick scaled
from 5 minutes to `--tick` seconds: AC exports, wall time and peak RSS, coalesced
(`coalesce_max = 31d`, the default). Baseline, in the same run on the same emulator:
the same backfill with `coalesce_max = 0` (one export per window, as before).
Target: at least 10x less wall time. At the real tick, each export costs at least
5 minutes: the exports' count times 5 minutes is printed too.

    python bench/backfill.py [--days 90] [--tick 1] [--per-day 1000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from acexport.emulator.process import EmulatorClient, running_emulator


def config_text(work: Path, base: str, coalesce_max: str) -> str:
    return "\n".join(
        [
            "[daemon]",
            f'state_dir = "{work / "state"}"',
            f'output_dir = "{work / "out"}"',
            'log_format = "json"',
            'listen = ""',
            "[http]",
            'poll_initial = "100ms"',
            'poll_max = "1s"',
            "[workspaces.acme]",
            f'base_url = "{base}"',
            'token = "acme-token"',
            'retention = "1200 months"',
            "[[jobs]]",
            'name = "daily"',
            'workspace = "acme"',
            'types = ["event", "page"]',
            'catch_up = "0s"',
            f'coalesce_max = "{coalesce_max}"',
            "",
        ]
    )


def backfill(base: str, days: int, coalesce_max: str) -> tuple[int, float, float, int]:
    """(AC exports, wall seconds, peak RSS in MB, files) of one backfill, state fresh."""
    work = Path(tempfile.mkdtemp(prefix=f"acexport-backfill-{coalesce_max}-"))
    config = work / "acexport.toml"
    config.write_text(config_text(work, base, coalesce_max))
    config.chmod(0o600)
    before = len(EmulatorClient(base).jobs())
    first = date(2026, 1, 1)
    last = first + timedelta(days=days - 1)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "acexport", "backfill", "--config", str(config), "--job",
         "daily", "--from", first.isoformat(), "--to", last.isoformat(), "--yes"],
        stdout=subprocess.DEVNULL, stderr=(work / "log").open("wb"),
        env={**os.environ, "ACEXPORT_CONFIG": ""},
    )  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"the backfill failed; its log: {work / 'log'}")
    exports = len(EmulatorClient(base).jobs()) - before
    files = len(list((work / "out").rglob("*.manifest.json")))
    shutil.rmtree(work, ignore_errors=True)  # kept above when the backfill failed: its log
    return exports, wall, usage.ru_maxrss / 1024, files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--tick", type=float, default=1.0, help="AC's worker tick, seconds")
    parser.add_argument("--per-day", type=int, default=1000, help="events a day")
    parser.add_argument("--quick", action="store_true", help="30 days, a 0.5 s tick")
    args = parser.parse_args()
    if args.quick:
        args.days, args.tick = 30, 0.5
    with running_emulator(
        "--tick", f"{args.tick}s", "--records-per-day", str(args.per_day),
        "--processing-time", "0.05", "--token", "acme=acme-token",
    ) as base:  # fmt: skip
        coalesced = backfill(base, args.days, "31d")
        single = backfill(base, args.days, "0s")
    for name, (exports, wall, rss, files) in (("coalesced", coalesced), ("one each", single)):
        print(
            f"{name:>9}: {exports:4d} AC exports for {files} windows, {wall:6.1f} s wall "
            f"({args.tick:g} s tick), peak RSS {rss:.0f} MB; at AC's 5-minute tick >= "
            f"{exports * 5 / 60:.1f} h"
        )
    ratio = single[1] / coalesced[1]
    print(
        f"backfill of {args.days} days of event and page: coalesced {ratio:.1f}x faster "
        f"than one export per window ({single[0]} -> {coalesced[0]} AC exports); target >= 10x"
    )
    return 0 if ratio >= 10 and coalesced[3] == single[3] == 2 * args.days else 1


if __name__ == "__main__":
    sys.exit(main())
