"""The daemon's start-up steps that need no daemon: lanes keyed by token, this
process's temp directory, the output's one writer, what a crashed run left in
object storage."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path

import structlog
from pydantic import SecretStr

from ..config import Settings
from ..errors import StateError, StoreUnavailable
from ..ledger import Ledger
from ..output.layout import OutputLayout
from ..output.owner import OutputClaim, Owner
from ..output.store import OutputStore
from ..payload import tempfiles

log = structlog.get_logger("acexport.service")


def lane_keys(settings: Settings, tokens: dict[str, SecretStr]) -> dict[str, str]:
    """Workspace -> lane name; workspaces sharing a token share a lane (named for them)."""
    by_token: dict[str, list[str]] = {}
    for name in sorted(settings.workspaces):
        by_token.setdefault(tokens[name].get_secret_value(), []).append(name)
    return {name: "+".join(names) for names in by_token.values() for name in names}


async def claim_temp_dir(settings: Settings, stack: AsyncExitStack) -> Path:
    """This process's own temp dir, after removing those of processes that are gone."""
    root = settings.daemon.state_dir / "tmp"
    try:
        removed = await asyncio.to_thread(tempfiles.clean_abandoned, root)
        temp = await asyncio.to_thread(tempfiles.claim_temp_dir, root)
    except OSError as exc:
        raise StateError(f"cannot use the temp directory {root}: {exc.strerror}") from None
    stack.callback(temp.release)
    if removed:
        log.info("stale_temp_files_removed", count=removed)
    return temp.path


async def claim_output(
    settings: Settings, ledger: Ledger, output: OutputStore, stack: AsyncExitStack
) -> OutputClaim:
    """Become the output's one writer (output/owner.py), noticing a changed root."""
    root = output.describe()
    previous = await ledger.replace_meta("output_root", root)
    if previous not in (None, root):
        log.warning(
            "output_root_changed",
            previous=previous,
            output=root,
            detail="windows recorded done are checked in the new output; "
            "those it lacks are exported again",
        )
    state_id = await ledger.state_id()
    me = Owner.me(state_id, str(settings.daemon.state_dir), time.time())
    claim = OutputClaim(output, me)
    await claim.take(stack)
    return claim


async def abort_stale_uploads(settings: Settings, output: OutputStore, now: datetime) -> None:
    """What a crashed run of this daemon left in object storage: only keys its layout
    produces, only uploads older than daemon.stale_upload_age (a live writer's big
    upload is younger; the owner marker keeps other daemons out). ``backfill``
    queueing into a running daemon never gets here."""
    layout = OutputLayout.from_settings(settings.output)
    before = now - settings.daemon.stale_upload_age
    try:
        await output.abort_stale_uploads(layout.could_be_key, before)
    except StoreUnavailable as exc:
        log.warning("s3_stale_uploads_not_listed", error=str(exc))
