"""Where the daemon holds the GIL at scale, by part of the code: the map for item 6.

Figure: the share of the GIL-held samples (py-spy ``--gil``, every thread) of one
``bench/scale.py`` run (``acexport run --once``, W workspaces x 6 types) that each
part of the code takes, and that share as milliseconds per export. A sample of the
event loop's thread counts for the innermost frame of a known part (a log line
inside a lane step counts as logging); the sink's and the ledger's threads count
whole. Baseline: what 2x the ideal allows, (2 x ideal - start-up) / exports, in the
same run: at a thousand lanes the wall is this GIL-held work in series (issue 35,
bench/README.md, fourteenth and sixteenth stops).

    python bench/gil_share.py [--workspaces 1000] [--rate 100] [--quick]

Needs py-spy (`pip install py-spy`). Sampling slows the daemon: read the shares, not the wall.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from scale import Variant, one_run

# (part, whether a frame belongs to it), most specific first: the first part one of a
# sample's frames belongs to, from the innermost out, takes the sample.
PARTS: list[tuple[str, Callable[[str], bool]]] = [
    ("logging (structlog, redaction, JSON)",
     lambda f: any(m in f for m in ("structlog/", "acexport/ops/logging", "json/encoder"))),
    ("metrics, health, tally, hooks",
     lambda f: any(m in f for m in ("prometheus_client", "acexport/events", "acexport/ops/",
                                    "acexport/hooks"))),
    ("aiohttp (requests, responses)",
     lambda f: any(m in f for m in ("aiohttp/", "yarl/", "multidict"))),
    ("the ledger's calls, on the loop", lambda f: "acexport/ledger" in f),
    ("keys and paths", lambda f: any(m in f for m in ("pathtemplate", "pathlib", "output/layout"))),
    ("payload and output (manifest, writer)",
     lambda f: any(m in f for m in ("acexport/payload", "acexport/output"))),
    ("planner, keep, windows",
     lambda f: any(m in f for m in ("acexport/planner", "acexport/keep", "acexport/windows",
                                    "acexport/scheduler", "acexport/triggers"))),
    ("lane and export steps",
     lambda f: any(m in f for m in ("acexport/lane", "acexport/export", "acexport/ac/"))),
    ("asyncio itself (tasks, handles, the selector)",
     lambda f: any(m in f for m in ("asyncio/", "selectors", "contextlib"))),
]  # fmt: skip


def part_of(frames: list[str]) -> str:
    """The part a sample's stack (thread first, then outermost to innermost) counts for."""
    thread = frames[0]
    if "acexport-sink" in thread or "acexport-hash" in thread:
        return "the sink's threads (convert, hash, write, commit)"
    if "acexport-ledger" in thread:
        return "the ledger's thread (SQLite)"
    for frame in reversed(frames[1:]):
        for part, belongs in PARTS:
            if belongs(frame):
                return part
    return "the loop, other"


def shares(raw: Path) -> collections.Counter[str]:
    """Samples per part, from py-spy's ``raw`` (collapsed stacks) output."""
    counted: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        if line.strip():
            stack, _, count = line.rpartition(" ")
            counted[part_of(stack.split(";"))] += int(count)
    return counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=100, help="samples a second")
    parser.add_argument("--quick", action="store_true", help="100 workspaces")
    args = parser.parse_args()
    if args.quick:
        args.workspaces = 100
    with tempfile.TemporaryDirectory(prefix="acexport-gil-") as temp:
        work, raw = Path(temp), Path(temp) / "gil.raw"
        os.environ["BENCH_PROFILE"] = (
            f"py-spy record --gil --threads --rate {args.rate} --format raw --output {raw} --"
        )
        figures = one_run(work, args.workspaces, 1.0, Variant())
        counted = shares(raw)
    exports = max(figures.exports, 1)
    total = sum(counted.values())
    held_ms = total / args.rate * 1000 / exports
    allowed_ms = (2 * figures.ideal - figures.startup) * 1000 / exports
    print(
        f"{figures.exports} exports, wall {figures.wall:.1f} s ({figures.wall / figures.ideal:.1f}x"
        f" the ideal); GIL held {total / args.rate:.1f} s (start-up included), {held_ms:.2f} ms"
        f" an export;"
        f" 2x the ideal allows {allowed_ms:.2f} ms an export of work in series"
    )
    for part, count in counted.most_common():
        print(
            f"  {100 * count / total:5.1f}%  {count / args.rate * 1000 / exports:5.2f} ms  {part}"
        )
    return 0 if figures.exit_code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
