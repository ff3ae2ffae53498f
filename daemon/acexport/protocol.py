"""AC's export vocabulary: the export types, and what a status answer looks like.

AC answers a request that has no data yet with a small JSON object
(``createdDate``, ``fromDate``, ``toDate``, ``status``, ``message``, ``type``,
``startedDate``). A record can carry a ``status`` too (a membership is ACTIVE
or INACTIVE), so an object is judged by its shape: only status keys, and a
status value AC uses for exports.
"""

from __future__ import annotations

import enum
from typing import Any


class ExportType(enum.StrEnum):
    """The export types AC offers (case-sensitive; older docs list only four)."""

    EVENT = "event"
    IDENTITY = "identity"
    INDIVIDUAL = "individual"
    MEMBERSHIP = "membership"
    PAGE = "page"
    SEGMENT = "segment"


STATUS_KEYS = frozenset(
    {"createdDate", "fromDate", "toDate", "status", "message", "type", "startedDate"}
)
# What AC (and, defensively, similar services) call an export's state.
EXPORT_STATES = frozenset({"PENDING", "RUNNING", "ERROR", "FAILED", "READY", "COMPLETED"})


def is_status_shaped(value: Any) -> bool:
    """True if ``value`` looks like AC's status answer rather than a record."""
    if not isinstance(value, dict) or not isinstance(value.get("status"), str):
        return False
    keys = set(value)
    # A status carries a message or createdDate, and nothing a record has.
    if not keys & {"createdDate", "message"}:
        return False
    return keys <= STATUS_KEYS or (
        value["status"].upper() in EXPORT_STATES
        and not (keys & {"id", "segmentId", "individualId"})
    )
