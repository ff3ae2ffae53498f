"""The error hierarchy: each class says who must act, and is handled in one place.

- ``ConfigError``: the operator must fix the configuration (exit 78).
- ``TemporaryFailure``: busy now, worth starting again later (exit 75).
- ``AuthError``: a human must renew a token; retrying in a loop cannot help.
- ``RemoteRejected``: AC refused the request itself (400/404): a bug or bad input;
  ``BeyondRetention`` when the range starts before the workspace's data retention
  (the window is final, never retried).
- ``ExportFailed``: AC reported the export failed (status ``ERROR``) too many times in a row.
- ``TransientError``: worth retrying with backoff; ``RateLimited`` says when,
  ``ServerError`` is a 5xx (from AC itself, a bad token may be behind it).
- ``PayloadTooLarge``: the payload passed a configured cap; nothing is kept.
- ``SinkError``: the local disk refused (full, read-only); nothing half-written is left.
- ``StoreUnavailable``: the output store (S3) is down, slow or busy; the commit is
  retried from the local temp file, AC is not asked again.
- ``StoreRejected``: the output store refused for a reason retrying cannot fix
  (access denied, no such bucket): the operator must fix the config.
- ``StateError``: the ledger cannot be written; the daemon stops rather than guess.
"""

from __future__ import annotations


class AcexportError(Exception):
    """Base of every error acexport raises on purpose."""


class ConfigError(AcexportError):
    """The configuration (file, environment or flags) is invalid."""


class TemporaryFailure(AcexportError):
    """A resource the process needs is busy now (the listen port in use during a
    restart): exit 75, EX_TEMPFAIL, so a supervisor tries again."""


class AuthError(AcexportError):
    """The token is missing, wrong, expired or lacks rights (401/403, or only 500s)."""


class RemoteRejected(AcexportError):
    """AC rejected the request (400, 404, other 4xx); retrying the same request cannot help."""


class BeyondRetention(RemoteRejected):
    """AC refused a range that starts before the workspace's data retention: final."""

    def __init__(self, message: str, months: int | None) -> None:
        super().__init__(message)
        self.months = months  # as AC's message names it


class ExportFailed(AcexportError):
    """AC kept failing to create this export (status ERROR, too many times in a row)."""


class TransientError(AcexportError):
    """A failure that may pass: 5xx, timeouts, cut connections, proxy pages, bad bodies."""


class Unreachable(TransientError):
    """No connection could be made (refused, no such host): retried by the daemon, but a
    one-off export that never reached AC fails at once (a typo, a wrong port)."""


class RateLimited(TransientError):
    """AC asked us to slow down (429/503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ServerError(TransientError):
    """A 5xx answer; ``from_ac`` when AC's own origin gave it (not a storage host)."""

    def __init__(self, message: str, status: int, from_ac: bool) -> None:
        super().__init__(message)
        self.status = status
        self.from_ac = from_ac


class PayloadError(TransientError):
    """The downloaded data is cut short or not valid JSON/NDJSON/ZIP."""


class PayloadTooLarge(AcexportError):
    """The payload passed http.max_payload or inflated beyond http.max_inflate_ratio.

    Not transient: downloading it again would only do the same.
    """


class RestatementShrank(AcexportError):
    """A restatement (or re-export) served far fewer records than the revision it would
    replace: the previous revision is kept, and the operator told. Not transient."""

    def __init__(self, message: str, previous: int, served: int) -> None:
        super().__init__(message)
        self.previous = previous
        self.served = served


class ConversionError(AcexportError):
    """Converting the downloaded records to the output format failed (the engine ran out
    of memory even in small row groups, or another of its errors): acexport's side, not
    AC's; the export fails visibly and is tried again at the next look."""


class StateError(AcexportError):
    """The state database cannot be read or written (disk full, corrupt, permissions)."""


class SinkError(AcexportError):
    """Writing the data locally failed (disk full, permissions); the temp file is gone."""


class StoreUnavailable(AcexportError):
    """The output store did not take the data now (down, 5xx, SlowDown, timeout)."""


class StoreRejected(AcexportError):
    """The output store refused (403, no such bucket, bad credentials): a config problem."""


# C0 controls, DEL and C1 controls, shown as \xNN: remote text (a status message, an
# error page) must not move the cursor, clear lines or retitle the operator's terminal.
_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """Text a server chose, made safe to store, log and print on a terminal."""
    return text.translate(_CONTROLS)
