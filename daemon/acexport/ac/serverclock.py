"""AC's time, from the ``Date`` header of its answers: planning never runs ahead of it.

A local clock ahead of real time would plan windows that have not happened yet
at AC: their exports hold no records, and are recorded done. Every answer from
AC's origin says what time AC has; ``ServerClock`` keeps how far the local
clock is ahead of it, and ``now`` is the earlier of the two (a clock behind AC
only delays planning, which the lag does anyway). A difference of more than
``WARN_AFTER_S`` is logged loudly, once per change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
import structlog

log = structlog.get_logger("acexport.clock")

# The Date header has whole seconds, and the answer took a while to arrive: a local
# clock this little ahead of it is not ahead.
TOLERANCE_S = 5.0
WARN_AFTER_S = 120.0


@functools.lru_cache(maxsize=16)  # whole seconds: most answers share the last one's
def _parse_date(header: str) -> datetime | None:
    try:
        at_ac = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return at_ac if at_ac.tzinfo is not None else at_ac.replace(tzinfo=UTC)


class ServerClock:
    """The local clock, held back to AC's time when it runs ahead."""

    def __init__(self, local: Callable[[], datetime]) -> None:
        self._local = local
        self.ahead_s = 0.0  # how far the local clock is ahead of AC's (negative: behind)
        self._warned_about: float | None = None

    def observe(self, date_header: str | None) -> None:
        """An answer from AC arrived now, with this ``Date``."""
        if not date_header:
            return
        at_ac = _parse_date(date_header)
        if at_ac is None:
            return
        self.ahead_s = (self._local() - at_ac).total_seconds()
        self._warn()

    def _warn(self) -> None:
        off = abs(self.ahead_s) > WARN_AFTER_S
        if not off:
            self._warned_about = None
            return
        if self._warned_about is not None and abs(self.ahead_s - self._warned_about) < 60:
            return
        self._warned_about = self.ahead_s
        log.error(
            "clock_skew",
            local_ahead_of_ac_s=round(self.ahead_s),
            detail="this machine's clock differs from AC's (its Date header); windows are "
            "planned by AC's time, but fix the clock (NTP): schedules fire by the local one",
        )

    def now(self) -> datetime:
        """The local time, or AC's when the local clock is ahead of it."""
        local = self._local()
        if self.ahead_s > TOLERANCE_S:
            return local - timedelta(seconds=self.ahead_s)
        return local


async def ask_ac_the_time(
    session: aiohttp.ClientSession, base_urls: Iterable[str], clock: ServerClock
) -> None:
    """Before the first plan: AC's time, from any answer of each AC (its Date)."""
    for base_url in base_urls:
        try:
            async with session.head(
                base_url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=5)
            ) as answer:
                clock.observe(answer.headers.get("Date"))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.debug("ac_time_not_known", base_url=base_url, error=str(exc))
