"""Which windows of a job are due: complete, aligned, inside the catch-up horizon.

Pure arithmetic on the job's settings and the current time; the state store
then drops the windows already exported. Looking twice changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from .config import JobSettings
from .windows import ExportWindow, aligned_windows


def due_windows(job: JobSettings, zone: ZoneInfo, now: datetime) -> list[ExportWindow]:
    """Windows that ended at least ``lag`` ago and reach into the last ``catch_up``.

    A window that straddles the horizon counts, so ``catch_up = "7d"`` with daily
    windows means the last seven days. Nothing before ``start`` (if set) is due.
    """
    latest_end = now - job.lag
    earliest = now - job.catch_up
    windows = [
        w
        for w in aligned_windows(zone, job.window, earliest - job.window, latest_end)
        if w.end > earliest
    ]
    if job.start is not None:
        start = job.start if job.start.tzinfo else job.start.replace(tzinfo=zone)
        windows = [w for w in windows if w.start >= start]
    return windows
