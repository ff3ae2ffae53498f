"""Snapshots in the output store: which are there, proven, and pruning the oldest.

An entity table is exported whole at each look (``protocol.ExportMode``); the
store keeps the newest ``keep_snapshots`` of each (workspace, type). A
snapshot is believed only as a window is (``manifest.check_stored``): its
manifest says ``mode: "snapshot"``, names it, and its file has the bytes the
manifest claims. Pruning deletes the manifest first, so a snapshot half
deleted by a crash is no longer believed, never a partial one believed whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

from ..protocol import ExportMode
from ..windows import ExportWindow
from .layout import OutputLayout, sorts_by_time
from .manifest import MANIFEST_SUFFIX, check_stored, manifest_key, read_fields
from .store import OutputStore, with_manifests

_READS_AT_ONCE = 8


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot's data file in the store, proven by its manifest."""

    key: PurePosixPath
    size: int
    window: ExportWindow  # from snapshot_from to the as-of time (exclusive)
    location: str

    @property
    def as_of(self) -> datetime:
        return self.window.end


async def stored_snapshots(
    store: OutputStore,
    layout: OutputLayout,
    workspace: str,
    type_: str,
    job: str,
    zone: ZoneInfo,
    listed: dict[str, int] | None = None,
) -> list[StoredSnapshot]:
    """The proven snapshots of (workspace, type) in the store, oldest first (from
    ``listed``, the prefix's listing, if the caller has it)."""
    prefix = layout.snapshot_prefix(workspace, type_, job)
    present = await store.stored_under(prefix) if listed is None else with_manifests(listed, prefix)
    candidates = [
        (key, size)
        for key, size in present.items()
        if layout.could_be_key(str(key), ExportMode.SNAPSHOT)
    ]
    gate = asyncio.Semaphore(_READS_AT_ONCE)

    async def prove(key: PurePosixPath, size: int) -> StoredSnapshot | None:
        async with gate:
            text = await store.read_small(manifest_key(key))
        window = _snapshot_window(text, zone)
        if window is None or not _of_job(text, job):
            return None  # another job's snapshot is never this job's to adopt or prune
        why = check_stored(
            text,
            size,
            workspace=workspace,
            type_=type_,
            from_date=window.from_date,
            to_date=window.to_date,
        )
        return None if why else StoredSnapshot(key, size, window, store.location(key))

    found = await asyncio.gather(*(prove(key, size) for key, size in candidates))
    return sorted((s for s in found if s is not None), key=lambda s: s.as_of)


async def listed_snapshots(
    store: OutputStore,
    layout: OutputLayout,
    job: str,
    workspace: str,
    types: Sequence[str],
    zone: ZoneInfo,
    known: KnownSnapshots,
) -> dict[str, list[StoredSnapshot]]:
    """The proven snapshots of each of ``types`` in the store (their prefixes listed at
    once), which ``known`` learns."""
    prefixes = [layout.snapshot_prefix(workspace, type_, job) for type_ in types]
    listings = await store.listed_under_each(prefixes)
    found = {}
    for type_, listed in zip(types, listings, strict=True):
        found[type_] = await stored_snapshots(store, layout, workspace, type_, job, zone, listed)
        known.learn_listing((job, workspace, type_), found[type_], layout, listed)
    return found


def _of_job(text: bytes | None, job: str) -> bool:
    fields = read_fields(text)
    return isinstance(fields, dict) and fields.get("job") == job


def _snapshot_window(text: bytes | None, zone: ZoneInfo) -> ExportWindow | None:
    """The window a snapshot manifest names, if it is a snapshot manifest at all."""
    try:
        fields = json.loads(text or b"")
        if not isinstance(fields, dict) or fields.get("mode") != ExportMode.SNAPSHOT:
            return None
        start = datetime.fromisoformat(fields["fromDate"])
        end = datetime.fromisoformat(fields["toDate"]) + timedelta(milliseconds=1)
        return ExportWindow(start, end, zone)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


SnapshotSeries = tuple[str, str, str]  # (job, workspace, type)


