"""Scale: many workspaces at once. Wall time, peak RSS, CPU and event-loop lag.

Figure: `acexport run --once` over W workspaces x 6 types, one window each,
1 s of processing per export: wall time, peak RSS (of several processes, their
PSS added up: a shared library's pages counted once), CPU seconds and the
longest event-loop lag the daemon saw. Baseline: the ideal, 6 exports one
after another per lane = 6 x 1 s, plus start-up measured in the same run
(`acexport check-config`). Targets (issue 35): within 2x the ideal, <= 3 ms of
daemon CPU per export, RSS < 200 MB, loop lag < 100 ms. The emulator runs on
the same two cores; its CPU is printed beside the daemon's.

    python bench/scale.py [--workspaces 1000] [--quick] [--rounds N] [--against REV]
                          [--pinned CPUS] [--processes N] [--spread N]
                          [--daemon-processes N] [--pin-cpus] [--tmpfs]

The machine's speed moves every figure (the same code took 13-17 s one day and
30-40 s on a slower machine another): `--against REV` runs that revision's daemon
in the same session, alternating with this one, for a comparison that holds.
`--pinned 1` also runs this tree's daemon confined to CPU 1, alternating: what
its threads' hand-offs of the GIL across the two cores cost (issue 35);
`--processes 2` runs it as two daemons, each with half of the workspaces and a
state and output directory of its own: what lanes over two GILs would gain;
`--spread 2` the same with daemon k alone on CPU k: two GILs, no hand-off across
cores within a daemon. `--daemon-processes 2` runs one daemon whose lanes go over
two processes (`daemon.processes = 2`): what an operator gets. `--pin-cpus` runs
one with `daemon.pin_cpus = true` (over `--daemon-processes N`, else one process):
each process, every thread of it, on a CPU of its own. `--tmpfs` runs each of
these a second time with its state and output directories on tmpfs (/dev/shm),
where an fsync costs nothing: the daemon's own work apart from what the disk's
flushes cost it (four an export, each a round trip to this VM's virtual disk).
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from acexport.emulator.process import EmulatorClient, running_emulator
from real_format import worktree


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


@contextlib.contextmanager
def tree_pss_sampler(pids: list[int], period_s: float = 0.05) -> Iterator[Callable[[], float]]:
    """The largest PSS (MB) that ``pids`` and their children had together, sampled: the
    memory several processes use, each page they share counted once (their RSS, added
    up, counts the shared libraries' pages in each)."""
    peak = [0.0]
    stop = threading.Event()

    def pss_kb(pid: int) -> int:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return 0

    def children(pid: int) -> list[int]:
        with contextlib.suppress(OSError):
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return []

    def sample() -> None:
        while not stop.wait(period_s):
            tree = [*pids, *(child for pid in pids for child in children(pid))]
            peak[0] = max(peak[0], sum(pss_kb(pid) for pid in tree) / 1024)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        stop.set()
        sampler.join()


def lane_steps(ledgers: list[Path]) -> str:
    """Medians, from the ledgers' own times, of where a lane's time goes: less noisy
    than the wall, and what a change to the lane's chain moves (issue 35)."""
    rows = []
    for ledger in ledgers:
        if not ledger.exists():  # an older revision's ledger, elsewhere (PYTHONPATH runs)
            return "  no ledger at " + str(ledger)
        with contextlib.closing(sqlite3.connect(ledger)) as db:
            rows += db.execute(
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


@dataclass(frozen=True)
class Figures:
    """One run of one tree's daemon."""

    exports: int
    exit_code: int
    wall: float
    ideal: float
    startup: float
    rss_mb: float
    cpu: float
    user: float
    system: float
    lag_ms: float
    requests: int
    emulator_cpu: float
    per_export_ms: float
    switches: int  # the daemon's context switches, voluntary and not: GIL hand-offs
    steps: str
    memory: str = "RSS"  # one process: its peak RSS; several: their PSS, added up

    def print(self, workspaces: int, processing: float, tree: str) -> None:
        print(
            f"{tree}: {workspaces} workspaces x 6 types, 1 window, {processing:g} s "
            f"processing: {self.exports} exports (exit {self.exit_code})"
        )
        print(
            f"  wall {self.wall:6.1f} s  vs ideal {self.ideal:.1f} s (6 x {processing:g} s + "
            f"start-up {self.startup:.1f} s): {self.wall / self.ideal:.1f}x  (target <= 2x)"
        )
        print(
            f"  peak {self.memory} {self.rss_mb:.0f} MB (target < 200), CPU {self.cpu:.1f} s, "
            f"event-loop lag max {self.lag_ms:.0f} ms (target < 100)"
        )
        print(f"  requests to AC per export {self.requests / max(self.exports, 1):.2f}")
        print(
            f"  the emulator's CPU meanwhile {self.emulator_cpu:.1f} s: with the daemon's, "
            f"{(self.cpu + self.emulator_cpu) / self.wall:.2f} of the 2 cores"
        )
        print(
            f"  daemon CPU per export {self.per_export_ms:.1f} ms (less start-up; target < 3 ms);"
            f" user {self.user:.1f} s, system {self.system:.1f} s,"
            f" {self.switches / max(self.exports, 1):.0f} context switches"
        )
        print(self.steps)
        self.print_throughput(processing)

    def print_throughput(self, processing: float) -> None:
        """The rate of exports 2x the ideal needs, this run's, and the most that the
        machine's cores could do at this run's CPU per export (the daemon's and the
        emulator's, on the same cores), however the work were spread (issue 35).
        The exports run from the first one's end (start-up and one processing time)."""
        needed = self.exports / max(2 * self.ideal - self.startup - processing, 1e-9)
        done = self.exports / max(self.wall - self.startup - processing, 1e-9)
        cores = os.cpu_count() or 1
        cpu_ms = self.per_export_ms + 1000 * self.emulator_cpu / max(self.exports, 1)
        print(
            f"  throughput: 2x the ideal needs {needed:.0f} exports/s, this run {done:.0f}/s;"
            f" at its {cpu_ms:.1f} ms of CPU an export (daemon and emulator), {cores} cores"
            f" can do at most {1000 * cores / cpu_ms:.0f}/s"
        )

    def met(self, workspaces: int) -> bool:
        return (
            self.exports == 6 * workspaces
            and self.wall <= 2 * self.ideal
            and self.per_export_ms <= 3
            and self.rss_mb < 200
            and self.lag_ms < 100
        )


def config_text(
    work: Path, names: list[str], daemon_processes: int = 1, pin_cpus: bool = False
) -> str:
    lines = [
        "[daemon]",
        f"processes = {daemon_processes}",
        *(["pin_cpus = true"] if pin_cpus else []),  # older trees know no such key
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
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Variant:
    """How a tree's daemon runs: which tree, on which CPUs, as how many processes."""

    pythonpath: str | None = None  # None: this tree
    cpus: set[int] | None = None
    processes: int = 1  # each with every n-th workspace and its own state and output directories
    spread: bool = False  # daemon k of ``processes`` on CPU k (mod the CPUs) alone
    daemon_processes: int = 1  # one daemon, its lanes over this many (daemon.processes)
    pin_cpus: bool = False  # daemon.pin_cpus: each of its processes on one CPU
    tmpfs: bool = False  # its state and output directories on tmpfs: no flush costs a thing

    def confine(self, k: int) -> Callable[[], None] | None:
        """What daemon ``k`` runs under: its CPUs, set in the child before exec."""
        cpus = {k % (os.cpu_count() or 1)} if self.spread else self.cpus
        return None if cpus is None else partial(os.sched_setaffinity, 0, cpus)


def write_config(
    work: Path, names: list[str], base: str, daemon_processes: int = 1, pin_cpus: bool = False
) -> Path:
    config = work / "scale.toml"
    work.mkdir(exist_ok=True)
    text = config_text(work, names, daemon_processes, pin_cpus)
    config.write_text(text.replace("BASE", base))
    config.chmod(0o600)
    return config


def one_run(work: Path, workspaces: int, processing: float, variant: Variant) -> Figures:
    """``acexport run --once`` as ``variant`` says, with its own emulator and directories
    under ``work``. Start-up is one daemon's over every workspace, for every variant."""
    names = [f"w{i:04d}" for i in range(workspaces)]
    tokens = [arg for name in names for arg in ("--token", f"{name}={name}-token")]
    env = {**os.environ, "ACEXPORT_CONFIG": ""}
    if variant.pythonpath is not None:
        env["PYTHONPATH"] = variant.pythonpath
    with running_emulator("--processing-time", str(processing), "--records", "20", *tokens) as base:
        config = write_config(work, names, base, variant.daemon_processes, variant.pin_cpus)
        count = variant.processes
        configs = (
            [write_config(work / f"part{k}", names[k::count], base) for k in range(count)]
            if count > 1
            else [config]
        )
        started = time.perf_counter()
        check = subprocess.Popen(
            [sys.executable, "-m", "acexport", "check-config", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            env=env,
            preexec_fn=variant.confine(0),
        )
        _, _, check_usage = os.wait4(check.pid, 0)
        startup = time.perf_counter() - started
        startup_cpu = check_usage.ru_utime + check_usage.ru_stime
        logs = [path.parent / "daemon.log" for path in configs]
        emulator_began = children_cpu_s()
        with contextlib.ExitStack() as files:
            started = time.perf_counter()
            profiler = os.environ.get("BENCH_PROFILE", "").split()  # e.g. "py-spy record -o x --"
            run = [sys.executable, "-m", "acexport", "run", "--once", "--config"]
            processes = [
                subprocess.Popen(
                    [*profiler, *run, str(path)],
                    stderr=files.enter_context(log.open("wb")),
                    env=env,
                    preexec_fn=variant.confine(k),
                )
                for k, (path, log) in enumerate(zip(configs, logs, strict=True))
            ]
            several = len(processes) > 1 or variant.daemon_processes > 1
            # Sampled only for several: reading smaps is kernel work on the same cores.
            pids = [process.pid for process in processes] if several else []
            with tree_pss_sampler(pids) as pss_peak:
                ended = [os.wait4(process.pid, 0) for process in processes]
            wall = time.perf_counter() - started
        emulator_cpu = children_cpu_s() - emulator_began
        reported = EmulatorClient(base).report()["workspaces"]
        requests = sum(w["requests"] for w in reported.values())
    exports = sum(len(list((path.parent / "out").rglob("*.manifest.json"))) for path in configs)
    lags = [
        json.loads(line)["loop_lag_max_ms"]
        for log in logs
        for line in log.read_text().splitlines()
        if '"daemon_stopped"' in line
    ]
    usages = [usage for _, _, usage in ended]
    user = sum(usage.ru_utime for usage in usages)
    system = sum(usage.ru_stime for usage in usages)
    codes = [os.waitstatus_to_exitcode(status) for _, status, _ in ended]
    return Figures(
        exports=exports,
        exit_code=next((code for code in codes if code), 0),
        wall=wall,
        ideal=6 * processing + startup,
        startup=startup,
        # One process: its peak RSS, as ever. Several: their PSS together (wait4's
        # figure for a daemon is the largest of its own and its workers' RSS).
        rss_mb=pss_peak() if several else usages[0].ru_maxrss / 1024,
        cpu=user + system,
        user=user,
        system=system,
        lag_ms=max(lags) if len(lags) >= len(logs) else float("nan"),  # workers' lines too
        requests=requests,
        emulator_cpu=emulator_cpu,
        # Less one start-up: a daemon of N pays N-1 more, counted as the exports' cost.
        per_export_ms=1000 * (user + system - startup_cpu) / max(exports, 1),
        switches=sum(usage.ru_nvcsw + usage.ru_nivcsw for usage in usages),
        steps=lane_steps([path.parent / "state" / "state.sqlite3" for path in configs]),
        memory="PSS, added up" if several else "RSS",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=1000)
    parser.add_argument("--processing", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="100 workspaces")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each tree, alternating")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run the acexport of this git revision, same rounds (in each arrangement "
        "asked for: --daemon-processes, --pin-cpus, ...)",
    )
    parser.add_argument(
        "--pinned",
        metavar="CPUS",
        help="also run this tree's daemon confined to these CPUs (e.g. 1 or 0,1), same rounds",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="also run this tree as N daemons at once, each with every N-th workspace",
    )
    parser.add_argument(
        "--daemon-processes",
        type=int,
        metavar="N",
        help="also run this tree as one daemon with daemon.processes = N (its lanes over N)",
    )
    parser.add_argument(
        "--pin-cpus",
        action="store_true",
        help="also run this tree with daemon.pin_cpus = true (its processes: "
        "--daemon-processes, else 1)",
    )
    parser.add_argument(
        "--tmpfs",
        action="store_true",
        help="also run each of these with its state and output on tmpfs (/dev/shm): "
        "the daemon's cost without the disk's flushes",
    )
    parser.add_argument(
        "--spread",
        type=int,
        metavar="N",
        help="also run this tree as N daemons at once, daemon k alone on CPU k",
    )
    args = parser.parse_args()
    if args.quick:
        args.workspaces = 100
    work = Path(tempfile.mkdtemp(prefix="acexport-scale-"))
    if not os.environ.get("BENCH_KEEP"):  # keep the state and log to look into
        # Every run's files go at the end: ext4 makes a file created soon after many
        # were deleted slower, and a run would pay for the one before it.
        atexit.register(shutil.rmtree, work, True)
    else:
        print(f"keeping {work}", file=sys.stderr)
    trees: dict[str, Variant] = {"acexport": Variant()}
    if args.against is not None:
        trees[f"@{args.against}"] = Variant(str(worktree(args.against, work / "against")))
    if args.pinned is not None:
        cpus = {int(cpu) for cpu in args.pinned.split(",")}
        trees[f"acexport on CPU {args.pinned}"] = Variant(cpus=cpus)
    if args.processes is not None:
        trees[f"acexport in {args.processes} processes"] = Variant(processes=args.processes)
    if args.daemon_processes is not None:
        trees[f"acexport, daemon.processes = {args.daemon_processes}"] = Variant(
            daemon_processes=args.daemon_processes
        )
    if args.pin_cpus:
        count = args.daemon_processes or 1
        trees[f"acexport, daemon.processes = {count}, pin_cpus"] = Variant(
            daemon_processes=count, pin_cpus=True
        )
    if args.spread is not None:
        trees[f"acexport in {args.spread} processes, a CPU each"] = Variant(
            processes=args.spread, spread=True
        )
    if args.against is not None:  # each arrangement of this tree's daemon, with that one's
        against = trees[f"@{args.against}"].pythonpath
        for tree, variant in list(trees.items()):
            if tree.startswith("acexport") and tree != "acexport":
                trees[f"@{args.against}{tree.removeprefix('acexport')}"] = replace(
                    variant, pythonpath=against
                )
    if args.tmpfs:
        shm = Path(tempfile.mkdtemp(prefix="acexport-scale-", dir="/dev/shm"))
        atexit.register(shutil.rmtree, shm, True)  # memory: never kept
        for tree, variant in list(trees.items()):
            trees[f"{tree}, on tmpfs"] = replace(variant, tmpfs=True)
    runs: dict[str, list[Figures]] = {tree: [] for tree in trees}
    for round_ in range(args.rounds):
        for tree, variant in trees.items():
            base = shm if variant.tmpfs else work
            run_dir = base / f"{tree.strip('@').replace(' ', '-')}-{round_}"
            run_dir.mkdir()
            figures = one_run(run_dir, args.workspaces, args.processing, variant)
            figures.print(args.workspaces, args.processing, tree)
            runs[tree].append(figures)
    if args.rounds > 1 or len(trees) > 1:
        print(f"medians of {args.rounds} alternating round(s):")
        for tree, figures in runs.items():
            print(
                f"  {tree}: wall {median(figures, 'wall'):.1f} s "
                f"({statistics.median(f.wall / f.ideal for f in figures):.1f}x the ideal), "
                f"{median(figures, 'per_export_ms'):.1f} ms CPU per export, "
                f"lag {median(figures, 'lag_ms'):.0f} ms, RSS {median(figures, 'rss_mb'):.0f} MB"
            )
    return 0 if all(f.met(args.workspaces) for f in runs["acexport"]) else 1


def median(figures: list[Figures], name: str) -> float:
    return statistics.median(getattr(f, name) for f in figures)


if __name__ == "__main__":
    sys.exit(main())
