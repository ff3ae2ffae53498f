"""The output store seam: where committed data lives, a directory or a bucket.

Every store takes the same relative keys, writes the data first and its
manifest last, and can list what it holds under a prefix, with sizes: a window
whose manifest exists and whose file has the bytes it claims is done, whatever
the ledger says.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Protocol

from .manifest import MANIFEST_SUFFIX, Manifest


class OutputStore(Protocol):
    """Where committed data lives: a local directory or an object-storage prefix."""

    def location(self, key: PurePosixPath) -> str:
        """How a key is named to people (a path, or an ``s3://`` URL); never credentials."""
        ...

    def describe(self) -> str:
        """The store's root as people name it (a directory, or ``s3://bucket/prefix``)."""
        ...

    async def start(self, stack: AsyncExitStack) -> None:
        """Connect, check access, clean what crashed runs left; closed with ``stack``."""
        ...

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        """Store the file ``data`` under ``key``, then its manifest. Idempotent:
        committing the same key again replaces, never duplicates. Returns the
        manifest's location; the caller removes ``data`` if it is still there."""
        ...

    def commit_here(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str | None:
        """``commit`` from the worker thread that finished ``data``, if this store's
        commit is blocking file work (a directory): one thread hop fewer per export.
        None: nothing was done, the caller awaits ``commit`` (with its retries)."""
        ...

    async def abort_stale_uploads(
        self, is_ours: Callable[[str], bool], initiated_before: datetime
    ) -> int:
        """Clean up the uploads a crashed run left (object storage; a directory has
        none): only keys ``is_ours`` says the layout produces, initiated before
        ``initiated_before``. Returns how many were aborted."""
        ...

    async def stored_under(self, prefix: str) -> dict[PurePosixPath, int]:
        """The data keys (not manifest keys) under ``prefix`` whose manifest exists too,
        with the data file's size (a listing gives it: no request per file)."""
        ...

    async def listed_under(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` (data, manifests, leftovers), with its size."""
        ...

    async def listed_under_each(self, prefixes: Sequence[str]) -> list[dict[str, int]]:
        """``listed_under`` of each prefix, asked for at once (a directory's in one thread
        hop: a look lists a prefix per type, and a thousand jobs look at start)."""
        ...

    async def read_small(self, key: PurePosixPath) -> bytes | None:
        """A small object (a manifest, the owner marker); None if there is none."""
        ...

    def local_copy(self, key: PurePosixPath) -> AbstractAsyncContextManager[Path | None]:
        """A data file as a local file while the context lasts (a directory's own file;
        an object downloaded to a temp file), for ``verify``; None if there is none."""
        ...

    async def write_small(self, key: PurePosixPath, data: bytes) -> None:
        """Replace a small object whole (the owner marker)."""
        ...

    async def delete(self, key: PurePosixPath) -> None:
        """Remove an object (a pruned snapshot's file or manifest, the owner marker),
        if it is there; a directory left empty goes too."""
        ...

    async def delete_many(self, keys: Sequence[PurePosixPath]) -> None:
        """``delete`` for each key, batched (S3: one request per thousand keys); a key
        not there is no error. After a failure, which keys went is not known."""
        ...


SMALL_MAX = 1 << 20  # a manifest or marker bigger than this is not one of ours


def key_at(store: OutputStore, location: str | None) -> PurePosixPath | None:
    """The key a recorded location (``store.location(key)``) names in ``store``, if it
    names one there: a row's file may predate a change of format or compression."""
    if location is None:  # checked first: every export asks (a new window names none)
        return None
    root = store.location(PurePosixPath("x"))[:-1]
    if not location.startswith(root) or len(location) == len(root):
        return None
    return PurePosixPath(location[len(root) :])


def common_prefix(keys: list[PurePosixPath]) -> str:
    """The longest string every key starts with: one listing covers them all."""
    # Characters, not path components: an S3 prefix need not end at a "/".
    return os.path.commonprefix([str(key) for key in keys])  # noqa: RUF071


def with_manifests(sizes: dict[str, int], prefix: str) -> dict[PurePosixPath, int]:
    """Of a listing (name -> size), the data keys under ``prefix`` whose manifest is
    listed too, with the data's size."""
    return {
        PurePosixPath(data): sizes[data]
        for name in sizes
        if name.startswith(prefix)
        and name.endswith(MANIFEST_SUFFIX)
        and (data := name[: -len(MANIFEST_SUFFIX)]) in sizes
    }
