"""One attempt to tell a hook of an event: a command, a webhook, an OpenLineage POST.

Each answers an ``Attempt``: delivered, or not and whether a retry can help (and
when, if the receiver said). Nothing here retries, stores or knows AC: the
dispatcher (``hooks/__init__.py``) does the first two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import IO, Any

import aiohttp
from pydantic import SecretStr

from .. import __version__
from ..config.hooks import HookSettings
from ..errors import printable
from ..ops.logging import redact, remote_text
from ..protocol import parse_retry_after

OUTPUT_KEPT = 2000  # of a command's output or an answer's body, for status
_LAST_WORDS = 400  # of a failed command's output, in its error (remote_text caps at 500)
RETRY_AFTER_MAX_S = 3600.0  # a receiver's Retry-After is honoured up to this
_RETRIED = {408, 429}
# The event's fields a command also gets as variables (design section 4).
_VARIABLES = {
    "ACEXPORT_EVENT_ID": "id",
    "ACEXPORT_JOB": "job",
    "ACEXPORT_WORKSPACE": "workspace",
    "ACEXPORT_TYPE": "type",
    "ACEXPORT_FROM": "fromDate",
    "ACEXPORT_TO": "toDate",
    "ACEXPORT_REVISION": "revision",
    "ACEXPORT_FILE": "url",
    "ACEXPORT_MANIFEST": "manifest",
}


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    final: bool = False  # a failure no retry can fix (a 4xx other than 408 and 429)
    retry_after_s: float | None = None  # the receiver's Retry-After
    detail: str = ""  # what went wrong, redacted and capped

    @classmethod
    def failed(
        cls, detail: str, *, final: bool = False, retry_after_s: float | None = None
    ) -> Attempt:
        return cls(False, final, retry_after_s, remote_text(detail))


def command_environment(event: dict[str, Any], hidden: frozenset[str]) -> dict[str, str]:
    """The daemon's environment, less the variables that hold tokens and settings, with
    the event's fields as ``ACEXPORT_*`` variables."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in hidden and not name.startswith("ACEXPORT_")
    }
    env.update({name: str(event.get(field, "")) for name, field in _VARIABLES.items()})
    return env


class RunningCommands:
    """The hooks' commands while they run. A stopping daemon kills them (their events
    stay pending, told again at the next start) rather than wait up to each hook's
    timeout; and once it has, none starts: a worker thread about to start one as the
    daemon stopped would run it after the stop, and the event would be told twice."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a start and the kill never interleave
        self._processes: set[subprocess.Popen[bytes]] = set()
        self._stopped = False

    def start(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes] | None:
        """The command started, or None once the daemon is stopping."""
        with self._lock:
            if self._stopped:
                return None
            process = subprocess.Popen(  # noqa: S603 - the operator's program, no shell
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its children too are killed at the timeout
            )
            self._processes.add(process)
            return process

    def ended(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._processes.discard(process)

    def kill_all(self) -> None:
        """Kill every command still running, with the children it started, and start
        no other."""
        with self._lock:
            self._stopped = True
            for process in self._processes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


async def run_command(
    hook: HookSettings,
    body: bytes,
    event: dict[str, Any],
    hidden: frozenset[str],
    running: RunningCommands | None = None,
) -> Attempt:
    """The event on the command's stdin; exit 0 is delivered. No shell. Run from a
    worker thread (asyncio's child watcher in Python 3.11 starts a thread per child,
    and with it 1,000 commands took the export of 1,000 windows from 1.8 to 3.2 s)."""
    env = command_environment(event, hidden)
    return await asyncio.to_thread(
        _run_command, hook, body, env, RunningCommands() if running is None else running
    )


def _run_command(
    hook: HookSettings, body: bytes, env: dict[str, str], running: RunningCommands
) -> Attempt:
    assert hook.command is not None
    deadline = time.monotonic() + hook.timeout.total_seconds()
    try:
        process = running.start(hook.command, env)
    except OSError as exc:
        return Attempt.failed(f"cannot run {hook.command[0]!r}: {exc.strerror or exc}")
    if process is None:
        return Attempt.failed("not run: the daemon is stopping")
    try:
        return _tell(hook, process, body, deadline)
    finally:
        running.ended(process)


def _tell(
    hook: HookSettings, process: subprocess.Popen[bytes], body: bytes, deadline: float
) -> Attempt:
    assert process.stdin is not None
    assert process.stdout is not None
    # Only the output's tail is kept: a loader printing its rows must not fill memory.
    tail = _OutputTail(process.stdout)
    reader = threading.Thread(target=tail.drain, name="acexport-hook-output", daemon=True)
    reader.start()
    with contextlib.suppress(BrokenPipeError):  # a command may ignore its stdin
        process.stdin.write(body)
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    try:
        process.wait(timeout=max(0.0, deadline - time.monotonic()))
        # A child it left running may hold the output open: the same deadline.
        reader.join(max(0.0, deadline - time.monotonic()))
        timed_out = reader.is_alive()
    except subprocess.TimeoutExpired:
        timed_out = True
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        reader.join()
        if process.returncode < 0:
            return Attempt.failed(f"timed out after {hook.timeout.total_seconds():g}s")
    if process.returncode == 0:
        return Attempt(True)
    return Attempt.failed(f"exit {process.returncode}: {tail.last_words()}".rstrip(": "))


class _OutputTail:
    """Reads a command's output to its end, keeping the last ``OUTPUT_KEPT`` bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._kept = b""

    def drain(self) -> None:
        with self._stream:
            while chunk := os.read(self._stream.fileno(), 65536):
                self._kept = (self._kept + chunk)[-OUTPUT_KEPT:]

    def last_words(self) -> str:
        """The end of the output, where a program says why it failed; redacted before
        it is cut, so no part of a token shows."""
        words = printable(redact(self._kept.decode("utf-8", "replace"))).strip()
        return words if len(words) <= _LAST_WORDS else "…" + words[-_LAST_WORDS:]


