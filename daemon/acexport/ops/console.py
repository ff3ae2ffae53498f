"""Log lines for a person at a terminal: one line per result, readable at 80 columns.

A finished or failed export is one short line (time, outcome, workspace, type,
the window in the workspace's zone, size or error); every other event is
structlog's console rendering. Each line first clears the terminal line, so a
progress bar or status line drawn with ``\\r`` is never glued to it (it is
redrawn on its next tick). JSON lines (not a terminal) keep every key/value.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import datetime
from typing import Any

import structlog

CLEAR_LINE = "\r\x1b[K"


def _size(count: Any) -> str:
    if not isinstance(count, int):
        return ""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}".replace(".0 ", " ")
    return f"{count} B"


def _clock(event: MutableMapping[str, Any]) -> str:
    """HH:MM:SS of the event, in this machine's zone (a person reads their own clock)."""
    stamp = event.get("timestamp")
    try:
        moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return "--:--:--"
    return f"{moment.astimezone():%H:%M:%S}"


def result_line(event: MutableMapping[str, Any]) -> str | None:
    """The one-line form of an export's result; None for any other event."""
    name = event.get("event")
    where = f"{event.get('workspace', '?')} {event.get('type', '?')} {event.get('when', '')}"
    if name == "export_done":
        parts = [f"{event.get('records', 0)} rec", _size(event.get("file_bytes"))]
        if isinstance(event.get("seconds"), int | float):
            parts.append(f"{event['seconds']:.1f} s")
        return f"{_clock(event)} done    {where}  {'  '.join(p for p in parts if p)}"
    if name in ("export_failed", "lane_token_rejected"):
        error = str(event.get("error", ""))
        kind = event.get("kind") or ("AuthError" if name == "lane_token_rejected" else "")
        then = (
            "fix the token, then reload"
            if name == "lane_token_rejected"
            else "retried at the next look"
        )
        return f"{_clock(event)} FAILED  {where}  {kind}{': ' if kind else ''}{error} ({then})"
    return None


class ConsoleRenderer:
    """structlog's console renderer, with export results as one short line each."""

    def __init__(self, terminal: bool) -> None:
        self._inner = structlog.dev.ConsoleRenderer(colors=terminal)
        self._clear = CLEAR_LINE if terminal else ""  # escapes only for a real terminal

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
        line = result_line(event)
        return self._clear + (line if line is not None else str(self._inner(logger, method, event)))
