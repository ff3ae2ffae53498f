"""``acexport emulator`` as an operator runs it: a subprocess on a free port."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import pytest


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url)  # noqa: S310 - loopback http only, checked above
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_emulator_command_serves_the_documented_flow() -> None:
    """The documented curl flow works against `acexport emulator --port 0`; SIGTERM exits 0."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "acexport",
            "emulator",
            "--port",
            "0",
            "--token",
            "demo=secret",
            "--processing-time",
            "0.3",
            "--expiry",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert match, line
        url = (
            f"{match.group(0)}/api/reports/export/page"
            "?fromDate=2022-01-01T00:00:00.000Z&toDate=2022-01-01T23:59:59.999Z"
        )
        assert _get(url)[0] == 500  # AC's answer to a missing token
        states = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = _get(url, "secret")
            assert status == 200
            if not body.startswith(b'{"fromDate"'):
                break
            states.append(json.loads(body)["status"])
            time.sleep(0.1)
        assert states[0] == "PENDING"
        assert "RUNNING" in states
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            (member,) = archive.namelist()
            assert len(archive.read(member).splitlines()) == 100
        time.sleep(1.1)
        assert json.loads(_get(url, "secret")[1])["status"] == "PENDING"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        _, stderr = process.communicate()
    assert "Traceback" not in stderr, stderr


def test_emulator_rejects_bad_options_with_usage() -> None:
    """A malformed option exits 2 with a message naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "acexport", "emulator", "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--fail-rate" in result.stderr
    assert "between 0 and 1" in result.stderr
