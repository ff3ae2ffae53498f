"""Flush cost: CPU and wall time an export of the local commit's flushes, and of two
ways to have fewer (issue 35, item 6).

Figure: the steps the local store takes for a small export (a 3 KB data file and a
600 B manifest, each created new in a temp directory and renamed beside the other
in one of 1,000 directories), in one thread (`--threads N`: N at once, as the sink's
four do, which adds the GIL's contention to every figure), four ways:

- `four`: today's (`output/local.py`): the data file synced, renamed, its directory
  synced; the manifest synced, renamed, the directory synced again;
- `three`: both files synced, both renamed, the directory synced once;
- `syncfs`: a group commit: a batch's data files renamed, one `syncfs`, their
  manifests renamed, one `syncfs` (the same crash guarantees as `four`);
- `none`: the same files and renames, no flush: the floor.

Baseline: `four`, in the same rounds, alternating. No target: it measures what the
design's durability costs on this machine's disk (`scale.py --tmpfs` shows what it
costs the daemon).

    python bench/flush_cost.py [--quick] [--exports N] [--rounds N] [--threads N]
                               [--batch N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

DIRECTORIES = 1000
DATA, MANIFEST = os.urandom(3000), os.urandom(600)
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs")


def new_file(path: str, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class Tree:
    """A temp directory and DIRECTORIES output directories under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.temp = root / "tmp"
        self.temp.mkdir(parents=True)
        for d in range(DIRECTORIES):
            (root / f"o{d}").mkdir()

    def staged(self, i: int) -> tuple[str, str, str]:
        """(temp path, output directory, name) of export ``i``."""
        return str(self.temp / str(i)), str(self.root / f"o{i % DIRECTORIES}"), str(i)

    def commit(self, batch: list[int], mode: str, root_fd: int) -> None:
        # Renamed by directory descriptor, as output/local.py does.
        dirs = {i: os.open(self.staged(i)[1], os.O_RDONLY | os.O_DIRECTORY) for i in batch}
        try:
            if mode == "syncfs":
                for suffix, data, kind in ((".d", DATA, ""), (".m", MANIFEST, ".manifest.json")):
                    for i in batch:
                        temp, _, name = self.staged(i)
                        new_file(temp + suffix, data, False)
                        os.replace(temp + suffix, name + kind, dst_dir_fd=dirs[i])
                    syncfs(root_fd)
                return
            sync = mode != "none"
            for i in batch:
                temp, _, name = self.staged(i)
                new_file(temp + ".d", DATA, sync)
                if mode == "three":
                    new_file(temp + ".m", MANIFEST, sync)
                os.replace(temp + ".d", name, dst_dir_fd=dirs[i])
                if mode != "three":
                    if sync:
                        os.fsync(dirs[i])
                    new_file(temp + ".m", MANIFEST, sync)
                os.replace(temp + ".m", name + ".manifest.json", dst_dir_fd=dirs[i])
                if sync:
                    os.fsync(dirs[i])
        finally:
            for fd in dirs.values():
                os.close(fd)


def one_run(base: Path, mode: str, exports: int, threads: int, batch: int) -> tuple[float, float]:
    """(CPU ms, wall ms) an export: ``exports`` over ``threads`` threads."""
    tree = Tree(Path(tempfile.mkdtemp(prefix=f"flush-{mode}-", dir=base)))
    root_fd = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY)
    os.sync()  # start every mode from a clean page cache and journal

    def work(k: int) -> None:
        mine = list(range(k, exports, threads))
        for start in range(0, len(mine), batch):
            tree.commit(mine[start : start + batch], mode, root_fd)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    before, began = os.times(), time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall, after = time.perf_counter() - began, os.times()
    os.close(root_fd)
    shutil.rmtree(tree.root)
    cpu = (after.user + after.system) - (before.user + before.system)
    return 1000 * cpu / exports, 1000 * wall / exports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 exports, one round")
    parser.add_argument("--exports", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, alternating")
    parser.add_argument(
        "--threads", type=int, default=1, help="committing at once (the sink has 4)"
    )
    parser.add_argument("--batch", type=int, default=4, help="exports a syncfs group commits")
    parser.add_argument("--dir", type=Path, help="where (default: the temp directory)")
    args = parser.parse_args()
    if args.quick:
        args.exports, args.rounds = 500, 1
    base = Path(tempfile.mkdtemp(prefix="acexport-flush-", dir=args.dir))
    names = ("four", "three", "syncfs", "none")
    modes: dict[str, list[tuple[float, float]]] = {mode: [] for mode in names}
    try:
        for _ in range(args.rounds):
            for mode, runs in modes.items():
                runs.append(one_run(base, mode, args.exports, args.threads, args.batch))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"{args.exports} exports in {args.threads} thread(s), {DIRECTORIES} directories, "
        f"under {base.parent} (syncfs: batches of {args.batch}); medians of {args.rounds}:"
    )
    median: Callable[[list[float]], float] = statistics.median
    four_cpu = median([cpu for cpu, _ in modes["four"]])
    for mode, runs in modes.items():
        cpu, wall = median([c for c, _ in runs]), median([w for _, w in runs])
        print(
            f"  {mode:6} {cpu:.3f} ms CPU, {wall:.3f} ms wall an export "
            f"({cpu / four_cpu:.2f}x the CPU of four, today's)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
