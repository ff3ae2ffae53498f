"""Hooks' cost: 1,000 committed windows told to two hooks, against none.

Figure: `acexport run --once` of one job's 1,000 hourly windows of `page` (catch-up,
coalesced as usual) with two hooks, a webhook to a receiver that takes
`--receiver-delay` per request and a command hook (`true`): when the last window
was committed (the export phase, from the daemon's log), deliveries per second,
wall time until every event is delivered, peak RSS. Baseline, same run, same
emulator: the same export with no hooks. Target: the export phase within 5% of
the baseline (delivery adds one ledger row per hook and event to the export path).

    python bench/hooks.py [--windows 1000] [--receiver-delay 0.005] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from acexport.emulator.process import running_emulator


def receiver(delay_s: float) -> tuple[ThreadingHTTPServer, list[float]]:
    """A webhook receiver taking ``delay_s`` per event; the times it accepted them."""
    accepted: list[float] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(delay_s)
            accepted.append(time.time())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, accepted


def config_text(work: Path, base: str, windows: int, hooks: str, grace: str) -> str:
    return "\n".join(
        [
            "[daemon]",
            f'state_dir = "{work / "state"}"',
            f'output_dir = "{work / "out"}"',
            'log_format = "json"',
            'listen = ""',
            f'stop_grace = "{grace}"',
            "[http]",
            'poll_initial = "100ms"',
            'poll_max = "1s"',
            'retry_initial = "50ms"',
            "[output]",
            'compression = "none"',
            "[workspaces.acme]",
            f'base_url = "{base}"',
            'token = "acme-token"',
            'retention = "1200 months"',
            "[[jobs]]",
            'name = "hourly"',
            'workspace = "acme"',
            'types = ["page"]',
            'window = "1h"',
            'lag = "0s"',
            f'catch_up = "{windows}h"',
            hooks,
            "",
        ]
    )


def run(base: str, windows: int, hooks: str, grace: str = "10m") -> dict[str, float]:
    """One `run --once` on a fresh state: its phases (from the log) and peak RSS."""
    work = Path(tempfile.mkdtemp(prefix="acexport-hooks-"))
    config = work / "acexport.toml"
    config.write_text(config_text(work, base, windows, hooks, grace))
    config.chmod(0o600)
    started = time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "acexport", "run", "--once", "--config", str(config)],
        stderr=subprocess.PIPE,
        env={**os.environ, "ACEXPORT_CONFIG": ""},
    )
    assert process.stderr is not None
    log = process.stderr.read().decode().splitlines()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.time() - started
    shutil.rmtree(work, ignore_errors=True)
    lines = [json.loads(line) for line in log if line.startswith("{")]

    def at(line: dict[str, object]) -> float:
        return datetime.fromisoformat(str(line["timestamp"])).timestamp()

    done = [at(line) for line in lines if line.get("event") == "export_done"]
    delivered = [at(line) for line in lines if line.get("event") == "hook_delivered"]
    if os.waitstatus_to_exitcode(status) != 0 or len(done) < windows:
        raise RuntimeError("the run failed:\n" + "\n".join(log[-20:]))
    return {
        "exports_s": max(done) - started,
        "files": len(done),
        "delivered": len(delivered),
        "deliveries_s": (max(delivered) - min(delivered)) if delivered else 0.0,
        "wall_s": wall,
        "rss_mb": usage.ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--receiver-delay", type=float, default=0.005)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--grace",
        default="10m",
        help="daemon.stop_grace: how long run --once tells the hooks before it exits",
    )
    parser.add_argument("--no-command", action="store_true", help="the webhook alone")
    parser.add_argument("--quick", action="store_true", help="200 windows, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.rounds = 200, 2
    server, _ = receiver(args.receiver_delay)
    url = f"http://127.0.0.1:{server.server_address[1]}/events"
    hooks = f'[[hooks]]\nname = "webhook"\nurl = "{url}"\n'
    if not args.no_command:
        hooks += '[[hooks]]\nname = "command"\ncommand = ["true"]\n'

    with running_emulator(
        *("--token", "acme=acme-token", "--processing-time", "0", "--records-per-day", "2400")
    ) as base:
        results: dict[str, list[dict[str, float]]] = {"no hooks": [], "with hooks": []}
        for _ in range(args.rounds):
            results["no hooks"].append(run(base, args.windows, ""))
            results["with hooks"].append(run(base, args.windows, hooks, args.grace))
    server.shutdown()

    def median(name: str, key: str) -> float:
        values = sorted(r[key] for r in results[name])
        return values[len(values) // 2]

    print(
        f"{args.windows} hourly windows of page, run --once, {args.rounds} alternating rounds, "
        f"medians; webhook receiver {args.receiver_delay * 1000:g} ms per event:"
    )
    for name in results:
        print(
            f"  {name:<9} exports committed in {median(name, 'exports_s'):6.2f} s  "
            f"files {median(name, 'files'):.0f}  wall {median(name, 'wall_s'):6.2f} s  "
            f"RSS {max(r['rss_mb'] for r in results[name]):4.0f} MB"
        )
    delivered, spent = median("with hooks", "delivered"), median("with hooks", "deliveries_s")
    print(
        f"  deliveries: {delivered:.0f} ({delivered / max(spent, 1e-9):.0f}/s over {spent:.2f} s, "
        "both hooks)"
    )
    ratio = median("with hooks", "exports_s") / median("no hooks", "exports_s")
    verdict = "met" if ratio <= 1.05 else "MISSED"
    print(f"  export phase with hooks / without <= 1.05: {ratio:.3f} {verdict}")
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
