"""Deflate, inflate and CRC-32 from the fastest library installed, and zstd.

ISA-L (``isal``, Intel's igzip) inflates about 2.3x and deflates at level 1
about 4.5x faster than CPython's zlib here, and is a drop-in; zlib-ng measured
slower than ISA-L on both (bench/README.md). If ``isal`` cannot be imported
(an exotic platform without a wheel), CPython's zlib does the same work.
Both write standard gzip that ``gzip -t`` and DuckDB read.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol, cast

_fast: Any  # isal_zlib or zlib: the same functions
_ERRORS: tuple[type[Exception], ...]
try:
    from isal import isal_zlib

    # (its stub calls IsalError an instance; it is the class)
    _ERRORS = (zlib.error, cast(type[Exception], isal_zlib.IsalError))
    _fast, LIBRARY = isal_zlib, "isal"
except ImportError:  # pragma: no cover - the wheel exists for the platforms we ship
    _fast, LIBRARY, _ERRORS = zlib, "zlib", (zlib.error,)

GZIP_LEVEL = 1  # throughput first: level 1 still shrinks JSON 4-6x
ZSTD_LEVEL = 3  # zstd's default: smaller than gzip -1 by 3x at the same speed here
RAW_DEFLATE = -15  # a ZIP member's deflate stream has no zlib or gzip wrapper
GZIP_WBITS = 31

# A corrupt deflate stream raises one of these, whichever library inflates it.
INFLATE_ERRORS = _ERRORS


class Compressor(Protocol):
    def compress(self, data: Any, /) -> bytes: ...
    def flush(self) -> bytes: ...


class Inflater(Protocol):
    unused_data: bytes
    unconsumed_tail: bytes
    eof: bool

    def decompress(self, data: Any, max_length: int = 0, /) -> bytes: ...


def gzip_compressor() -> Compressor:
    compressor: Compressor = _fast.compressobj(GZIP_LEVEL, _fast.DEFLATED, GZIP_WBITS)
    return compressor


def zstd_compressor() -> Compressor:
    import zstandard

    compressor: Compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    return compressor


class FrameCompressor(Protocol):
    def compress(self, data: Any, /) -> bytes: ...


def zstd_frames() -> FrameCompressor:
    """One zstd context that compresses whole frames: shared by the windows of a split,
    each buffering its lines into frames (concatenated frames are one zstd stream to
    zstd, DuckDB and the zstandard library), instead of a context each held open."""
    import zstandard

    compressor: FrameCompressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return compressor


def raw_inflater() -> Inflater:
    inflater: Inflater = _fast.decompressobj(RAW_DEFLATE)
    return inflater


def crc32(data: Any, value: int = 0) -> int:
    return int(_fast.crc32(data, value))
