"""What a payload is, from its first bytes (never from a name or a header)."""

from __future__ import annotations

from typing import Literal

BOM = b"\xef\xbb\xbf"
WHITESPACE = b" \t\r\n"
_MAGIC_BYTES = 4  # the longest start told apart: a ZIP's local header or end record
_HEAD_MAX = 4096  # past this much whitespace and BOM, judge what there is

ServedFormat = Literal["zip", "json", "ndjson"]


def start_of(head: bytes) -> bytes:
    """The payload from its first byte that matters: leading whitespace and BOM dropped."""
    return head.lstrip(WHITESPACE).removeprefix(BOM).lstrip(WHITESPACE)


def judged_start(head: bytes) -> bytes | None:
    """``head``'s start once enough of it has arrived to tell what it is, else None."""
    start = start_of(head)
    if len(start) < _MAGIC_BYTES and len(head) < _HEAD_MAX:
        return None
    return start


def format_of(start: bytes) -> ServedFormat | None:
    """What a payload starting with ``start`` is: a ZIP, a JSON array or JSON Lines."""
    if start.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if start.startswith(b"["):
        return "json"
    if start.startswith(b"{"):
        return "ndjson"
    return None
