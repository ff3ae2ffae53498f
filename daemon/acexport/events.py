"""What lanes tell the rest of the daemon: events, and the observers that take them.

A lane does its work and publishes what happened; metrics, health, a command's
progress display (and, later, a status page) each observe. The lane never
reaches into any of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportEnded:
    """An export finished (``ok``) or failed, with why (``reason``, redacted)."""

    lane: str
    workspace: str
    type: str
    job: str
    ok: bool
    reason: str | None = None
    token_rejected: bool = False  # the lane's token is bad: no retry can help
    store_rejected: bool = False  # the output store refused (access, bucket): fix the config
    payload_bytes: int = 0
    requests: int = 0
    processing_s: float | None = None  # AC's time from submission to ready data
    download_s: float | None = None  # from ready data to the committed file
    new_columns: tuple[str, ...] = ()  # Parquet: served columns AC's table lacked
    unparsed_values: int = 0  # Parquet: values kept in _unparsed
    # The AC export this window came from ends here: 1, or the number of windows of a
    # coalesced request (on its first window; 0 on the others).
    windows_served: int = 1
    # A restatement served far fewer records than the file it would replace: that
    # file was kept (ok, and worth an operator's look).
    restatement_kept: bool = False


class LaneObserver:
    """Takes lanes' events; every method is optional and must not block."""

    def export_ended(self, event: ExportEnded) -> None:
        """An export finished or failed."""

    def answered(self, workspace: str, code: int) -> None:
        """AC (or a host it redirected to) answered with this HTTP status."""


class Observers(LaneObserver):
    """Several observers as one."""

    def __init__(self, *observers: LaneObserver) -> None:
        self._observers = observers

    def export_ended(self, event: ExportEnded) -> None:
        for observer in self._observers:
            observer.export_ended(event)

    def answered(self, workspace: str, code: int) -> None:
        for observer in self._observers:
            observer.answered(workspace, code)


class Tally(LaneObserver):
    """Exports finished and failed so far: what ``run --once`` and ``backfill`` report."""

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = 0

    def export_ended(self, event: ExportEnded) -> None:
        if event.ok:
            self.succeeded += 1
        else:
            self.failed += 1