def signature(secret: SecretStr, body: bytes) -> str:
    """``X-Acexport-Signature``: the body's HMAC-SHA256 under the hook's secret."""
    digest = hmac.new(secret.get_secret_value().encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    timeout_s: float,
    headers: dict[str, str],
) -> Attempt:
    """POST the body; 2xx is delivered, 408/429/5xx and connection errors are retried,
    another answer fails at once (kept for status). Redirects are not followed: the
    event, and its signature, go where the config says and nowhere else."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"acexport/{__version__}",
        **headers,
    }
    try:
        async with session.post(
            url,
            data=body,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            if 200 <= response.status < 300:
                return Attempt(True)
            answer = (await response.content.read(OUTPUT_KEPT)).decode("utf-8", "replace")
            detail = f"HTTP {response.status}: {answer.strip()}".rstrip(": ")
            if response.status in _RETRIED or response.status >= 500:
                asked = parse_retry_after(response.headers.get("Retry-After"))
                wait = None if asked is None else min(asked, RETRY_AFTER_MAX_S)
                return Attempt.failed(detail, retry_after_s=wait)
            if 300 <= response.status < 400:
                detail += " (redirects are not followed: set the hook's url to the target)"
            return Attempt.failed(detail, final=True)
    except TimeoutError:
        return Attempt.failed(f"no answer within {timeout_s:g}s")
    except aiohttp.ClientError as exc:
        return Attempt.failed(f"{type(exc).__name__}: {exc}")


def lineage_event(event: dict[str, Any], output_root: str) -> str:
    """An OpenLineage ``RunEvent`` (COMPLETE) for the committed file, built with the
    openlineage-python client (the ``acexport[openlineage]`` extra): the output dataset
    named by the output's root and the file's path, with its statistics and the
    revision as its version; the run's id is the event's (stable on redelivery)."""
    from openlineage.client.event_v2 import Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import dataset_version_dataset as version
    from openlineage.client.facet_v2 import output_statistics_output_dataset as statistics
    from openlineage.client.serde import Serde

    url = str(event.get("url", ""))
    name = url[len(output_root) :].lstrip("/") if url.startswith(output_root) else url
    output = OutputDataset(
        namespace=output_root,
        name=name,
        facets={"version": version.DatasetVersionDatasetFacet(str(event.get("revision")))},
        outputFacets={
            "outputStatistics": statistics.OutputStatisticsOutputDatasetFacet(
                rowCount=event.get("records"), size=event.get("file_bytes")
            )
        },
    )
    run_event = RunEvent(
        eventType=RunState.COMPLETE,
        eventTime=str(event.get("committedAt")),
        run=Run(runId=str(uuid.UUID(hex=str(event["id"])))),
        job=Job(namespace="acexport", name=f"{event.get('job')}.{event.get('type')}"),
        producer=f"https://pypi.org/project/acexport/{__version__}",
        outputs=[output],
    )
    return str(Serde.to_json(run_event))
