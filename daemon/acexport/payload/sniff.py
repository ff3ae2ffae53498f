"""What a payload is, from its first bytes (never from a name or a header)."""

from __future__ import annotations

BOM = b"\xef\xbb\xbf"


WHITESPACE = b" \t\r\n"


def start_of(head: bytes) -> bytes:
    """The payload from its first byte that matters: leading whitespace and BOM dropped."""
    return head.lstrip(WHITESPACE).removeprefix(BOM).lstrip(WHITESPACE)
