"""The status page at ``/`` on the health port: read-only, server-rendered, no JavaScript.

It draws the view of statusview.py: every job as a grid of its due windows by
type (done, failed with the reason, in flight with its age, missing, before AC's
retention), the lanes, and the last failures. It refreshes itself every 30 s.
Every text that may come from a server or a config is escaped, and reasons were
redacted before they reached the ledger.

A job's grid shows its last ``MAX_COLUMNS`` windows, with the earlier ones
summarised by state (60 hourly jobs with a 7-day catch-up made a 4.9 MB page).
``StatusPage`` renders in a worker thread, at most once per ``CACHE_S``: a page
fetched in a loop must not stall the event loop that polls AC and pings the
watchdog.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import NamedTuple

from .. import __version__
from ..config import Settings
from ..ledger import ExportRecord, HookBacklog
from .statusview import Cell, JobView, LaneView, SnapshotView, StatusView, build_view

_REFRESH_S = 30
MAX_COLUMNS = 24  # windows shown per job; earlier ones are summarised
CACHE_S = 5.0


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; white-space: nowrap; }
td.cell { width: 1.6em; height: 1.2em; padding: 0; text-align: center; font: bold 11px
  ui-monospace, monospace; color: #fff; }
.done { background: #3a3; } .failed { background: #d33; }
.missing { background: #eee; color: #777 !important; }
.queued { background: #7aa7d8; } .submitted, .ready { background: #e9b32a; }
.banner { background: #fdd; border: 2px solid #d33; padding: 0.6em 1em; }
.retrying { background: repeating-linear-gradient(45deg, #d33 0 3px, #e9b32a 3px 6px); }
.grid th { padding: 2px 3px; font-size: 11px; }
.legend span { color: #fff; text-shadow: 0 0 2px #000; }
.legend .missing { text-shadow: none; }
.beyond_retention { background: repeating-linear-gradient(45deg, #bbb 0 3px, #eee 3px 6px); }
.legend span { display: inline-block; padding: 2px 8px; margin-right: 6px; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


# A letter per state, in each cell: the grid reads without telling colours apart.
LETTERS = {
    "done": "D",
    "failed": "F",
    "retrying": "R",
    "queued": "Q",
    "submitted": "A",  # at AC
    "ready": "A",
    "missing": "·",
    "beyond_retention": "B",
}
_LEGEND = (
    ("done", "done"),
    ("failed", "failed"),
    ("retrying", "retrying after failing"),
    ("queued", "queued"),
    ("submitted", "at AC or downloading"),
    ("missing", "missing"),
    ("beyond_retention", "before AC's retention"),
)


def _cell_html(cell: Cell) -> str:
    return (
        f"<td class='cell {_e(cell.state)}' data-state='{_e(cell.state)}' "
        f"title='{_e(cell.detail or cell.state)}'>{LETTERS.get(cell.state, '?')}</td>"
    )


def _heading(start: str, sub_day: bool) -> str:
    """A column's label: the day (``11-29``), or for sub-day windows the hour, with
    the day where it changes (``11-29 14h``, then ``13h``; a window starting off the
    hour shows its minutes: ``13:30``)."""
    if not sub_day:
        return start[5:10]
    return f"{start[11:13]}h" if start[14:16] == "00" else start[11:16]


def _job_section(job: JobView, expired: int = 0) -> str:
    # Newest first: the windows an operator looks for are never the ones cut off.
    newest_first = list(range(len(job.windows)))[::-1]
    shown, older = newest_first[:MAX_COLUMNS], newest_first[MAX_COLUMNS:]
    head = []
    for position, index in enumerate(shown):
        start = job.windows[index]
        label = _heading(start, job.sub_day)
        new_day = position == 0 or start[:10] != job.windows[shown[position - 1]][:10]
        if job.sub_day and new_day:
            label = f"{start[5:10]} {label}"
        head.append(f"<th title='{_e(start)}'>{_e(label)}</th>")
    body = []
    earlier: Counter[str] = Counter()
    for type_, cells in job.rows.items():
        earlier.update(cells[index].state for index in older)
        tds = "".join(_cell_html(cells[index]) for index in shown)
        body.append(f"<tr><th>{_e(type_)}</th>{tds}</tr>")
    summary = ""
    if older:
        counts = ", ".join(f"{count} {state}" for state, count in sorted(earlier.items()))
        verdict = f"all {next(iter(earlier))}" if len(earlier) == 1 else counts
        summary = (
            f"<p class='earlier' data-windows='{len(older)}'>and {len(older)} older windows "
            f"(x {len(job.rows)} types): {_e(verdict)}</p>"
        )
    if expired:  # not missing, not failed: deleted by the job's keep, on purpose
        summary += f"<p class='expired'>{expired} older window files expired (keep)</p>"
    grid = (
        f"<table class='grid'><tr><th>type</th>{''.join(head)}</tr>{''.join(body)}</table>"
        if job.rows
        else ""
    )
    return (
        f"<h3 class='job' data-job='{_e(job.name)}'>{_e(job.name)} "
        f"<small>({_e(job.workspace)}, {_e(job.schedule)})</small></h3>{summary}"
        f"{grid}{_snapshot_table(job.snapshots)}"
    )


def _snapshot_table(snapshots: list[SnapshotView]) -> str:
    if not snapshots:
        return ""
    rows = "".join(
        f"<tr data-type='{_e(s.type)}'><th>{_e(s.type)}</th>"
        f"<td class='newest'>{_e(s.newest or 'none yet')}</td>"
        + (_cell_html(s.current) if s.current else f"<td class='next'>{_e(s.next_look)}</td>")
        + "</tr>"
        for s in snapshots
    )
    return (
        "<table class='snapshots'><tr><th>snapshot of</th><th>newest, as of</th>"
        f"<th>next</th></tr>{rows}</table>"
    )


def render(view: StatusView) -> str:
    """The whole page, as HTML."""
    jobs = "".join(_job_section(job, view.expired.get(job.name, 0)) for job in view.jobs)
    jobs = jobs or "<p>No jobs configured.</p>"
    lanes = (
        "".join(
            f"<tr><td>{_e(lane.key)}</td><td>{lane.queued}</td><td>{lane.in_flight}</td></tr>"
            for lane in view.lanes
        )
        or "<tr><td colspan='3'>none</td></tr>"
    )
    failures = (
        "".join(
            f"<tr><td>{_e(job)}</td><td>{_e(type_)}</td><td>{_e(window)}</td>"
            f"<td class='reason'>{_e(reason)}</td></tr>"
            for job, type_, window, reason in view.failures
        )
        or "<tr><td colspan='4'>none</td></tr>"
    )
    legend = "".join(
        f"<span class='{state}'>{LETTERS[state]} {label}</span>" for state, label in _LEGEND
    )
    said = "degraded" if all(k.startswith("hook ") for k in view.problems) else "failing"
    banner = (
        f"<div class='banner' id='problems'><strong>/healthz says {said}:</strong><ul>"
        + "".join(f"<li>{_e(lane)}: {_e(why)}</li>" for lane, why in view.problems.items())
        + "</ul></div>"
        if view.problems
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{_REFRESH_S}">
<title>acexport status</title><style>{_STYLE}</style></head>
<body>
<h1>acexport status</h1>
{banner}
<p>acexport {_e(__version__)}, as of {_e(view.generated_at.isoformat(timespec="seconds"))};
refreshes every {_REFRESH_S} s. <a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a></p>
<p class="legend">{legend}</p>
<h2>Jobs</h2>{jobs}
<h2>Lanes</h2>
<table id="lanes"><tr><th>lane</th><th>queued</th><th>in flight</th></tr>{lanes}</table>
<h2>Last failures</h2>
<table id="failures"><tr><th>job</th><th>type</th><th>window</th><th>reason</th></tr>
{failures}</table>
{_hooks_table(view)}
</body></html>
"""


