"""This process's lanes: one per token, for the workspaces its shard owns (every
workspace, with one process), and the ledger rows it handed them."""

from __future__ import annotations

import asyncio

import structlog
from pydantic import SecretStr

from ..config import JobSettings, Settings
from ..lane import Lane, LaneContext
from ..ledger import ExportRecord, LedgerState
from ..ops.statusview import LaneView
from ..planner import Look
from .shard import Shard
from .startup import lane_keys

log = structlog.get_logger("acexport.service")


class Lanes:
    """The lanes of the workspaces ``shard`` owns, by name."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.by_key: dict[str, Lane] = {}
        self.key_of: dict[str, str] = {}  # workspace -> its lane's name, whoever runs it
        self.taken_on: set[int] = set()  # ledger rows this process enqueued

    def apply(self, settings: Settings, tokens: dict[str, SecretStr], ctx: LaneContext) -> None:
        """A lane for each owned token not yet served; a changed token for the others."""
        self.key_of = lane_keys(settings, tokens)
        for workspace, key in self.key_of.items():
            if not self.shard.owns(key):
                continue  # another process's
            if key not in self.by_key:
                lane = Lane(key, tokens[workspace], ctx)
                lane.start()
                self.by_key[key] = lane
            elif self.by_key[key].token.get_secret_value() != tokens[workspace].get_secret_value():
                log.info("lane_token_changed", lane=key)
                self.by_key[key].use_token(tokens[workspace])

    def owned_jobs(self, settings: Settings) -> list[JobSettings]:
        """The jobs whose lane is this process's."""
        return [job for job in settings.jobs if self.shard.owns(self.key_of[job.workspace])]

    def of(self, workspace: str) -> Lane:
        return self.by_key[self.key_of[workspace]]

    def enqueue(self, records: list[ExportRecord]) -> int:
        """Hand this process's records to their lanes; how many were new there."""
        by_lane: dict[str, list[ExportRecord]] = {}  # a lane orders its own (in_slot_order)
        for record in records:
            key = self.key_of.get(record.workspace)
            if key is not None and not self.shard.owns(key):
                continue  # another process's
            self.taken_on.add(record.id)
            if key is None:
                log.warning(
                    "export_for_unknown_workspace", workspace=record.workspace, export_id=record.id
                )
                continue
            by_lane.setdefault(key, []).append(record)
        return sum(self.by_key[key].enqueue(batch) for key, batch in by_lane.items())

    def queue(self, job: JobSettings, look: Look) -> None:
        """A look's records to the job's lane."""
        lane = self.of(job.workspace)
        if lane.auth_failure and any(r.state is LedgerState.QUEUED for r in look.records):
            lane.clear_auth_failure()  # a new look tries the token again
        added = self.enqueue(look.records)
        # Nothing to do says so only at debug: a minutely schedule wrote a line a minute.
        (log.info if added else log.debug)("job_looked", job=job.name, due=look.due, queued=added)
        if look.newly_beyond_retention:
            log.warning(
                "windows_beyond_retention",
                job=job.name,
                count=look.newly_beyond_retention,
                detail="they start before AC's data retention: recorded, never asked for",
            )

    def views(self) -> list[LaneView]:
        return [LaneView(lane.key, lane.depth, lane.in_flight) for lane in self.by_key.values()]

    async def stop(self, grace_s: float) -> None:
        await asyncio.gather(*(lane.stop(grace_s) for lane in self.by_key.values()))
