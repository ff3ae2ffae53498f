"""Checking an output store against its manifests: what ``acexport verify`` runs.

Each manifest names its file's size and SHA-256; a Parquet file must also open
and hold the rows its manifest counts. What a data engineer runs after a
restore, a copy between buckets, or a scare.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import PayloadError
from ..payload.parquet import count_rows
from .manifest import MANIFEST_SUFFIX, read_fields
from .store import OutputStore

Manifests = Callable[[dict[str, Any]], bool]


@dataclass
class Verified:
    """What was checked: files that match, and one line per file that does not."""

    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def _digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256")
    return path.stat().st_size, digest.hexdigest()


def _problem_of(fields: dict[str, Any], path: Path) -> str | None:
    try:
        size, sha256 = _digest(path)
    except OSError as exc:  # a problem of this file, reported with the others
        return f"cannot be read: {exc.strerror or exc}"
    if size != fields.get("file_bytes"):
        return f"has {size} bytes, its manifest says {fields.get('file_bytes')}"
    if sha256 != fields.get("file_sha256"):
        return "has other bytes than its manifest's file_sha256 (same size: changed in place)"
    if fields.get("format") == "parquet":
        try:
            rows = count_rows(path)
        except PayloadError as exc:
            return str(exc)
        if rows != fields.get("rows"):
            return f"holds {rows} rows, its manifest says {fields.get('rows')}"
    return None


async def verify_store(
    store: OutputStore, wanted: Manifests, is_data: Callable[[str], bool] | None = None
) -> Verified:
    """Check every data file whose manifest ``wanted`` accepts (one at a time: a file
    may be large, and S3's are downloaded to check); with ``is_data`` (what the layout
    can produce), a data file without a manifest is a problem too."""
    result = Verified()
    listing = await store.listed_under("")
    if is_data is not None:
        result.problems += [
            f"{store.location(PurePosixPath(name))}: has no manifest (not proven whole)"
            for name in sorted(listing)
            if is_data(name) and name + MANIFEST_SUFFIX not in listing
        ]
    for name in sorted(listing):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        data_key = PurePosixPath(name[: -len(MANIFEST_SUFFIX)])
        fields = read_fields(await store.read_small(PurePosixPath(name)))
        if isinstance(fields, dict) and not wanted(fields):
            continue
        result.checked += 1
        problem = fields if isinstance(fields, str) else None
        if problem is None:
            assert isinstance(fields, dict)
            async with store.local_copy(data_key) as path:
                if path is None:
                    problem = "is missing (its manifest is there)"
                else:
                    problem = await asyncio.to_thread(_problem_of, fields, path)
                    result.bytes += listing.get(str(data_key), 0)
        if problem is not None:
            result.problems.append(f"{store.location(data_key)}: {problem}")
    return result
