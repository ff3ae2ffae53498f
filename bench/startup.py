"""Start-up: wall time of `acexport --help` and `acexport check-config`.

Figure: median of --runs runs of each. Baseline (same run): `python -c pass`
with the same interpreter, the floor any Python tool pays. Target: < 0.5 s.

    python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="5 runs")
    args = parser.parse_args()
    if args.quick:
        args.runs = 5
    # The demo config's workspaces read their token from here (`acexport demo` sets it).
    os.environ.setdefault("ACEXPORT_DEMO_TOKEN", "startup-bench")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "c.toml"
        shipped = (ROOT / "daemon" / "acexport" / "demo.toml").read_text()
        config.write_text(shipped.replace("[daemon]\n", f'[daemon]\nstate_dir = "{tmp}/state"\n'))
        acexport = [sys.executable, "-m", "acexport"]
        floor = median_seconds([sys.executable, "-c", "pass"], args.runs)
        help_s = median_seconds([*acexport, "--help"], args.runs)
        check_s = median_seconds([*acexport, "check-config", "--config", str(config)], args.runs)
    print(
        f"median of {args.runs}: acexport --help {help_s:.2f} s, acexport check-config "
        f"{check_s:.2f} s (target < 0.5 s); baseline python -c pass {floor:.2f} s"
    )
    return 0 if help_s < 0.5 and check_s < 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
