"""Chaos soak: faults, kills, reloads, a full disk and a revoked token; nothing may be lost.

Starts the emulator speaking AC's real protocol (chunked ZIP, no Range, 500 on
a revoked token) with every fault switched on (exports failing at AC with
ERROR, bodies ending early, 5xx, 429, cut connections, garbage answers, a
short download window), queues a fixed set
of windows with `acexport backfill`, then keeps `acexport run` going while at
random moments it is sent SIGKILL, SIGTERM or SIGHUP, restarted under a tiny
file-size limit (disk full), or has one workspace's token revoked and restored.
Beside each workspace's windows, a second job snapshots its entity tables every
few seconds, keeping three. At the end it exports what is left and checks,
against the emulator's own record of what it served: every window exactly
once, right sha256 and record count, every snapshot one AC served whole and
at most one more than kept per table, no partial, orphaned or temp file,
never two unready exports per workspace, no token in any log, and every stored
file told to a command hook (no event id naming two files). One
summary line; exit 0 only if nothing was lost.

    python bench/soak.py            # 12 workspaces x 6 types x 14 days = 1,008 windows
    python bench/soak.py --quick    # ~1 minute, run by the test suite
    python bench/soak.py --format parquet   # the same, every file typed Parquet
    python bench/soak.py --processes 2      # the same, the lanes over two processes
    python bench/soak.py --processes 2 --pin-cpus   # ... each process on one CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from acexport.emulator.process import EmulatorClient, running_emulator

TYPES = ("event", "identity", "individual", "membership", "page", "segment")
ENTITY_TYPES = ("identity", "individual", "membership", "segment")
SNAPSHOT_EVERY_S = 3
KEEP_SNAPSHOTS = 3


def control(base: str, path: str, body: dict[str, Any]) -> None:
    EmulatorClient(base).control(path, body)


def jobs_report(base: str) -> dict[str, Any]:
    return EmulatorClient(base).report()


def write_config(
    work: Path,
    base: str,
    tokens: dict[str, str],
    output_format: str,
    processes: int = 1,
    pin_cpus: bool = False,
) -> Path:
    lines = [
        "[daemon]",
        f"processes = {processes}",
        f"pin_cpus = {str(pin_cpus).lower()}",
        f'state_dir = "{work / "state"}"',
        f'output_dir = "{work / "exports"}"',
        'log_format = "json"',
        'listen = ""',
        'stop_grace = "3s"',
        'pickup_interval = "300ms"',
        "[http]",
        'poll_initial = "100ms"',
        'poll_max = "400ms"',
        'retry_initial = "50ms"',
        'retry_max = "300ms"',
        "max_attempts = 40",
        'download_window = "4s"',  # the emulator's --expiry: both sides agree
        'timeout = "10s"',
        "[output]",
        f'format = "{output_format}"',
    ]
    for name, token in tokens.items():
        (work / f"{name}.token").write_text(token + "\n")  # trailing newline: must be stripped
        lines += [
            f"[workspaces.{name}]",
            f'base_url = "{base}"',
            f'token_file = "{work / f"{name}.token"}"',
            'timezone = "Europe/Berlin"',
            'retention = "1200 months"',  # the soak backfills January 2022
        ]
    for name in tokens:
        lines += [
            "[[jobs]]",
            f'name = "{name}-daily"',
            f'workspace = "{name}"',
            'schedule = "every 2s"',
            'catch_up = "0s"',
            # Every type in windows: the soak checks each window once, whole.
            'modes = { identity = "windows", individual = "windows", '
            'membership = "windows", segment = "windows" }',
            # ... and the entity tables as AC's engine makes them: snapshots, pruned.
            "[[jobs]]",
            f'name = "{name}-entities"',
            f'workspace = "{name}"',
            f"types = {json.dumps(list(ENTITY_TYPES))}",
            f'schedule = "every {SNAPSHOT_EVERY_S}s"',
            f"keep_snapshots = {KEEP_SNAPSHOTS}",
        ]
    # A loader told of every committed file: one file per delivery attempt that got
    # the whole event (a killed or disk-full attempt is retried), named by its id.
    (work / "told").mkdir()
    lines += [
        "[[hooks]]",
        'name = "told"',
        f'command = ["sh", "-c", "cat > \\"$0/$ACEXPORT_EVENT_ID.$$\\"", "{work / "told"}"]',
    ]
    config = work / "acexport.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


class Daemon:
    """One `acexport run` incarnation, its log appended to a file."""

    def __init__(self, config: Path, log: Path, fsize_limit: int | None = None) -> None:
        def limit() -> None:
            if fsize_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

        self._log = log.open("ab")
        self.exited_before = False
        self.disk_full = fsize_limit is not None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "acexport", "run", "--config", str(config)],
            stdout=self._log,
            stderr=self._log,
            preexec_fn=limit,
        )

    def signal(self, sig: signal.Signals) -> int | None:
        """Send ``sig``; for SIGTERM/SIGKILL wait and return the exit code.

        ``exited_before`` tells a process that had already ended (a daemon started on
        a full disk exits 1 at once, by design) from one the signal ended.
        """
        self.exited_before = self.process.poll() is not None
        if not self.exited_before:
            self.process.send_signal(sig)
        if sig == signal.SIGHUP:
            return None
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


def run_cli(*args: str, log: Path) -> int:
    with log.open("ab") as out:
        return subprocess.run(
            [sys.executable, "-m", "acexport", *args],
            stdout=out,
            stderr=out,
            timeout=600,
            check=False,
        ).returncode


def backfill_every_job(config: Path, tokens: dict[str, str], days: int, log: Path) -> list[int]:
    """Queue (or, with no daemon running, export) every job's fixed range of days."""
    return [
        run_cli(
            "backfill",
            "--config",
            str(config),
            "--job",
            f"{name}-daily",
            "--from",
            "2022-01-01",
            "--to",
            f"2022-01-{days:02d}",
            log=log,
        )
        for name in tokens
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute")
    parser.add_argument("--workspaces", type=int, default=12)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--chaos-seconds", type=float, default=900, help="at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=["ndjson", "parquet"], default="ndjson")
    parser.add_argument(
        "--processes", type=int, default=1, help="daemon.processes: lanes over N processes"
    )
    parser.add_argument(
        "--pin-cpus", action="store_true", help="daemon.pin_cpus: each process on one CPU"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--processing-time", default="2", help="AC's time per export: long enough for chaos"
    )
    args = parser.parse_args()
    if args.quick:
        args.workspaces, args.days, args.chaos_seconds = 3, 3, 30
        args.processing_time = "0.4"
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="acexport-soak-"))
    log = work / "daemon.log"
    tokens = {
        f"ws{i}": f"soak-token-{i}-{rng.getrandbits(64):016x}" for i in range(args.workspaces)
    }
    emulator_args = [
        "--processing-time",
        args.processing_time,
        "--records",
        "2000",
        "--expiry",
        "4s",
        "--error-rate",
        "0.25",
        "--truncate-rate",
        "0.2",
        "--fail-rate",
        "0.08",
        "--throttle-rate",
        "0.05",
        "--retry-after",
        "0",
        "--cut-rate",
        "0.1",
        "--garbage-rate",
        "0.05",
        "--seed",
        str(args.seed),
        "--storage-dir",
        str(work / "storage"),
    ]
    for name, token in tokens.items():
        emulator_args += ["--token", f"{name}={token}"]
    injected: Counter[str] = Counter()
    started = time.monotonic()
    with running_emulator(*emulator_args) as base:
        config = write_config(work, base, tokens, args.format, args.processes, args.pin_cpus)
        daemon = Daemon(config, log)
        time.sleep(1.5)  # the daemon holds the lock: backfill only queues
        codes = backfill_every_job(config, tokens, args.days, log)
        assert not any(codes), f"backfill failed ({codes}); see {log}"
        deadline = time.monotonic() + args.chaos_seconds
        revoked: str | None = None
        expected_count = len(tokens) * len(TYPES) * args.days
        exports = work / "exports"
        # Chaos for as long as there is work left (or until the deadline).
        while time.monotonic() < deadline and (
            not exports.exists()
            or len(list(exports.glob("*/*/date=*/*.manifest.json"))) < expected_count
        ):
            time.sleep(rng.uniform(0.3, 1.5) if not args.quick else rng.uniform(0.5, 3.0))
            action = rng.choices(
                ["sigkill", "sigterm", "sighup", "revoke", "diskfull"], [4, 2, 2, 1.5, 1]
            )[0]
            if revoked:
                control(base, f"workspaces/{revoked}", {"revoked": False})
                revoked = None
            if action == "sighup":
                daemon.signal(signal.SIGHUP)
                injected["sighup"] += 1
                continue
            if action == "revoke":
                revoked = rng.choice(list(tokens))
                control(base, f"workspaces/{revoked}", {"revoked": True})
                injected["revoke"] += 1
                continue
            code = daemon.signal(signal.SIGKILL if action == "sigkill" else signal.SIGTERM)
            # A failure on a full disk is by design (counted apart, so one that is not shows).
            full = "_disk_full" if daemon.disk_full else ""
            if daemon.exited_before:
                injected[f"had_exited_{code}{full}"] += 1
            elif action == "sigterm" and code != 0:
                # By its code: -15 is a daemon stopped while still importing, before
                # it listens for signals; 1 a stop that failed.
                injected[f"sigterm_exit_{code}{full}"] += 1
            injected[action if action != "diskfull" else "sigkill"] += 1
            limit = None
            if action == "diskfull":
                limit = 30_000  # any file past 30 kB fails: exports, WAL, temp files
                injected["diskfull"] += 1
            daemon = Daemon(config, log, fsize_limit=limit)
            injected["restarts"] += 1
        if revoked:
            control(base, f"workspaces/{revoked}", {"revoked": False})
        daemon.signal(signal.SIGTERM)
        # Finish: failed windows are re-queued by a backfill; a foreground backfill
        # exports them (faults still on), until nothing is left.
        for _ in range(5):
            codes = backfill_every_job(config, tokens, args.days, log)
            if not any(codes):
                break
        # One more snapshot of each entity table, pruning after it: a kill in the middle
        # of the last prune of a type left a file only the next prune removes.
        run_cli("run", "--once", "--config", str(config), log=log)
        report = jobs_report(base)
        # Kept with the work directory: which jobs overlapped, when, after what.
        (work / "emulator-report.json").write_text(json.dumps(report, indent=1))
    elapsed = time.monotonic() - started

    # -- verification against the emulator's record of what it served --
    # Every export AC made of a range: an entity's state is its state when AC ran the
    # export, so a range exported twice (expired, failed) may have two renderings.
    served: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    by_range: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for job in report["jobs"]:
        if job["sha256"] is not None:
            served.setdefault((job["workspace"], job["type"], job["fromDate"]), []).append(job)
            key = (job["workspace"], job["type"], job["fromDate"], job["toDate"])
            by_range.setdefault(key, []).append(job)
    every = [json.loads(p.read_text()) for p in (work / "exports").rglob("*.manifest.json")]
    manifests = [m for m in every if m.get("mode", "windows") == "windows"]
    snapshots = [m for m in every if m.get("mode") == "snapshot"]
    snapshot_counts = Counter((m["workspace"], m["type"]) for m in snapshots)
    # Each a snapshot AC served whole; each entity table has one, at most one more than
    # kept (a kill between a commit and its prune).
    snapshots_wrong = sum(
        not _served_whole(m, by_range.get((m["workspace"], m["type"], m["fromDate"], m["toDate"])))
        for m in snapshots
    ) + sum(
        not 1 <= snapshot_counts[(ws, t)] <= KEEP_SNAPSHOTS + 1
        for ws in tokens
        for t in ENTITY_TYPES
    )
    keys = Counter((m["workspace"], m["type"], m["fromDate"]) for m in manifests)
    expected = {
        (ws, t, f"2022-01-{day:02d}T00:00:00.000Z")
        for ws in tokens
        for t in TYPES
        for day in range(1, args.days + 1)
    }
    # Berlin midnight is 23:00Z the day before.
    expected = {
        (ws, t, _berlin_midnight_utc(day))
        for ws, t, day in ((ws, t, int(f[8:10])) for ws, t, f in expected)
    }
    lost = len(expected - set(keys))
    duplicated = sum(count - 1 for count in keys.values() if count > 1)
    corrupted = 0
    for manifest in manifests:
        # A time series' window names the request it was cut out of.
        asked = manifest.get("request_fromDate", manifest["fromDate"])
        key = (manifest["workspace"], manifest["type"], asked)
        corrupted += not _served_whole(manifest, served.get(key))
    files = [p for p in (work / "exports").rglob("*") if p.is_file()]
    partial = [p for p in files if p.name.startswith(".") or p.suffix in (".part", ".tmp")]
    orphans = [
        p
        for p in files
        if not p.name.endswith(".manifest.json") and not Path(str(p) + ".manifest.json").exists()
    ]
    temp_left = (
        list((work / "state" / "tmp").glob("*")) if (work / "state" / "tmp").exists() else []
    )
    untold, told_twice_apart = _untold(work / "told", manifests + snapshots)
    logs = log.read_text(errors="replace")
    leaks = sum(logs.count(token) for token in tokens.values())
    max_unready = max(ws["max_unready"] for ws in report["workspaces"].values())
    faults: Counter[str] = Counter()
    for ws in report["workspaces"].values():
        faults.update(ws["faults"])
    ok = not (
        lost
        or duplicated
        or corrupted
        or leaks
        or partial
        or orphans
        or temp_left
        or max_unready > 1
        or snapshots_wrong
        or untold
        or told_twice_apart
    )
    print(
        f"soak: windows={len(expected)} exports={len(manifests)} "
        f"faults={dict(sorted(faults.items()))} injected={dict(sorted(injected.items()))} "
        f"restarts={injected['restarts']} lost={lost} duplicated={duplicated} "
        f"corrupted={corrupted} leaks={leaks} partial={len(partial) + len(orphans)} "
        f"temp_left={len(temp_left)} max_unready={max_unready} snapshots={len(snapshots)} "
        f"snapshots_wrong={snapshots_wrong} untold={untold} "
        f"id_conflicts={told_twice_apart} seconds={elapsed:.0f} "
        f"{'OK' if ok else 'FAILED'}"
    )
    if not ok or args.keep:
        print(f"work directory kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _served_whole(manifest: dict[str, Any], jobs: list[dict[str, Any]] | None) -> bool:
    """Whether the file is one AC served: its sha256 and record count (a window cut
    out of a time series' request holds some of the request's records)."""
    if "request_fromDate" in manifest:
        return any(
            manifest["payload_sha256"] == job["sha256"] and manifest["records"] <= job["records"]
            for job in jobs or []
        )
    return any(
        (manifest["payload_sha256"], manifest["records"]) == (job["sha256"], job["records"])
        for job in jobs or []
    )


def _untold(told: Path, committed: list[dict[str, Any]]) -> tuple[int, int]:
    """How many stored files (each manifest) the hook was never told of, and how many
    event ids were told of two different files (an id names one revision's file)."""
    events: dict[str, tuple[Any, ...]] = {}
    conflicts = 0
    for path in told.iterdir():
        try:
            event = json.loads(path.read_text())
        except ValueError:
            continue  # an attempt cut short: retried, so told by another file
        what = (event["job"], event["type"], event["fromDate"], event["revision"],
                event["file_sha256"])  # fmt: skip
        conflicts += events.setdefault(event["id"], what) != what
    heard = set(events.values())
    untold = sum(
        (m["job"], m["type"], m["fromDate"], m["revision"], m["file_sha256"]) not in heard
        for m in committed
    )
    return untold, conflicts


def _berlin_midnight_utc(day: int) -> str:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    midnight = datetime(2022, 1, day, tzinfo=ZoneInfo("Europe/Berlin"))
    return midnight.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000Z")


if __name__ == "__main__":
    os.environ.pop("ACEXPORT_CONFIG", None)
    sys.exit(main())
