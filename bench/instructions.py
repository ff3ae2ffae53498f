"""Instructions per export: the daemon's own work, counted rather than timed.

Figure: the user-space instructions `acexport run --once` executes per export
(valgrind's callgrind, all threads), taken as the difference between a run over
`--small` and one over `--large` workspaces (6 exports each, as in scale.py),
divided by the exports between them, so start-up drops out. Baseline: the same
count for the code at `--against REV`, from a worktree, in the same session.

Measured at the thirteenth stop of issue 35 (bench/README.md): 7.152 M before the
stop's changes, 6.540 M after. The same tree counted twice: 7.117 and 7.142 M.

Why beside scale.py: on this VM the same code's CPU seconds per export vary by
15-30% from run to run (and by 2x between days), so a change of a few percent
to the loop's Python cannot be seen there. The count repeats within ~0.5%.
What it leaves out is scale.py's to show: the kernel's share (fsync, file
creation, futex), waits for the GIL or a core, cache misses. And valgrind's CPU has
no SHA extensions, so OpenSSL hashes in software there (~300,000 instructions of a
small export's count, a few microseconds natively).

    python bench/instructions.py [--small 10] [--large 40] [--against REV] [--quick]

Needs valgrind; a run takes a few minutes (the daemon runs ~50x slower under it).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

from real_format import worktree
from scale import Variant, one_run

_PROCESSING_S = 0.2  # AC's time per export: the daemon's is what is counted here


def instructions(work: Path, workspaces: int, pythonpath: str | None) -> tuple[int, int]:
    """(instructions, exports) of one ``run --once`` over ``workspaces`` under callgrind."""
    out = work / "callgrind.out"
    os.environ["BENCH_PROFILE"] = f"valgrind --tool=callgrind --callgrind-out-file={out}"
    try:
        figures = one_run(work, workspaces, _PROCESSING_S, Variant(pythonpath))
    finally:
        del os.environ["BENCH_PROFILE"]
    if figures.exit_code != 0 or figures.exports != 6 * workspaces:
        raise SystemExit(
            f"the run over {workspaces} workspaces failed: exit {figures.exit_code}, "
            f"{figures.exports} exports; its log is {work / 'daemon.log'}"
        )
    with out.open("rb") as counted:
        for line in counted:
            if line.startswith(b"summary:"):
                return int(line.split()[1]), figures.exports
    raise SystemExit(f"no summary line in {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10, help="workspaces of the first run")
    parser.add_argument("--large", type=int, default=40, help="workspaces of the second run")
    parser.add_argument("--against", metavar="REV", help="also count the code of this revision")
    parser.add_argument("--quick", action="store_true", help="5 and 20 workspaces")
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = 5, 20
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    if not 0 < args.small < args.large:
        raise SystemExit("--small must be at least 1 and below --large")
    work = Path(tempfile.mkdtemp(prefix="acexport-instructions-"))
    atexit.register(shutil.rmtree, work, True)
    trees: dict[str, str | None] = {"acexport": None}
    if args.against is not None:
        trees[f"@{args.against}"] = str(worktree(args.against, work / "against"))
    for tree, pythonpath in trees.items():
        counts = []
        for workspaces in (args.small, args.large):
            run_dir = work / f"{tree.strip('@')}-{workspaces}"
            run_dir.mkdir()
            counts.append(instructions(run_dir, workspaces, pythonpath))
        (small, small_exports), (large, large_exports) = counts
        per_export = (large - small) / (large_exports - small_exports)
        start_up = small - per_export * small_exports
        print(
            f"{tree}: {per_export / 1e6:.3f} M instructions per export "
            f"({args.small} -> {args.large} workspaces), start-up {start_up / 1e9:.2f} G",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
