"""Hooks: every committed file told to the data stack, durably, at least once.

The ledger holds each hook's queue (ledger/hooks.py): an export stages its event
before it runs, the transaction that marks it done commits it. Here one task per
hook delivers its committed events in commit order: the oldest first, retried
with capped backoff (or the receiver's Retry-After) until it is ``max_age`` old,
then failed, visibly. A hook's task never waits on an export, nor an export on a
hook; a slow receiver holds up only its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import structlog

from ..config import Settings
from ..config.hooks import HookSettings, counted_since
from ..events import ExportEnded, LaneObserver
from ..formats import OutputFormat
from ..ledger import Delivery, HookBacklog, Ledger
from ..ops.health import Health
from ..ops.logging import register_secret
from ..ops.metrics import Metrics
from ..output.store import OutputStore
from .senders import (
    Attempt,
    RunningCommands,
    lineage_event,
    post,
    run_command,
    signature,
)

log = structlog.get_logger("acexport.hooks")

_IDLE_LOOK_S = 30.0  # a hook with nothing due looks again after this, woken or not
_GAUGES_EVERY_S = 2.0
_KEPT_S = 7 * 86400.0  # deliveries that ended, and events never committed, kept this long


async def woken_within(wake: asyncio.Event, seconds: float) -> None:
    """Wait until ``wake`` is set or ``seconds`` have passed, then clear it.

    Never loses a cancellation: Python 3.11's ``asyncio.wait_for`` returns the inner
    result when the event is set in the same turn as the task is cancelled
    (gh-86296), and a hook's task that swallowed its stop so slept and looked
    again for ever: the daemon's exit hung (the model test's restart caught it).
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(seconds, 0.0)):
            await wake.wait()
    wake.clear()


