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
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

import structlog

from ..errors import ConfigError, SinkError, StoreRejected, StoreUnavailable
from .store import OutputStore

log = structlog.get_logger("acexport.output")

OWNER_KEY = PurePosixPath(".acexport-owner.json")
REFRESH_S = 60.0
STALE_AFTER_S = 10 * REFRESH_S  # a few missed refreshes (a slow store) are not death


@dataclass(frozen=True)
class Owner:
    """Who writes an output: a state directory (its id), on a host, as a process."""

    state_id: str
    state_dir: str
    host: str
    pid: int
    seen_at: float  # epoch seconds of the last refresh

    @classmethod
    def me(cls, state_id: str, state_dir: str, now: float) -> Owner:
        return cls(state_id, state_dir, socket.gethostname(), os.getpid(), now)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    def describe(self) -> str:
        return f"state dir {self.state_dir} on {self.host} (pid {self.pid})"


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
        )
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


async def claim_output(store: OutputStore, me: Owner) -> None:
    """Become the output's owner, or raise ConfigError naming its live owner."""
    current = _parse(await store.read_small(OWNER_KEY))
    if current is not None and current.state_id != me.state_id:
        age = me.seen_at - current.seen_at
        if age < STALE_AFTER_S:
            raise ConfigError(
                f"the output {store.describe()} is written by another acexport: "
                f"{current.describe()}, last seen {max(age, 0):.0f}s ago. Two daemons on one "
                "output export every window twice; give each its own output, or stop the "
                f"other (its marker {OWNER_KEY} is taken over once {STALE_AFTER_S:.0f}s old)"
            )
        log.warning(
            "output_owner_taken_over",
            previous=current.describe(),
            last_seen_s=round(age),
            output=store.describe(),
        )
    await store.write_small(OWNER_KEY, me.to_json())


async def refresh_claim(store: OutputStore, me: Owner) -> None:
    """Say we are still here; ConfigError if another daemon took the output over."""
    current = _parse(await store.read_small(OWNER_KEY))
    if current is not None and current.state_id != me.state_id:
        raise ConfigError(
            f"another acexport took over the output {store.describe()}: {current.describe()}"
        )
    await store.write_small(OWNER_KEY, me.to_json())


async def release_claim(store: OutputStore, me: Owner) -> None:
    """At a clean stop: the next daemon (even another state dir's) may start at once."""
    current = _parse(await store.read_small(OWNER_KEY))
    if current is None or current.state_id == me.state_id:
        await store.delete(OWNER_KEY)


class OutputClaim:
    """A daemon's claim on its output: taken at start, kept while it runs, released at
    a clean stop (after the lanes: ``take`` is called before they start)."""

    def __init__(self, store: OutputStore, me: Owner) -> None:
        self._store = store
        self._me = me

    async def take(self, stack: AsyncExitStack) -> None:
        """Claim the output, or raise ConfigError naming its live owner."""
        try:
            await claim_output(self._store, self._me)
        except StoreUnavailable as exc:  # down now: commits wait for it; claimed later
            log.warning("output_owner_not_claimed", error=str(exc))
        stack.push_async_callback(self._release)

    async def keep(self, lost: Callable[[BaseException], None]) -> None:
        """Refresh every REFRESH_S; ``lost`` is told if another daemon took over."""
        while True:
            await asyncio.sleep(REFRESH_S)
            self._me = dataclasses.replace(self._me, seen_at=time.time())
            try:
                await refresh_claim(self._store, self._me)
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
