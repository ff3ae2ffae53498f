"""The output store seam: where committed data lives, a directory or a bucket.

Every store takes the same relative keys, writes the data first and its
manifest last, and can list the manifests under a prefix: a window whose
manifest exists is done, whatever the ledger says.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path, PurePosixPath
from typing import Protocol

from .manifest import Manifest


class OutputStore(Protocol):
    """Where committed data lives: a local directory or an object-storage prefix."""

    def location(self, key: PurePosixPath) -> str:
        """How a key is named to people (a path, or an ``s3://`` URL); never credentials."""
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

    async def manifests_under(self, prefix: str) -> set[PurePosixPath]:
        """The data keys (not manifest keys) whose manifest exists under ``prefix``."""
        ...


def common_prefix(keys: list[PurePosixPath]) -> str:
    """The longest string every key starts with: one listing covers them all."""
    # Characters, not path components: an S3 prefix need not end at a "/".
    return os.path.commonprefix([str(key) for key in keys])  # noqa: RUF071
