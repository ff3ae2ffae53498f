"""Idle cost: a daemon with 100 jobs whose next look is hours away.

Figure: CPU seconds the daemon uses over --seconds (after start-up settles) and
its RSS. Baseline (same run): `sleep` for the same time, i.e. zero, and the
daemon's own start-up CPU for scale. Target: under 0.2 CPU seconds per minute.

    python bench/idle.py [--seconds 60] [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 seconds")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 20
    work = Path(tempfile.mkdtemp(prefix="acexport-idle-"))
    atexit.register(shutil.rmtree, work, True)
    lines = [
        "[daemon]",
        f'state_dir = "{work / "state"}"',
        f'output_dir = "{work / "out"}"',
        'log_format = "json"',
        'listen = "127.0.0.1:0"',
        "[workspaces.acme]",
        'base_url = "https://analytics.example.com"',
        'token = "idle-token"',
    ]
    hour = (time.gmtime().tm_hour + 12) % 24  # twelve hours away
    for index in range(args.jobs):
        lines += [
            "[[jobs]]",
            f'name = "job{index:03d}"',
            'workspace = "acme"',
            f'schedule = "{index % 60} {hour} * * *"',
            'catch_up = "0s"',
        ]
    config = work / "idle.toml"
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o600)
    process = subprocess.Popen(
        [sys.executable, "-m", "acexport", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ACEXPORT_CONFIG": ""},
    )
    try:
        time.sleep(5)  # start-up and the first look of every job
        startup_cpu = cpu_seconds(process.pid)
        time.sleep(args.seconds)
        idle_cpu = cpu_seconds(process.pid) - startup_cpu
        rss = rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    per_minute = idle_cpu * 60 / args.seconds
    print(
        f"{args.jobs} jobs, next look ~12 h away, {args.seconds:.0f} s idle: "
        f"CPU {idle_cpu:.2f} s ({per_minute:.2f} s/min, target < 0.2), RSS {rss:.0f} MB; "
        f"baseline: sleep uses 0 s; start-up took {startup_cpu:.2f} s CPU; exit {code}"
    )
    return 0 if per_minute < 0.2 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
