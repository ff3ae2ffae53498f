"""The emulator as a child process, and a client of its inspection routes.

For the benchmarks and the tests: ``running_emulator`` starts one on a free
port; ``EmulatorClient`` reads ``/_emulator/jobs`` and posts to the control
routes (loopback only), so nobody re-implements them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EmulatorClient:
    """The emulator at ``base_url``: its record of every job, and its fault switches."""

    base_url: str

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://127.", "http://localhost")):
            raise ValueError(f"the emulator's control routes are loopback-only: {self.base_url}")

    def report(self) -> dict[str, Any]:
        """``GET /_emulator/jobs``: jobs (timeline, bytes, sha256, records), workspaces."""
        url = f"{self.base_url}/_emulator/jobs"
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback
            report: dict[str, Any] = json.load(response)
        return report

    def jobs(self) -> list[dict[str, Any]]:
        jobs: list[dict[str, Any]] = self.report()["jobs"]
        return jobs

    def control(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /_emulator/PATH``: ``faults`` or ``workspaces/NAME``."""
        request = urllib.request.Request(  # noqa: S310 - loopback, checked above
            f"{self.base_url}/_emulator/{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            answer: dict[str, Any] = json.load(response)
        return answer


@contextmanager
def running_emulator(*args: str) -> Iterator[str]:
    """Run ``acexport emulator --port 0 ARGS``; yield its base URL; stop it after."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "acexport", "emulator", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"http://[\d.]+:\d+", line)
        if not found:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        yield found.group(0)
    finally:
        process.terminate()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()
