"""How large a payload may grow: a size cap, and how far compressed bytes may inflate.

Shared vocabulary: settings name the limits, the client checks a Content-Encoding
body against them, the byte pipeline checks ZIP members.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PayloadTooLarge

INFLATE_SLACK_BYTES = 64 * 1024
DEFAULT_INFLATE_RATIO = 200  # a gzip body or ZIP member may expand this many times


@dataclass(frozen=True)
class PayloadLimits:
    """How large a payload may be (decoded bytes), and how far a ZIP may inflate."""

    max_bytes: int = 50 * 1024**3
    max_ratio: int = DEFAULT_INFLATE_RATIO

    def inflated_max(self, compressed_bytes: int) -> int:
        """What ``compressed_bytes`` may inflate to; small inputs get 64 KiB of slack."""
        return self.max_ratio * max(compressed_bytes, INFLATE_SLACK_BYTES)

    def too_inflated(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the payload inflates beyond http.max_payload ({self.max_bytes} bytes) or "
            f"{self.max_ratio} times its size (http.max_inflate_ratio); nothing was kept"
        )
