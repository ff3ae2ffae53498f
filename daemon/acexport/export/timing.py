"""How patiently one export polls and retries, and how long AC's ready data lasts."""

from __future__ import annotations

from dataclasses import dataclass

from ..ac.polling import Backoff, PollPlan
from ..config import HttpSettings

# Ready data older than this share of AC's download window is asked for holding the
# lane's slot: the request must reach AC before the data expires, or it is a new export.
READY_MARGIN = 0.9
# ... and at least this long before it expires: between deciding and the request reaching
# AC lie a busy event loop (a restart resuming hundreds of exports), a connection, and
# the poll that noticed readiness late. The soak's 4 s window left 0.4 s: not enough.
EXPIRY_MARGIN_S = 2.0


def ready_lifetime_s(download_window_s: float) -> float:
    """How long ready data may be asked for without the lane's slot."""
    return max(0.0, min(READY_MARGIN * download_window_s, download_window_s - EXPIRY_MARGIN_S))


@dataclass(frozen=True)
class Timing:
    """How patiently to poll and retry."""

    poll: Backoff  # initial_s and max_s bound the PollPlan
    retry: Backoff
    max_attempts: int = 10  # consecutive failed requests before the export fails
    max_ac_failures: int = 5  # ERROR answers in a row before the export fails
    download_window_s: float = 86400.0  # how long AC keeps ready data
    expected_s: float | None = None  # how long this kind of export took before
    guess_s: float | None = None  # without that, how long similar exports took
    ready_age_s: float | None = None  # the data has been ready this long (a resumed export)
    # AC's createdDate of the export a resumed one continues: its data may be fetched
    # with no status answer to say it again (manifests said null after a restart).
    created_date: str | None = None
    # A one-off export: a first request that cannot connect at all fails at once.
    fail_fast_unreachable: bool = False
    unreachable_s: float = 60.0  # nothing listening this long: the export fails

    @classmethod
    def from_settings(cls, http: HttpSettings) -> Timing:
        return cls(
            poll=Backoff(http.poll_initial.total_seconds(), http.poll_max.total_seconds()),
            retry=Backoff(http.retry_initial.total_seconds(), http.retry_max.total_seconds()),
            max_attempts=http.max_attempts,
            max_ac_failures=http.max_ac_failures,
            download_window_s=http.download_window.total_seconds(),
            unreachable_s=http.unreachable_after.total_seconds(),
        )

    def plan(self) -> PollPlan:
        return PollPlan(self.poll.initial_s, self.poll.max_s, self.expected_s, self.guess_s)
