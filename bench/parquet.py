"""Typed Parquet from AC's ZIP: acexport against curl + unzip + DuckDB, same data.

The emulator renders --size-mb MB of JSON Lines event records (AC's columns
and BigQuery encoding: INT64 strings, `... UTC` timestamps, concatenated
eventProperties, some with unescaped quotes) and serves them as AC does, a
chunked ZIP. In one run, alternating rounds, medians:

- `acexport export --output x.parquet` (typed by AC's tables, `_unparsed`,
  new-column detection, zstd): wall time, CPU, peak RSS, file size;
- the baseline: `curl -o x.zip && unzip -p x.zip > x.jsonl && duckdb: COPY
  (SELECT * FROM read_json('x.jsonl')) TO 'x.parquet' (FORMAT parquet,
  COMPRESSION zstd) && sync` (DuckDB's own type detection, no limits; DuckDB
  through its Python package, the same engine and version acexport uses, as
  the CLI is not installed here);
- beside it, acexport's NDJSON gzip path on the same data.

Targets: acexport's Parquet <= 1.0x the baseline, peak RSS <= 400 MB.

    python bench/parquet.py [--size-mb 1024] [--rounds 3] [--quick] [--against REV]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from acexport.emulator.process import EmulatorClient, running_emulator
from real_format import TOKEN, shell, timed, wait_ready, worktree

DAY = ("2022-01-01", "fromDate=2022-01-01T00:00:00.000Z&toDate=2022-01-02T00:00:00.000Z")
EVENT_RECORD_BYTES = 770  # the emulator's event rows, on average
BASELINE_COPY = (
    'import duckdb, sys; duckdb.sql("COPY (SELECT * FROM read_json(\'" + sys.argv[1] + '
    '"\')) TO \'" + sys.argv[2] + "\' (FORMAT parquet, COMPRESSION zstd)")'
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="256 MB, 2 rounds")
    parser.add_argument(
        "--against", metavar="REV", help="also run the acexport of this git revision, same rounds"
    )
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.rounds = 256, 2
    for tool in ("curl", "unzip"):
        if not shutil.which(tool):
            print(f"{tool} is required for this benchmark", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="acexport-parquet-"))
    records = args.size_mb * 1_000_000 // EVENT_RECORD_BYTES
    trees = {"acexport": os.environ.get("PYTHONPATH", "")}
    try:
        if args.against is not None:
            trees[f"@{args.against}"] = str(worktree(args.against, work / "against"))
        with running_emulator(
            *("--token", f"bench={TOKEN}", "--processing-time", "0"),
            *("--records", str(records), "--storage-dir", str(work / "storage")),
        ) as base:
            return compare(base, work, args.rounds, trees)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare(base: str, work: Path, rounds: int, trees: dict[str, str]) -> int:
    """``trees``: each acexport run, by the PYTHONPATH it runs with."""
    url = f"{base}/api/reports/export/event?{DAY[1]}"
    wait_ready(url)
    job = EmulatorClient(base).jobs()[0]
    curl = ["curl", "-sf", "-H", f"Authorization: Bearer {TOKEN}", "-o"]

    def ours(output: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "acexport", "export", "--base-url", base),
            *("--token-env", "BENCH_TOKEN", "--type", "event", "--from", DAY[0], "--to", DAY[0]),
            *("--quiet", "--output", str(output)),
        ]

    parquet: dict[str, list[tuple[float, float, int, int]]] = {tree: [] for tree in trees}
    gzip: list[float] = []
    baseline: list[float] = []
    baseline_size = 0
    for path in trees.values():  # a tree asking another range: the emulator renders it
        timed(ours(work / "ours.jsonl"), {**os.environ, "BENCH_TOKEN": TOKEN, "PYTHONPATH": path})
        for old in work.glob("ours*"):
            old.unlink()
    for _ in range(rounds):
        for tree, runs in parquet.items():
            env = {**os.environ, "BENCH_TOKEN": TOKEN, "PYTHONPATH": trees[tree]}
            out = work / "ours.parquet"
            wall, cpu, rss = timed(ours(out), env)
            manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
            served = {j["sha256"] for j in EmulatorClient(base).jobs()}
            assert manifest["payload_sha256"] in served, f"{tree}'s data differs"
            assert manifest["rows"] == job["records"], f"{tree}: rows went missing"
            runs.append((wall, cpu, rss, out.stat().st_size))
            if tree == "acexport":
                gzip.append(timed(ours(work / "ours.jsonl.gz"), env)[0])
            for path in work.glob("ours*"):
                path.unlink()
        zip_file, jsonl, target = work / "x.zip", work / "x.jsonl", work / "x.parquet"
        command = (
            f"{shlex.join([*curl, str(zip_file), url])} && unzip -p '{zip_file}' > '{jsonl}' && "
            f"{shlex.join([sys.executable, '-c', BASELINE_COPY, str(jsonl), str(target)])} && "
            f"sync '{target}'"
        )
        baseline.append(shell(command))
        baseline_size = target.stat().st_size
        for path in (zip_file, jsonl, target):
            path.unlink()

    def median(index: int, tree: str = "acexport") -> float:
        return statistics.median(r[index] for r in parquet[tree])

    size_mb = job["records"] * EVENT_RECORD_BYTES / 1e6
    print(
        f"ZIP {job['bytes'] / 1e6:.0f} MB of {job['records']} events (~{size_mb:.0f} MB of "
        f"JSON Lines), {rounds} alternating rounds, medians:"
    )
    for tree, runs in parquet.items():
        print(
            f"  {tree:<9} -> parquet (typed)           {median(0, tree):6.2f} s  "
            f"CPU {median(1, tree):5.2f} s  RSS {max(r[2] for r in runs) / 1024:3.0f} MB  "
            f"output {median(3, tree) / 1e6:6.1f} MB"
        )
    rss = max(r[2] for r in parquet["acexport"]) / 1024
    base_s = statistics.median(baseline)
    print(
        f"  curl && unzip -p && duckdb COPY && sync  {base_s:6.2f} s  "
        f"output {baseline_size / 1e6:6.1f} MB  <- baseline (text columns, types guessed)"
    )
    print(f"  acexport -> ndjson gzip (for reference)  {statistics.median(gzip):6.2f} s")
    ratio = median(0) / base_s
    figures = "  ".join(f"{tree} {median(0, tree) / base_s:.2f}" for tree in trees)
    print(f"  parquet / baseline <= 1.0: {figures}  {'met' if ratio <= 1.0 else 'MISSED'}")
    print(f"  peak RSS <= 400 MB: {rss:.0f} MB {'met' if rss <= 400 else 'MISSED'}")
    return 0 if ratio <= 1.0 and rss <= 400 else 1


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"(bench took {time.perf_counter() - started:.0f} s)")
    sys.exit(code)
