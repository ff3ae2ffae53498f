"""One daemon per output: the owner marker in the output root or prefix.

Two daemons with different state dirs writing one output would both export
every window (AC's one-at-a-time queue gets two submitters) and could leave a
manifest describing the other's file. So each daemon writes
``.acexport-owner.json`` at its output root, naming its state dir's id, host
and pid, and refreshes it while it runs. At start a marker of another state
dir that is fresh refuses the start (a configuration error: exit 78, naming
the owner); one not refreshed for ``STALE_AFTER_S`` belongs to a daemon that
is gone and is taken over with a warning. Restarting the same state dir (a new
pod name, a new pid) is the same owner.

Each process also stamps its own ``instance`` (a nonce): a copy of a state dir
(the same id, elsewhere) is another owner at start, and a refresh that finds
another instance's marker means two processes of one state id write the output:
the one that notices stops. A marker stamped in the future (a host whose clock
ran ahead) says nothing by its time: it is alive only if it changes while watched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import structlog

from ..errors import ConfigError, SinkError, StoreRejected, StoreUnavailable, printable
from .store import OutputStore

log = structlog.get_logger("acexport.output")

OWNER_KEY = PurePosixPath(".acexport-owner.json")
REFRESH_S = 60.0
STALE_AFTER_S = 10 * REFRESH_S  # a few missed refreshes (a slow store) are not death
# A marker stamped later than this past our clock cannot be judged by its time: it is
# watched this long (more than a refresh) for a change.
FUTURE_TOLERANCE_S = 5.0
CHANGE_WATCH_S = REFRESH_S * 1.5
CHANGE_POLL_S = 5.0


@dataclass(frozen=True)
class Owner:
    """Who writes an output: a state directory (its id), on a host, as a process."""

    state_id: str
    state_dir: str
    host: str
    pid: int
    seen_at: float  # epoch seconds of the last refresh
    instance: str = ""  # this process's nonce ("" in markers of older versions)

    @classmethod
    def me(cls, state_id: str, state_dir: str, now: float) -> Owner:
        host, pid = socket.gethostname(), os.getpid()
        return cls(state_id, state_dir, host, pid, now, uuid.uuid4().hex)

    def restarts(self, other: Owner) -> bool:
        """Whether this process is ``other``'s state dir started again (same id, same
        path), not a copy of it running elsewhere."""
        return self.state_id == other.state_id and self.state_dir == other.state_dir

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    def describe(self) -> str:
        # A marker is anyone's text: printed through the filter (no ESC, no BEL).
        return printable(f"state dir {self.state_dir} on {self.host} (pid {self.pid})")


def _parse(text: bytes | None) -> Owner | None:
    """The marker's owner; None if there is none or it is unreadable (taken over)."""
    if text is None:
        return None
    try:
        fields: Any = json.loads(text)
        return Owner(
            str(fields["state_id"]),
            str(fields["state_dir"]),
            str(fields["host"]),
            int(fields["pid"]),
            float(fields["seen_at"]),
            str(fields.get("instance", "")),
        )
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


async def claim_output(store: OutputStore, me: Owner) -> None:
    """Become the output's owner, or raise ConfigError naming its live owner."""
    text = await store.read_small(OWNER_KEY)
    current = _parse(text)
    if current is not None and not me.restarts(current):
        age = me.seen_at - current.seen_at
        if await _alive(store, text, age):
            raise ConfigError(
                f"the output {store.describe()} is written by another acexport: "
                f"{current.describe()}, {_seen(age)}"
                + (" (a copy of this state directory)" if current.state_id == me.state_id else "")
                + ". Two daemons on one output export "
                "every window twice; give each its own output, or stop the other (its "
                f"marker {OWNER_KEY} is taken over once {STALE_AFTER_S:.0f}s old)"
            )
        log.warning(
            "output_owner_taken_over",
            previous=current.describe(),
            last_seen_s=round(age),
            output=store.describe(),
        )
    await store.write_small(OWNER_KEY, me.to_json())


def _seen(age: float) -> str:
    if age < -FUTURE_TOLERANCE_S:
        return "whose marker is stamped in the future and changed while watched"
    return f"last seen {max(age, 0):.0f}s ago"


async def _alive(store: OutputStore, text: bytes | None, age: float) -> bool:
    """Whether the marker's owner still runs: by its age while its clock can be
    believed, by change when it is stamped in the future."""
    if age >= -FUTURE_TOLERANCE_S:
        return age < STALE_AFTER_S
    deadline = time.monotonic() + CHANGE_WATCH_S
    while time.monotonic() < deadline:
        await asyncio.sleep(min(CHANGE_POLL_S, max(0.0, deadline - time.monotonic())))
        if await store.read_small(OWNER_KEY) != text:
            return True
    return False


async def refresh_claim(store: OutputStore, me: Owner) -> None:
    """Say we are still here; ConfigError if another process took the output over (one
    of another state dir, or another process of this state id: a copy of it)."""
    current = _parse(await store.read_small(OWNER_KEY))
    if current is not None and current.instance != me.instance:
        raise ConfigError(
            f"another acexport took over the output {store.describe()}: {current.describe()}"
            + (" (a copy of this state directory?)" if current.state_id == me.state_id else "")
        )
    await store.write_small(OWNER_KEY, me.to_json())


async def release_claim(store: OutputStore, me: Owner) -> None:
    """At a clean stop: the next daemon (even another state dir's) may start at once."""
    current = _parse(await store.read_small(OWNER_KEY))
    if current is None or current.instance == me.instance:
        await store.delete(OWNER_KEY)


class OutputClaim:
    """A daemon's claim on its output: taken at start, kept while it runs, released at
    a clean stop (after the lanes: ``take`` is called before they start)."""

    def __init__(self, store: OutputStore, me: Owner) -> None:
        self._store = store
        self._me = me
        self._claimed = False  # the store was down at start: the first refresh claims

    async def take(self, stack: AsyncExitStack) -> None:
        """Claim the output, or raise ConfigError naming its live owner."""
        try:
            await claim_output(self._store, self._me)
            self._claimed = True
        except StoreUnavailable as exc:  # down now: commits wait for it; claimed later
            log.warning("output_owner_not_claimed", error=str(exc))
        stack.push_async_callback(self._release)

    async def keep(self, lost: Callable[[BaseException], None]) -> None:
        """Refresh every REFRESH_S; ``lost`` is told if another daemon took over."""
        while True:
            await asyncio.sleep(REFRESH_S)
            self._me = dataclasses.replace(self._me, seen_at=time.time())
            try:
                if self._claimed:
                    await refresh_claim(self._store, self._me)
                else:
                    await claim_output(self._store, self._me)
                    self._claimed = True
            except ConfigError as exc:
                lost(exc)
                return
            except (StoreUnavailable, StoreRejected, SinkError) as exc:
                log.warning("output_owner_not_refreshed", error=str(exc))

    async def _release(self) -> None:
        try:
            await release_claim(self._store, self._me)
        except (StoreUnavailable, StoreRejected, SinkError) as exc:
            log.warning("output_owner_not_released", error=str(exc))
