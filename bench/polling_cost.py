"""Polling cost: status requests per export, and how late the data is noticed.

Figure: for processing times of 10 s, 60 s and 600 s (all times scaled by
--scale, so a 600 s export takes 600 * scale seconds here), the daemon's status
requests per export and the delay between the emulator's ready time and the
daemon's first download request, for the first export of a kind (no history)
and the following ones (history). Baseline (same run, same emulator): a fixed
5-second poll (Airbyte's default), scaled alike.
Targets: with history <= 12 requests and delay <= 5% of processing (or 1 s);
first export <= 25 requests and delay <= 25% of the elapsed time.

``--tick 300`` runs AC's worker as it is (design section 1.1): exports start
only when the worker runs, every 300 s (scaled), and take 10 s once started;
each export then costs a tick, and the figure is the same pair, per export.

    python bench/polling_cost.py [--scale 0.05] [--exports 4] [--tick 300] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from acexport.emulator.process import EmulatorClient, running_emulator

REAL_SECONDS = (10.0, 60.0, 600.0)
BASELINE_POLL_S = 5.0


def jobs(base: str) -> list[dict[str, Any]]:
    return EmulatorClient(base).jobs()


def figures(job: dict[str, Any]) -> tuple[int, float, float]:
    """Requests, delay after ready, and time from submission to ready of one job."""
    t = job["timeline"]
    return job["requests"], t["first_download"] - t["ready"], t["ready"] - t["created"]


def run_daemon(base: str, work: Path, workspace: str, exports: int, scale: float) -> None:
    config = work / f"{workspace}.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{work / workspace}"\noutput_dir = "{work / "out"}"\n'
        'log_format = "json"\nlisten = ""\n'
        f'[http]\npoll_initial = "{3 * scale}s"\npoll_max = "{300 * scale}s"\n'
        f'[workspaces.{workspace}]\nbase_url = "{base}"\ntoken = "{workspace}-token"\n'
        f'[[jobs]]\nname = "j"\nworkspace = "{workspace}"\ntypes = ["page"]\n'
        f'window = "1h"\ncatch_up = "{exports}h"\nlag = "0s"\n'
    )
    config.chmod(0o600)
    subprocess.run(
        [sys.executable, "-m", "acexport", "run", "--once", "--config", str(config)],
        check=True,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ACEXPORT_CONFIG": ""},
    )


async def run_baseline(base: str, workspace: str, poll_s: float) -> None:
    """The fixed-interval poller most scripts and connectors use."""
    url = f"{base}/api/reports/export/page"
    params = {"fromDate": "2022-01-01T00:00:00.000Z", "toDate": "2022-01-01T23:59:59.999Z"}
    headers = {"Authorization": f"Bearer {workspace}-token"}
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url, params=params, headers=headers) as response:
                body = await response.read()
            if not body.startswith(b'{"fromDate"'):
                return
            await asyncio.sleep(poll_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="emulated seconds per second")
    parser.add_argument("--exports", type=int, default=4, help="exports per processing time")
    parser.add_argument("--quick", action="store_true", help="scale 0.02, 3 exports")
    parser.add_argument(
        "--tick", type=float, default=0.0, help="AC's worker period in real seconds (e.g. 300)"
    )
    args = parser.parse_args()
    if args.quick:
        args.scale, args.exports = 0.02, 3
    processing_times = (10.0,) if args.tick else REAL_SECONDS
    tick_args = ["--tick", str(args.tick * args.scale)] if args.tick else []
    if args.tick:
        print(f"AC's worker runs every {args.tick:g} s; an export takes 10 s once started")
    ok = True
    print(f"times scaled by {args.scale}; figures below are in real (unscaled) seconds")
    print(
        f"{'processing':>10} | {'acexport first export':>24} | {'acexport with history':>30} "
        f"| {'fixed 5 s poll (baseline)':>26}"
    )
    for real in processing_times:
        processing = real * args.scale
        work = Path(tempfile.mkdtemp(prefix="acexport-polling-"))
        atexit.register(shutil.rmtree, work, True)
        tokens = ["--token", "ours=ours-token", "--token", "base=base-token"]
        with running_emulator(
            "--processing-time", str(processing), "--records", "50", *tokens, *tick_args
        ) as base:
            run_daemon(base, work, "ours", args.exports, args.scale)
            asyncio.run(run_baseline(base, "base", BASELINE_POLL_S * args.scale))
            report = jobs(base)
        ours = sorted(
            (j for j in report if j["workspace"] == "ours"), key=lambda j: j["timeline"]["created"]
        )
        first_requests, first_delay, first_processing = figures(ours[0])
        history = [figures(j) for j in ours[1:]]
        h_requests = max(r for r, _, _ in history)
        h_delay = max(d for _, d, _ in history) / args.scale
        if args.tick:  # an export's time is the wait for a tick and the 10 s
            real = max(p for _, _, p in history) / args.scale
        b_requests, b_delay, _ = figures(next(j for j in report if j["workspace"] == "base"))
        first_delay_real = first_delay / args.scale
        first_elapsed = first_processing / args.scale + first_delay_real
        print(
            f"{real:>9.0f}s | {first_requests:>3} req, delay {first_delay_real:6.1f}s "
            f"({100 * first_delay_real / first_elapsed:4.1f}%) | "
            f"max {h_requests:>3} req, max delay {h_delay:6.1f}s "
            f"({100 * h_delay / real:4.1f}%) | {b_requests:>4} req, delay "
            f"{b_delay / args.scale:5.1f}s"
        )
        ok &= h_requests <= 12 and h_delay <= max(0.05 * real, 1.0)
        ok &= first_requests <= 25 and first_delay_real <= 0.25 * first_elapsed
    print(
        "targets: history <= 12 req and <= 5% (or 1 s); first <= 25 req and <= 25%: "
        + ("met" if ok else "MISSED")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
