"""The output's vocabulary: how an output file is compressed (and, next, its format).

Distinct from what AC *served* (a ZIP, JSON Lines, a JSON array: see
``payload.sniff``). Each name's suffix is defined here once, so the layout, the
command line and the settings agree.
"""

from __future__ import annotations

import enum


class Compression(enum.StrEnum):
    """How an output file is compressed (``output.compression``)."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"

    @property
    def suffix(self) -> str:
        """Appended to a data file's name: ``.gz``, ``.zst``, or nothing."""
        return _COMPRESSION_SUFFIXES[self]

    @classmethod
    def of_name(cls, name: str) -> Compression:
        """The compression a file name's suffix says (``x.jsonl.gz`` is gzip)."""
        for compression, suffix in _COMPRESSION_SUFFIXES.items():
            if suffix and name.endswith(suffix):
                return compression
        return cls.NONE


_COMPRESSION_SUFFIXES = {Compression.NONE: "", Compression.GZIP: ".gz", Compression.ZSTD: ".zst"}
