"""AC's export vocabulary: the export types, what a status answer looks like, and
how long a Retry-After asks to wait.

AC answers a request that has no data yet with a small JSON object
(``createdDate``, ``fromDate``, ``toDate``, ``status``, ``message``, ``type``,
``startedDate``). A record can carry a ``status`` too (a membership is ACTIVE
or INACTIVE), so an object is judged by its keys: a ``status`` and nothing a
status does not have. Its value does not decide: a status AC has not used yet
is still a status (an unknown one, retried), never a one-record export.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any


class ExportType(enum.StrEnum):
    """The export types AC offers (case-sensitive; older docs list only four)."""

    EVENT = "event"
    IDENTITY = "identity"
    INDIVIDUAL = "individual"
    MEMBERSHIP = "membership"
    PAGE = "page"
    SEGMENT = "segment"


class ExportMode(enum.StrEnum):
    """How a type is exported, by what it is (design sections 1.1 and 2).

    AC filters every export on one column: ``eventDate`` for event and page (time
    series: each row belongs to one moment), ``createDate`` for the entity tables.
    A window of an entity table holds the entities *created* in it, in their state
    at export time, and no later change ever reaches it: so entity tables are
    exported whole, as snapshots.
    """

    WINDOWS = "windows"  # one aligned window of a time series per export
    SNAPSHOT = "snapshot"  # the whole table as of the look, from snapshot_from


TIME_SERIES = frozenset({ExportType.EVENT, ExportType.PAGE})
# The column AC filters each time series by (design section 1.1; page's is truncated to
# the hour): what places a record in a window when a request is split locally.
FILTER_COLUMNS = {ExportType.EVENT.value: "eventDate", ExportType.PAGE.value: "eventDate"}


def default_mode(type_: str) -> ExportMode:
    return ExportMode.WINDOWS if type_ in TIME_SERIES else ExportMode.SNAPSHOT


STATUS_KEYS = frozenset(
    {"createdDate", "fromDate", "toDate", "status", "message", "type", "startedDate"}
)
# What AC (and, defensively, similar services) call an export's state.
EXPORT_STATES = frozenset({"PENDING", "RUNNING", "ERROR", "FAILED", "READY", "COMPLETED"})


def is_status_shaped(value: Any) -> bool:
    """True if ``value`` looks like AC's status answer rather than a record."""
    if not isinstance(value, dict) or "status" not in value:
        return False
    keys = set(value)
    if keys <= STATUS_KEYS:
        return True
    # Defensively, a known export state with a status's fields and a few extra keys
    # (a similar service's export id), as long as it has none a record has.
    return (
        isinstance(value["status"], str)
        and value["status"].upper() in EXPORT_STATES
        and bool(keys & {"createdDate", "message"})
        and not keys & {"id", "segmentId", "individualId", "identityId"}
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (a number, or an HTTP date), never negative; None if
    absent or unreadable. AC's answers and hook receivers' are read alike."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