class KnownSnapshots:
    """The snapshots this daemon knows its store holds, by (job, workspace, type),
    oldest first, so that pruning after a commit deletes without listing the store.

    Learned from a listing (a job's first look, or a prune that had to list) that
    left nothing half pruned, then kept by this daemon's own commits and prunes: the
    store is listed once per job, as for windows (``Planner.look``), since this
    daemon is what writes it. A series not known (never listed, a prune that failed)
    is listed at its next prune. A snapshot deleted by someone else stays known:
    deleting it again changes nothing, and it is the first to go. At a thousand
    workspaces a listing after every snapshot was 12% of the daemon's CPU (issue 35).
    """

    def __init__(self) -> None:
        self._known: dict[SnapshotSeries, list[StoredSnapshot]] = {}

    def learn_listing(
        self,
        series: SnapshotSeries,
        snapshots: list[StoredSnapshot],
        layout: OutputLayout,
        listed: dict[str, int],
    ) -> None:
        """What a listing of the series' prefix proved: known from now on, unless a
        snapshot file there lacks its manifest (a prune stopped half way, a commit
        under way): that is left to the next prune, which lists."""
        if any(name + MANIFEST_SUFFIX not in listed for name in _snapshot_files(layout, listed)):
            self.forget(series)
        else:
            self.learn(series, snapshots)

    def learn(self, series: SnapshotSeries, snapshots: list[StoredSnapshot]) -> None:
        self._known[series] = sorted(snapshots, key=lambda s: s.as_of)

    def forget(self, series: SnapshotSeries) -> None:
        self._known.pop(series, None)

    def committed(
        self, series: SnapshotSeries, snapshot: StoredSnapshot
    ) -> list[StoredSnapshot] | None:
        """The series with ``snapshot`` just committed to it; None if not known."""
        known = self._known.get(series)
        if known is None:
            return None
        self.learn(series, [s for s in known if s.key != snapshot.key] + [snapshot])
        return list(self._known[series])


def nothing_to_prune(layout: OutputLayout, listed: dict[str, int], keep: int) -> bool:
    """Whether a snapshot prefix's listing leaves nothing for ``prune_snapshots``: at
    most ``keep`` snapshot files, each with its manifest (so no prune left one half
    done). The common case after a commit, told without reading a manifest."""
    files = _snapshot_files(layout, listed)
    return len(files) <= keep and all(name + MANIFEST_SUFFIX in listed for name in files)


def _snapshot_files(layout: OutputLayout, listed: dict[str, int]) -> list[str]:
    return [
        name
        for name in listed
        if not name.endswith(MANIFEST_SUFFIX) and layout.could_be_key(name, ExportMode.SNAPSHOT)
    ]


async def prune_snapshots(
    store: OutputStore,
    layout: OutputLayout,
    prefix: str,
    snapshots: list[StoredSnapshot],
    keep: int,
    listed: dict[str, int],
) -> tuple[list[StoredSnapshot], int]:
    """Delete all but the newest ``keep`` of ``snapshots`` (oldest first; ``listed``
    the prefix's listing they were found in): the deleted, and how many files a crash
    mid-prune had left without their manifest."""
    old = await prune_oldest(store, snapshots, keep)
    return old, await _delete_leftovers(store, layout, listed, snapshots[len(old) :])


async def prune_oldest(
    store: OutputStore, snapshots: list[StoredSnapshot], keep: int
) -> list[StoredSnapshot]:
    """Delete all but the newest ``keep`` of ``snapshots`` (oldest first); the deleted."""
    old = snapshots[: max(0, len(snapshots) - keep)]
    for snapshot in old:
        await store.delete(manifest_key(snapshot.key))  # first: no longer believed
        await store.delete(snapshot.key)
    return old


async def _delete_leftovers(
    store: OutputStore, layout: OutputLayout, listed: dict[str, int], kept: list[StoredSnapshot]
) -> int:
    """Snapshot files without a manifest that sort before the oldest kept snapshot: a
    prune stopped between its two deletes left them. Only when the path template
    sorts by time, so a snapshot being committed (the newest) is never one of them."""
    if not kept or not sorts_by_time(layout.snapshot_template):
        return 0
    oldest = str(kept[0].key)
    leftovers = [
        name
        for name in listed
        if not name.endswith(MANIFEST_SUFFIX)
        and name + MANIFEST_SUFFIX not in listed
        and name < oldest
        and layout.could_be_key(name, ExportMode.SNAPSHOT)
    ]
    for name in leftovers:
        await store.delete(PurePosixPath(name))
    return len(leftovers)
