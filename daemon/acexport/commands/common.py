"""What every command shares: config loading, logging, signals, errors as exit codes."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from ..config import Settings, find_config, load_settings, resolve_tokens, secret_warnings
from ..errors import AcexportError, ConfigError, StoreRejected, TemporaryFailure
from ..ops.logging import configure_logging, register_secrets
from . import ExitCode
from .early import SIGNALS, ignore_reloads
from .early import noted as noted_early

if TYPE_CHECKING:
    from ..daemon import Daemon

log = structlog.get_logger("acexport.cli")

T = TypeVar("T")


class UsageError(Exception):
    """Flags that do not fit together, or name nothing (exit 2)."""


def load(config: str | None) -> tuple[Settings, Path]:
    """The config named by ``--config``, ``$ACEXPORT_CONFIG`` or a default location."""
    path = find_config(config)
    if path is None:
        raise ConfigError(
            "no config file given or found ($ACEXPORT_CONFIG, ./acexport.toml, "
            "/etc/acexport/config.toml)"
        )
    return load_settings(path), path


def prepare(settings: Settings, path: Path | None) -> None:
    """Tokens read and registered for redaction, logging set up, warnings logged."""
    tokens = resolve_tokens(settings, str(path or "environment")).values()
    register_secrets(token.get_secret_value() for token in tokens)
    configure_logging(settings.daemon.log_format, settings.daemon.log_level)
    for warning in secret_warnings(path, settings):
        log.warning("config_token_readable", detail=warning)
    # A file-size limit must surface as an error we can report, not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def human_duration(seconds: float) -> str:
    """``2d 3h``, ``45m``, ``12s``: the two largest units, for people."""
    left = int(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


def exit_code_of(command: str, body: Callable[[], int]) -> int:
    """Run a command's body; every error it expects becomes one line and an exit code."""
    try:
        return body()
    except UsageError as exc:
        print(f"acexport {command}: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except TemporaryFailure as exc:
        print(f"acexport: {exc}", file=sys.stderr)
        return ExitCode.TEMPFAIL
    except (ConfigError, StoreRejected) as exc:
        # A refusing output store (no bucket, no access) is the config's to fix too.
        print(f"acexport: configuration error: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    except AcexportError as exc:  # another daemon holds the directory, the ledger failed
        print(f"acexport: {exc}", file=sys.stderr)
        return ExitCode.FAILED


_stop_signals: set[int] = set()


def interrupted() -> bool:
    """Whether SIGINT or SIGTERM stopped the daemon: a foreground command exits 130."""
    return bool(_stop_signals)


def interrupted_by_ctrl_c() -> bool:
    return signal.SIGINT in _stop_signals


def handle_signals(daemon: Daemon) -> None:
    """SIGTERM/SIGINT stop taking work and end within the grace; SIGHUP reloads."""
    loop = asyncio.get_running_loop()

    def stop(number: int) -> None:
        _stop_signals.add(number)
        daemon.request_stop()

    loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    loop.add_signal_handler(signal.SIGINT, stop, signal.SIGINT)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    if noted_early & {signal.SIGTERM, signal.SIGINT}:
        _stop_signals.update(noted_early & {signal.SIGTERM, signal.SIGINT})
        daemon.request_stop()
    elif signal.SIGHUP in noted_early:
        daemon.request_reload()
    noted_early.clear()


def run_daemon_loop(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` for a command that runs a daemon: once ``main`` is done, the
    daemon's signal handlers come off while the loop still runs, and SIGHUP is ignored.

    asyncio takes them off only as the loop closes, after closing the socket that
    carries a signal to the loop: a signal between was written to the closed socket
    ("Exception ignored when trying to write to the signal wakeup fd" on stderr). It
    also gives SIGHUP back its default action, so a reload asked for as the daemon
    ended, its work done, ended the process by the signal (see ``ignore_reloads``).
    A late SIGTERM still ends it."""

    async def main_then_signals_off() -> T:
        try:
            return await main
        finally:
            loop = asyncio.get_running_loop()
            for sig in SIGNALS:  # what handle_signals listens for
                loop.remove_signal_handler(sig)
            ignore_reloads()

    return asyncio.run(main_then_signals_off())


def counted(count: int, noun: str) -> str:
    """``1 window``, ``2 windows``: no "1 windows" in what people read."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
