"""Which windows the output store already holds: the truth of what is done.

The output store is the truth of what is done (docs/data.md, "Output"): a lost or
fresh state directory, a replacement host, a container without a state volume
all resume without asking AC again for data they already delivered. One
prefix listing per job type covers the windows asked about (with the files'
sizes); only a window about to be believed done costs a manifest read, and is
believed only if its manifest names it and its file has the bytes the manifest
claims. What to do with the answer (the ledger) is the planner's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from ..windows import ExportWindow
from .layout import OutputLayout
from .manifest import check_stored, manifest_key, read_fields
from .store import OutputStore, common_prefix, key_at, with_manifests

_READS_AT_ONCE = 16  # manifest reads in flight while checking a job's stored windows


@dataclass(frozen=True)
class StoredFile:
    """A window's data file in the store, with a manifest beside it."""

    type: str
    window: ExportWindow
    key: PurePosixPath
    size: int
    location: str
    # What its manifest proves, once read (``prove``): a restated window's row is done
    # only by a file of its own revision.
    revision: int = 1
    file_sha256: str | None = None


async def stored_files(
    store: OutputStore,
    layout: OutputLayout,
    workspace: str,
    job: str,
    types: Iterable[str],
    windows: list[ExportWindow],
    recorded: Mapping[tuple[str, ExportWindow], str | None] | None = None,
) -> list[StoredFile]:
    """The files of ``windows`` that ``store`` holds with a manifest beside them: a
    listing per type, all asked for at once. A window whose file is not at the key
    the layout gives it now is looked for at its ``recorded`` location (the ledger's:
    written before a change of format or compression, in the same folders)."""
    if not windows:
        return []
    keys = {t: {w: layout.key_for(workspace, t, job, w) for w in windows} for t in types}
    prefixes = [common_prefix(list(of_type.values())) for of_type in keys.values()]
    listings = await store.listed_under_each(prefixes)
    recorded = recorded or {}
    found: list[StoredFile] = []
    for (type_, of_type), prefix, listed in zip(keys.items(), prefixes, listings, strict=True):
        present = with_manifests(listed, prefix)
        for window, key in of_type.items():
            if key not in present:
                key = key_at(store, recorded.get((type_, window))) or key
            if key in present:
                found.append(StoredFile(type_, window, key, present[key], store.location(key)))
    return found


async def prove(
    store: OutputStore, workspace: str, files: list[StoredFile]
) -> tuple[list[StoredFile], list[tuple[StoredFile, str]]]:
    """The files whose manifest proves them whole (with its revision and file sha),
    and those it does not, each with the reason."""
    gate = asyncio.Semaphore(_READS_AT_ONCE)

    async def check(stored: StoredFile) -> StoredFile | str:
        async with gate:
            text = await store.read_small(manifest_key(stored.key))
        why = check_stored(
            text,
            stored.size,
            workspace=workspace,
            type_=stored.type,
            from_date=stored.window.from_date,
            to_date=stored.window.to_date,
        )
        if why is not None:
            return why
        fields = read_fields(text)
        assert isinstance(fields, dict)  # check_stored read it
        revision = fields.get("revision", 1)
        sha = fields.get("file_sha256")
        return replace(
            stored,
            revision=revision if isinstance(revision, int) and revision >= 1 else 1,
            file_sha256=sha if isinstance(sha, str) else None,
        )

    checked = await asyncio.gather(*(check(stored) for stored in files))
    proven = [answer for answer in checked if isinstance(answer, StoredFile)]
    refused = [
        (stored, answer)
        for stored, answer in zip(files, checked, strict=True)
        if isinstance(answer, str)
    ]
    return proven, refused


async def delete_stored(store: OutputStore, keys: list[PurePosixPath]) -> None:
    """Delete data files with their manifests, the manifests first: a stop between the
    two leaves a file no longer believed done, not a manifest without its file."""
    await store.delete_many([manifest_key(key) for key in keys])
    await store.delete_many(keys)
