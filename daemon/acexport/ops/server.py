"""The health port, guarded: it must never starve exports of file descriptors.

/healthz and /metrics answer in milliseconds, so a connection that stays
silent for ``idle_s`` or lives longer than ``lifetime_s`` is closed, and at most
``max_connections`` are open at once: when full, the least recently active one
makes room (so a health check still gets through a flood of idle sockets).
The cap is a small share of the process's file descriptors. When the process
runs out of them anyway, asyncio's "socket.accept() out of system resource"
is logged at most once a minute instead of in a tight loop.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..errors import ConfigError, TemporaryFailure
from .health import Health
from .metrics import Metrics

log = structlog.get_logger("acexport.health")

_ACCEPT_FAILED = "socket.accept() out of system resource"


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(fd_limit: int) -> int:
    """At most an eighth of the descriptors (and 64) for health connections."""
    return max(4, min(64, fd_limit // 8))


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, with its activity watched."""

    def __init__(self, owner: GuardedFactory, inner: Any) -> None:
        self._owner = owner
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        self.opened = self.active = owner.clock()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._owner.admit(self)
        self._inner.connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.active = self._owner.clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self._inner.eof_received()
        return result

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._owner.release(self)
        self._inner.connection_lost(exc)

    def _arm(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._owner.idle_s, self._check)

    def _check(self) -> None:
        now = self._owner.clock()
        idle = now - self.active >= self._owner.idle_s
        if idle or now - self.opened >= self._owner.lifetime_s:
            self.close()
        else:
            self._arm()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


class GuardedFactory:
    """Wraps aiohttp's protocol factory with a connection cap and timeouts."""

    def __init__(
        self,
        factory: Callable[[], Any],
        max_connections: int,
        idle_s: float = 10.0,
        lifetime_s: float = 60.0,
    ) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.lifetime_s = lifetime_s
        self.clock = asyncio.get_running_loop().time
        self._open: set[_Guarded] = set()

    def __call__(self) -> _Guarded:
        return _Guarded(self, self._factory())

    def admit(self, connection: _Guarded) -> None:
        if len(self._open) >= self.max_connections:
            stalest = min(self._open, key=lambda c: c.active)
            self._open.discard(stalest)
            stalest.close()
        self._open.add(connection)

    def release(self, connection: _Guarded) -> None:
        self._open.discard(connection)


def throttle_accept_errors(loop: asyncio.AbstractEventLoop, interval_s: float = 60.0) -> None:
    """Log running out of descriptors on accept at most once per ``interval_s``."""
    previous = loop.get_exception_handler()
    last = -interval_s
    suppressed = 0

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal last, suppressed
        if _ACCEPT_FAILED not in str(context.get("message", "")):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = loop.time()
        if now - last < interval_s:
            suppressed += 1
            return
        log.error(
            "health_accept_failed",
            error=str(context.get("exception")),
            detail="out of file descriptors; new health connections wait",
            suppressed=suppressed,
        )
        last, suppressed = now, 0

    loop.set_exception_handler(handler)


class _ClientErrorsQuiet(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, but a malformed request (the peer's fault, e.g. one
    over-long header line) is a debug line without its bytes, not an ERROR with a
    traceback echoing them: 500 such requests wrote 393 KB of errors."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            log.debug("health_bad_request", error=type(exc_info).__name__, status=exc_info.code)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class HealthServer:
    """/healthz and /metrics on ``listen`` (HOST:PORT), behind the guard."""

    def __init__(
        self,
        health: Health,
        metrics: Metrics,
        listen: str,
        status_page: Callable[[], Awaitable[str]] | None = None,
        refresh_metrics: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._app = health_app(health, metrics, status_page, refresh_metrics)
        self._listen = listen

    async def start(self, stack: AsyncExitStack) -> str:
        """Listen; register the shutdown on ``stack``; return the base URL."""
        host, _, port = self._listen.rpartition(":")
        host = host.strip("[]")
        runner = web.AppRunner(
            self._app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=5.0,
            logger=_ClientErrorsQuiet(logging.getLogger("aiohttp.server"), {}),
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        assert runner.server is not None
        cap = connection_cap(raise_fd_limit())
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                GuardedFactory(runner.server, cap), host, int(port), backlog=128
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                # Most often the previous instance, still stopping: a restart soon works.
                raise TemporaryFailure(
                    f"daemon.listen: {self._listen} is in use by another process "
                    "(exit 75: try again later)"
                ) from None
            raise ConfigError(
                f"daemon.listen: cannot listen on {self._listen}: {exc.strerror}"
            ) from None
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        throttle_accept_errors(loop)
        bound = server.sockets[0].getsockname()[1]
        url = f"http://{host if ':' not in host else f'[{host}]'}:{bound}"
        log.info("health_server_started", url=url, max_connections=cap)
        return url


def health_app(
    health: Health,
    metrics: Metrics,
    status_page: Callable[[], Awaitable[str]] | None = None,
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
) -> web.Application:
    """``refresh_metrics`` brings the ledger-derived figures (windows by state) up to
    the moment of the scrape, so they never disagree with /healthz or the page."""

    async def healthz(_: web.Request) -> web.Response:
        status, body = health.report()
        return web.json_response(body, status=status)

    async def metrics_route(_: web.Request) -> web.Response:
        if refresh_metrics is not None:
            await refresh_metrics()
        return web.Response(
            body=metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def status_route(_: web.Request) -> web.Response:
        assert status_page is not None
        return web.Response(text=await status_page(), content_type="text/html")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_route)
    if status_page is not None:
        app.router.add_get("/", status_route)
    return app