def _hooks_table(view: StatusView) -> str:
    """Each hook's queue (none configured: no table)."""
    if not view.hooks:
        return ""
    now = view.generated_at.timestamp()
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{b.pending}</td>"
        f"<td>{'' if b.oldest_pending_at is None else f'{now - b.oldest_pending_at:.0f} s'}</td>"
        f"<td>{b.delivered}</td><td>{b.failed}</td><td class='reason'>{_e(b.last_error or '')}</td>"
        "</tr>"
        for name, b in view.hooks.items()
    )
    return (
        "<h2>Hooks</h2><table id='hooks'><tr><th>hook</th><th>pending</th><th>oldest pending"
        f"</th><th>delivered</th><th>failed</th><th>last error</th></tr>{rows}</table>"
    )


class PageInput(NamedTuple):
    """What the page is built from, read at one moment on the event loop."""

    settings: Settings
    rows: list[ExportRecord]
    lanes: list[LaneView]
    now: datetime
    problems: dict[str, str]
    hooks: dict[str, HookBacklog]
    expired: dict[str, int]


class StatusPage:
    """The page as served: read from the ledger on the loop, built and rendered in a
    worker thread, at most once per ``CACHE_S`` however often it is fetched, and anew
    as soon as ``version`` (the ledger's count of changes) moves: a failure must not
    wait 5 s to show, whichever path recorded it (/healthz says it at once)."""

    def __init__(
        self,
        read: Callable[[], Awaitable[PageInput]],
        clock: Callable[[], float] = time.monotonic,
        version: Callable[[], object] = lambda: None,
    ) -> None:
        self._read = read
        self._clock = clock
        self._version = version
        self._lock = asyncio.Lock()
        self._page: tuple[float, object, str] | None = None

    async def html(self) -> str:
        async with self._lock:  # concurrent fetches share one rendering
            version = self._version()
            if self._page is not None:
                rendered_at, rendered_version, page = self._page
                if rendered_version == version and self._clock() - rendered_at < CACHE_S:
                    return page
            read = await self._read()
            page = await asyncio.to_thread(lambda: render(build_view(*read)))
            self._page = (self._clock(), version, page)
            return page
