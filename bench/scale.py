"""Scale: many workspaces at once. Wall time, peak RSS, CPU and event-loop lag.

Figure: `acexport run --once` over W workspaces x 6 types, one window each,
1 s of processing per export: wall time, peak RSS, CPU seconds and the
longest event-loop lag the daemon saw. Baseline: the ideal, 6 exports one
after another per lane = 6 x 1 s, plus start-up measured in the same run
(`acexport check-config`). Targets (issue 35): within 2x the ideal, <= 3 ms of
daemon CPU per export, RSS < 200 MB, loop lag < 100 ms. The emulator runs on
the same two cores; its CPU is printed beside the daemon's.

    python bench/scale.py [--workspaces 1000] [--quick]
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acexport.emulator.process import EmulatorClient, running_emulator


def children_cpu_s() -> float:
    """CPU seconds of this process's running children (the emulator), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # the parent's pid, fields counted after ")"
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def lane_steps(ledger: Path) -> str:
    """Medians, from the ledger's own times, of where a lane's time goes: less noisy
    than the wall, and what a change to the lane's chain moves (issue 35)."""
    with contextlib.closing(sqlite3.connect(ledger)) as db:
        rows = db.execute(
            "SELECT workspace, planned_at, submitted_at, ready_at, finished_at FROM exports"
            " WHERE state = 'done' ORDER BY workspace, submitted_at"
        ).fetchall()
    if not rows:
        return "  no export done"
    began = min(row[1] for row in rows)
    lanes: dict[str, list[tuple[float, ...]]] = {}
    for workspace, *times in rows:
        lanes.setdefault(workspace, []).append(tuple(times))
    steps = {
        "first submitted": [lane[0][1] - began for lane in lanes.values()],
        "at AC (learned)": [e[2] - e[1] for lane in lanes.values() for e in lane],
        "ready -> next submitted": [
            later[1] - earlier[2]
            for lane in lanes.values()
            for earlier, later in itertools.pairwise(lane)
        ],
        "ready -> committed": [e[3] - e[2] for lane in lanes.values() for e in lane],
        "lane's last committed": [max(e[3] for e in lane) - began for lane in lanes.values()],
    }
    return "  per lane, p50: " + ", ".join(
        f"{name} {statistics.median(values):.2f} s" for name, values in steps.items() if values
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--processing", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="100 workspaces")
    args = parser.parse_args()
    if args.quick:
        args.workspaces = 100
    work = Path(tempfile.mkdtemp(prefix="acexport-scale-"))
    if not os.environ.get("BENCH_KEEP"):  # keep the state and log to look into
        atexit.register(shutil.rmtree, work, True)
    else:
        print(f"keeping {work}", file=sys.stderr)
    names = [f"w{i:04d}" for i in range(args.workspaces)]
    lines = [
        "[daemon]",
        f'state_dir = "{work / "state"}"',
        f'output_dir = "{work / "out"}"',
        'log_format = "json"',
        'listen = ""',
        "[http]",
        'poll_initial = "250ms"',
        'poll_max = "2s"',
        "[output]",
        'compression = "none"',
    ]
    for name in names:
        lines += [f"[workspaces.{name}]", 'base_url = "BASE"', f'token = "{name}-token"']
    for name in names:
        lines += [
            "[[jobs]]",
            f'name = "{name}"',
            f'workspace = "{name}"',
            'window = "1d"',
            'catch_up = "1d"',
            'lag = "0s"',
        ]
    tokens = [arg for name in names for arg in ("--token", f"{name}={name}-token")]
    with running_emulator(
        "--processing-time", str(args.processing), "--records", "20", *tokens
    ) as base:
        config = work / "scale.toml"
        config.write_text("\n".join(lines).replace("BASE", base) + "\n")
        config.chmod(0o600)
        env = {**os.environ, "ACEXPORT_CONFIG": ""}
        started = time.perf_counter()
        check = subprocess.Popen(
            [sys.executable, "-m", "acexport", "check-config", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            env=env,
        )
        _, _, check_usage = os.wait4(check.pid, 0)
        startup = time.perf_counter() - started
        startup_cpu = check_usage.ru_utime + check_usage.ru_stime
        log = work / "daemon.log"
        emulator_began = children_cpu_s()
        with log.open("wb") as out:
            started = time.perf_counter()
            profiler = os.environ.get("BENCH_PROFILE", "").split()  # e.g. "py-spy record -o x --"
            process = subprocess.Popen(
                [
                    *profiler,
                    sys.executable,
                    "-m",
                    "acexport",
                    "run",
                    "--once",
                    "--config",
                    str(config),
                ],
                stderr=out,
                env=env,
            )
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - started
        emulator_cpu = children_cpu_s() - emulator_began
        workspaces = EmulatorClient(base).report()["workspaces"]
        requests = sum(w["requests"] for w in workspaces.values())
    exports = len(list((work / "out").rglob("*.manifest.json")))
    steps = lane_steps(work / "state" / "state.sqlite3")
    stopped = [
        json.loads(line) for line in log.read_text().splitlines() if '"daemon_stopped"' in line
    ]
    lag_ms = stopped[-1]["loop_lag_max_ms"] if stopped else float("nan")
    ideal = 6 * args.processing + startup
    rss_mb = usage.ru_maxrss / 1024
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"{args.workspaces} workspaces x 6 types, 1 window, {args.processing:g} s processing: "
        f"{exports} exports (exit {os.waitstatus_to_exitcode(status)})"
    )
    print(
        f"  wall {wall:6.1f} s  vs ideal {ideal:.1f} s (6 x {args.processing:g} s + start-up "
        f"{startup:.1f} s): {wall / ideal:.1f}x  (target <= 2x)"
    )
    print(
        f"  peak RSS {rss_mb:.0f} MB (target < 200), CPU {cpu:.1f} s, "
        f"event-loop lag max {lag_ms:.0f} ms (target < 100)"
    )
    per_export_ms = 1000 * (cpu - startup_cpu) / max(exports, 1)
    print(f"  requests to AC per export {requests / max(exports, 1):.2f}")
    print(
        f"  the emulator's CPU meanwhile {emulator_cpu:.1f} s: with the daemon's, "
        f"{(cpu + emulator_cpu) / wall:.2f} of the 2 cores"
    )
    print(
        f"  daemon CPU per export {per_export_ms:.1f} ms (less start-up; target < 3 ms); "
        f"user {usage.ru_utime:.1f} s, system {usage.ru_stime:.1f} s"
    )
    print(steps)
    ok = (
        exports == 6 * args.workspaces
        and wall <= 2 * ideal
        and per_export_ms <= 3
        and rss_mb < 200
        and lag_ms < 100
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
