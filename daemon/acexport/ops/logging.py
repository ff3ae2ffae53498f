"""Logging: structlog, readable on a terminal, JSON lines otherwise, secrets redacted.

Every secret the process learns (tokens) is registered with ``register_secret``
and replaced in every rendered value, exception text included, by the last
processor before rendering, so no code path can log a token by accident.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

from ..errors import printable
from .console import ConsoleRenderer

REDACTED = "[REDACTED]"
_secrets: set[str] = set()
_shortest = 0
# The first ``_shortest`` characters of every secret: a text holds a secret only if
# one of its substrings of that length is in here.
_heads: frozenset[str] = frozenset()


def register_secret(value: str) -> None:
    """Never print ``value``; short values are ignored (they would redact everything)."""
    register_secrets([value])


def register_secrets(values: Iterable[str]) -> None:
    """``register_secret`` for many at once: the lookup tables are rebuilt once (one at
    a time they were rebuilt for each: a thousand workspaces' tokens took 0.09 s at
    start, three thousand a second)."""
    global _shortest, _heads
    new = {value for value in values if len(value) >= 4} - _secrets
    if not new:
        return
    _secrets.update(new)
    _shortest = min(map(len, _secrets))
    # Replaced whole, never changed in place: another thread may be redacting with it.
    _heads = frozenset(secret[:_shortest] for secret in _secrets)
    _redact_cached.cache_clear()


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    # With a thousand workspaces, scanning every logged value for every token was
    # the daemon's largest single cost: skip what is too short to hold one, and
    # remember the short values that recur (names, types, dates).
    if len(text) < _shortest:
        return text
    if len(text) <= 256:
        return _redact_cached(text)
    return _redact_uncached(text)


def _redact_uncached(text: str) -> str:
    # One pass over the text's substrings of the shortest secret's length, looked up
    # in a set, instead of one scan of the text per secret (a thousand tokens made
    # that 40 us a value); the full scan runs only when a secret's head is there.
    width = _shortest
    if _heads.isdisjoint([text[i : i + width] for i in range(len(text) - width + 1)]):
        return text
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


_redact_cached = functools.lru_cache(maxsize=8192)(_redact_uncached)

_MAX_REMOTE_TEXT = 500


def remote_text(text: str) -> str:
    """Text a server chose (an error body, a reason), fit to store or serve: redacted,
    its control characters escaped (no terminal rewritten through ``status``), capped.

    Redaction runs before the cut, so a token straddling the cut cannot leak half of it.
    """
    text = printable(redact(text))
    return text if len(text) <= _MAX_REMOTE_TEXT else text[: _MAX_REMOTE_TEXT - 1] + "…"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


# Values that cannot hold a secret: most of a line's (counts, sizes, durations).
_PLAIN = frozenset({int, float, bool, type(None)})


def _redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    # A third of a line's cost was this (bench/instructions.py): numbers skip it, and
    # a text too short to hold the shortest secret is left as it is.
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            if len(value) >= _shortest:
                event[key] = redact(value)
        elif kind not in _PLAIN:
            event[key] = _redact_value(value)
    return event


class DroppedLines:
    """Log lines that could not be written: a log nobody reads any more (the pipe to
    a killed ``tee``, a log file on a full disk) drops them and the exports go on.
    Written, each failure reached the code that logged, and each lane's task died of
    the first one (a ``run --once`` never ended)."""

    count = 0

    @classmethod
    def drop(cls) -> None:
        cls.count += 1


class _LineWriter:
    """structlog's ``WriteLogger``: one write and a flush a line, under the stream's
    lock; a line the stream refuses is dropped (``DroppedLines``)."""

    def __init__(self, stream: TextIO) -> None:
        self._write = stream.write
        self._flush = stream.flush
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            try:
                self._write(message + "\n")
                self._flush()
            except (OSError, ValueError):  # ValueError: the stream was closed
                DroppedLines.drop()

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The standard library's records on the same stream, dropped the same way (its
    own handling printed a traceback, to the stream that had just failed)."""

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], (OSError, ValueError)):
            DroppedLines.drop()
        else:
            super().handleError(record)


def configure_logging(
    log_format: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Set up structlog (and route the standard library's logging through it)."""
    stream = stream or sys.stderr
    writer = _LineWriter(stream)
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    renderer: Any = (
        ConsoleRenderer(terminal=stream.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # to text first, so it can be redacted
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (print() made two: the line, then its newline), each a
        # turn at the GIL for the loop's thread.
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )
    handler = _LineHandler(stream)
    # Records from aiohttp, asyncio and other libraries take the same road: their
    # traceback becomes text, is redacted, and is rendered like our own lines.
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact_processor,
                renderer,
            ],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelName(level.upper()), logging.INFO))