class HookDispatcher(LaneObserver):
    """Delivers each configured hook's committed events in a task of its own."""

    def __init__(
        self,
        ledger: Ledger,
        settings: Callable[[], Settings],
        session: aiohttp.ClientSession,
        metrics: Metrics,
        health: Health,
        output: OutputStore,
    ) -> None:
        self._ledger = ledger
        self._settings = settings
        self._session = session
        self._metrics = metrics
        self._health = health
        self._output_root = output.describe()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._gauges_at = 0.0
        self._running = RunningCommands()

    async def start(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self.stop)
        # What ended a week ago (or never committed) is history: not kept for ever.
        await self._ledger.prune_hook_events(time.time() - _KEPT_S)
        self.apply()
        await self.refresh(force=True)

    def apply(self) -> None:
        """Start a task for each configured hook, stop those of removed ones; their
        secrets are never logged."""
        for hook in self._settings().hooks:
            try:
                secret = hook.read_secret()
            except ValueError:  # gone since the config was loaded: each send says so
                continue
            if secret is not None:
                register_secret(secret.get_secret_value())
        hooks = {hook.name for hook in self._settings().hooks}
        for name in set(self._tasks) - hooks:
            self._tasks.pop(name).cancel()
            self._wake.pop(name, None)
        for name in hooks - set(self._tasks):
            self._wake[name] = asyncio.Event()
            self._tasks[name] = asyncio.create_task(self._serve(name), name=f"hook-{name}")
        self.wake()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._running.kill_all()  # else the exit waits up to a command's timeout
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    def export_ended(self, event: ExportEnded) -> None:
        if event.ok:
            self.wake()

    def answered(self, workspace: str, code: int) -> None:
        pass

    async def settle(self, timeout_s: float) -> int:
        """Deliver what was committed (``run --once``), retries included, for at most
        ``timeout_s``, or until a signal stops the process; how many events are still
        pending (they wait in the ledger for the next run)."""
        deadline = time.monotonic() + timeout_s
        self.wake()
        while True:
            pending = sum(b.pending for b in (await self._backlogs()).values())
            if not pending or time.monotonic() >= deadline or self._health.stopping:
                return pending
            await asyncio.sleep(0.05)

    async def _backlogs(self) -> dict[str, HookBacklog]:
        configured = {hook.name for hook in self._settings().hooks}
        backlogs = await self._ledger.hook_backlogs(time.time())
        return {name: backlog for name, backlog in backlogs.items() if name in configured}

    def _hook(self, name: str) -> HookSettings | None:
        return next((hook for hook in self._settings().hooks if hook.name == name), None)

    async def _serve(self, name: str) -> None:
        while (hook := self._hook(name)) is not None:
            try:
                head = await self._ledger.next_delivery(name)
                now = time.time()
                if head is None or head.next_at > now:
                    wait = _IDLE_LOOK_S if head is None else min(head.next_at - now, _IDLE_LOOK_S)
                    await self._sleep(name, wait)
                    continue
                await self._attempt(hook, head)
                await self.refresh()
            except Exception as exc:
                # Nobody expected it (the ledger failing says so to the exports too):
                # said, and the hook tries again later rather than stopping for good.
                log.exception("hook_dispatch_failed", hook=name, kind=type(exc).__name__)
                await self._sleep(name, _IDLE_LOOK_S)

    async def _sleep(self, name: str, seconds: float) -> None:
        await woken_within(self._wake[name], seconds)

    async def _attempt(self, hook: HookSettings, head: Delivery) -> None:
        event = json.loads(head.body)
        event["manifest"] = f"{event.get('url')}.manifest.json"
        # The file's own: the config may have changed format since it was committed.
        named = OutputFormat.of_name(str(event.get("url")))
        event["format"] = (named or OutputFormat.NDJSON).value
        attempt = await self._send(hook, event)
        # Tried once at least: a daemon stopped for longer than max_age still tells a
        # receiver that is up what it committed before the stop.
        too_old = time.time() - head.committed_at > hook.max_age.total_seconds()
        if attempt.delivered:
            await self._ledger.delivered(hook.name, head.seq)
            self._ended(hook, event, "delivered")
        elif attempt.final:
            await self._ledger.delivery_failed(hook.name, head.seq, attempt.detail)
            self._ended(hook, event, "failed", attempt.detail)
        elif too_old:
            why = (
                f"not delivered within max_age ({hook.max_age}) in {head.attempts + 1} "
                f"attempts; the last: {attempt.detail}"
            )
            await self._ledger.delivery_failed(hook.name, head.seq, why)
            self._ended(hook, event, "failed", why)
        else:
            http = self._settings().http
            backoff = min(
                http.retry_max.total_seconds(),
                http.retry_initial.total_seconds() * 2 ** min(head.attempts, 30),
            )
            delay = max(backoff, attempt.retry_after_s or 0.0)
            await self._ledger.retry_delivery(
                hook.name, head.seq, time.time() + delay, attempt.detail
            )
            self._ended(hook, event, "retried", attempt.detail, retry_in_s=round(delay, 3))

    async def _send(self, hook: HookSettings, event: dict[str, Any]) -> Attempt:
        body = json.dumps(event, separators=(",", ":")).encode()
        timeout_s = hook.timeout.total_seconds()
        if hook.command is not None:
            return await run_command(hook, body, event, self._hidden_variables(), self._running)
        if hook.url is not None:
            headers = {"X-Acexport-Event": str(event["id"])}
            try:
                secret = hook.read_secret()  # re-read: it may have been rotated
            except ValueError as exc:  # gone since the start: retried, and said
                return Attempt.failed(str(exc))
            if secret is not None:
                headers["X-Acexport-Signature"] = signature(secret, body)
            return await post(self._session, hook.url, body, timeout_s, headers)
        assert hook.openlineage is not None
        lineage = lineage_event(event, self._output_root).encode()
        url = hook.openlineage.rstrip("/") + "/api/v1/lineage"
        return await post(self._session, url, lineage, timeout_s, {})

    def _hidden_variables(self) -> frozenset[str]:
        """Environment variables that hold tokens: a hook's program never sees them."""
        settings = self._settings()
        return frozenset(ws.token_env for ws in settings.workspaces.values() if ws.token_env)

    def _ended(
        self,
        hook: HookSettings,
        event: dict[str, Any],
        outcome: str,
        error: str = "",
        **extra: Any,
    ) -> None:
        self._metrics.hook_deliveries.labels(hook.name, outcome).inc()
        fields = {"hook": hook.name, "id": event.get("id"), "job": event.get("job"), **extra}
        if outcome == "delivered":
            log.info("hook_delivered", **fields)
        elif outcome == "retried":
            log.warning("hook_retried", error=error, **fields)
        else:
            log.error("hook_failed", error=error, **fields)

    async def refresh(self, force: bool = False) -> dict[str, HookBacklog]:
        """The hooks' gauges and health, at most every few seconds unless forced."""
        now = time.time()
        if not force and now - self._gauges_at < _GAUGES_EVERY_S:
            return {}
        self._gauges_at = now
        hooks = self._settings().hooks
        found = await self._ledger.hook_backlogs(counted_since(hooks, now))
        backlogs = {hook.name: found.get(hook.name, HookBacklog()) for hook in hooks}
        for hook in hooks:
            backlog = backlogs[hook.name]
            self._metrics.hook_pending.labels(hook.name).set(backlog.pending)
            oldest = backlog.oldest_pending_at
            self._metrics.hook_oldest_pending.labels(hook.name).set(
                0.0 if oldest is None else max(0.0, now - oldest)
            )
            if backlog.failed:
                self._health.degraded[f"hook {hook.name}"] = (
                    f"{backlog.failed} event(s) failed; last: {backlog.last_error}"
                )
            else:
                self._health.degraded.pop(f"hook {hook.name}", None)
        return backlogs
