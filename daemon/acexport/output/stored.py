"""Which windows the output store already holds: the truth of what is done.

The output store is the truth of what is done (README, "Output"): a lost or
fresh state directory, a replacement host, a container without a state volume
all resume without asking AC again for data they already delivered. One
prefix listing per job type covers the windows asked about (with the files'
sizes); only a window about to be believed done costs a manifest read, and is
believed only if its manifest names it and its file has the bytes the manifest
claims. What to do with the answer (the ledger) is the planner's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..windows import ExportWindow
from .layout import OutputLayout
from .manifest import check_stored, manifest_key
from .store import OutputStore, common_prefix

_READS_AT_ONCE = 16  # manifest reads in flight while checking a job's stored windows


@dataclass(frozen=True)
class StoredFile:
    """A window's data file in the store, with a manifest beside it."""

    type: str
    window: ExportWindow
    key: PurePosixPath
    size: int
    location: str


async def stored_files(
    store: OutputStore,
    layout: OutputLayout,
    workspace: str,
    job: str,
    types: Iterable[str],
    windows: list[ExportWindow],
) -> list[StoredFile]:
    """The files of ``windows`` that ``store`` holds with a manifest beside them."""
    found: list[StoredFile] = []
    for type_ in types:
        keys = {w: layout.key_for(workspace, type_, job, w) for w in windows}
        if not keys:
            continue
        present = await store.stored_under(common_prefix(list(keys.values())))
        found += [
            StoredFile(type_, w, key, present[key], store.location(key))
            for w, key in keys.items()
            if key in present
        ]
    return found


async def unproven(
    store: OutputStore, workspace: str, files: list[StoredFile]
) -> list[tuple[StoredFile, str]]:
    """The files whose manifest does not prove them whole, each with the reason."""
    gate = asyncio.Semaphore(_READS_AT_ONCE)

    async def check(stored: StoredFile) -> str | None:
        async with gate:
            text = await store.read_small(manifest_key(stored.key))
        return check_stored(
            text,
            stored.size,
            workspace=workspace,
            type_=stored.type,
            from_date=stored.window.from_date,
            to_date=stored.window.to_date,
        )

    reasons = await asyncio.gather(*(check(stored) for stored in files))
    return [(stored, why) for stored, why in zip(files, reasons, strict=True) if why is not None]
