"""`make bench`: every benchmark, one after another; `--quick` for a few-minute pass.

Each script prints its figure beside its baseline; this prints them in order
and exits non-zero if any missed its target (the figures are still printed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "startup.py",
    "emulator_throughput.py",
    "download_vs_curl.py",
    "real_format.py",
    "parquet.py",
    "s3_upload.py",
    "polling_cost.py",
    "lane_utilisation.py",
    "scale.py",
    "backfill.py",
    "split_memory.py",
    "idle.py",
    "soak.py",
]


def main() -> int:
    extra = ["--quick"] if "--quick" in sys.argv[1:] else []
    missed = []
    for script in SCRIPTS:
        print(f"\n== {script} {' '.join(extra)}", flush=True)
        result = subprocess.run(
            [sys.executable, str(HERE / script), *extra], stderr=subprocess.DEVNULL, check=False
        )
        if result.returncode != 0:
            missed.append(script)
    print(
        f"\n{len(SCRIPTS) - len(missed)} of {len(SCRIPTS)} met their targets"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
