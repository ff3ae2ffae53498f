"""What a reload (SIGHUP) changed, and what it clears.

A reload that changes a workspace's token or settings means the operator just
fixed the cause of its failures (a renewed token, a corrected base_url): its
failed windows are retried at once, not at the next scheduled look (a nightly
job's is tomorrow, and /healthz, and with it a Kubernetes pod, stayed failing
until then).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from pydantic import SecretStr

from ..config import JobSettings, Settings, resolve_tokens
from ..errors import ConfigError
from ..ops.health import Health
from ..ops.logging import register_secrets
from .lanes import Lanes
from .shard import moved_workspaces
from .startup import lane_keys

log = structlog.get_logger("acexport.service")


def read_new_config(
    read: Callable[[], Settings],
    source: str,
    old: Settings,
    lane_of: dict[str, str],
    processes: int,
) -> tuple[Settings, dict[str, SecretStr]] | None:
    """The config ``read`` now and its tokens (registered for redaction: rotated); None,
    logged, if the daemon (its lanes ``lane_of`` over ``processes``) cannot use it: the
    previous one stays in force."""
    try:
        new = read()
        tokens = resolve_tokens(new, source)
        register_secrets(token.get_secret_value() for token in tokens.values())
        _refuse_what_needs_a_restart(old, lane_of, new, tokens, processes)
    except ConfigError as exc:
        log.error(
            "config_reload_rejected",
            error=str(exc),
            detail="the previous configuration stays in force",
        )
        return None
    return new, tokens


def _refuse_what_needs_a_restart(
    old: Settings,
    lane_of: dict[str, str],
    new: Settings,
    tokens: dict[str, SecretStr],
    processes: int,
) -> None:
    if new.daemon.state_dir != old.daemon.state_dir:
        raise ConfigError("daemon.state_dir cannot change on reload; restart instead")
    for setting in ("processes", "pin_cpus"):
        if getattr(new.daemon, setting) != getattr(old.daemon, setting):
            raise ConfigError(f"daemon.{setting} cannot change on reload; restart instead")
    moved = moved_workspaces(processes, lane_of, lane_keys(new, tokens))
    if moved:
        # Tokens now shared (or no longer): their lane may still be exporting where it was.
        raise ConfigError(
            f"workspaces {', '.join(moved)} would move to another of the daemon's processes"
            " (their lane changed with their tokens); restart instead"
        )


def changed_workspaces(
    old: Settings, old_tokens: dict[str, SecretStr], new: Settings, tokens: dict[str, SecretStr]
) -> set[str]:
    """The workspaces whose settings or token the new config changed (or added)."""
    return {
        name
        for name, ws in new.workspaces.items()
        if ws != old.workspaces.get(name)
        or name not in old_tokens
        or old_tokens[name].get_secret_value() != tokens[name].get_secret_value()
    }


def forget_failures(
    lanes: Lanes, health: Health, workspaces: set[str], settings: Settings
) -> list[JobSettings]:
    """The changed workspaces' lanes may try their token again, and are healthy until
    their exports fail again; their jobs this process runs, to look at again now."""
    for name in workspaces:
        key = lanes.key_of.get(name)
        if key is not None:
            if key in lanes.by_key:  # not another process's (daemon.processes)
                lanes.by_key[key].clear_auth_failure()
            health.forget(key)
    jobs = [job for job in lanes.owned_jobs(settings) if job.workspace in workspaces]
    if jobs:
        log.info("failed_windows_retried", workspaces=sorted(workspaces))
    return jobs
