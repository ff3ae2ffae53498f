"""The output's vocabulary: an output file's format and how it is compressed.

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


class OutputFormat(enum.StrEnum):
    """What an output file holds (``output.format``)."""

    NDJSON = "ndjson"  # JSON Lines as AC served them (a ZIP inflated), maybe compressed
    PARQUET = "parquet"  # typed columns, one schema per type (payload/parquet.py)

    @classmethod
    def of_name(cls, name: str) -> OutputFormat | None:
        """The format a file name says (``x.parquet``), or None when it says none."""
        return cls.PARQUET if name.endswith(PARQUET_SUFFIX) else None


PARQUET_SUFFIX = ".parquet"
_JSONL_SUFFIX = ".jsonl"


def parquet_template(template: str) -> str:
    """A path template's Parquet form: ``.jsonl`` at its end becomes ``.parquet``."""
    if template.endswith(PARQUET_SUFFIX):
        return template
    if template.endswith(_JSONL_SUFFIX):
        return template[: -len(_JSONL_SUFFIX)] + PARQUET_SUFFIX
    return template + PARQUET_SUFFIX
