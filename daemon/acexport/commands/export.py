"""``acexport export``: one ad-hoc range, like AC's curl command but correct.

It polls, streams, verifies and commits exactly as the daemon does; this
module only turns command-line flags into an ``ExportSpec`` and shows progress.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TextIO

import structlog
from pydantic import SecretStr, ValidationError

from ..ac.client import ExportClient, ExportStatus, new_session
from ..config import (
    Settings,
    WorkspaceSettings,
    find_config,
    load_settings,
    resolve_tokens,
    secret_warnings,
    zone_named,
)
from ..errors import AcexportError, ConfigError
from ..export import ExportObserver, ExportSpec, Timing, run_export
from ..formats import Compression, OutputFormat
from ..ops.logging import configure_logging, register_secret
from ..output.layout import OutputLayout
from ..output.local import LocalStore
from ..output.open import open_store
from ..output.sink import Sink
from ..output.store import OutputStore, common_prefix, with_manifests
from ..payload.tempfiles import claim_temp_dir, clean_abandoned
from ..windows import ExportWindow, aligned_windows, parse_bound
from . import ExitCode
from .common import UsageError, exit_code_of

log = structlog.get_logger("acexport.cli")


@dataclass(frozen=True)
class _Plan:
    settings: Settings
    workspace: str
    base_url: str
    token: SecretStr
    spec: ExportSpec
    file: Path | None  # --output FILE (or the stdout temp file); None: the configured store
    temp_dir: Path | None  # None: a private one is made when the export starts
    compression: Compression
    output_format: OutputFormat
    to_stdout: bool
    private_dir: Path | None = None


def _plan(args: argparse.Namespace) -> _Plan:
    config_path = find_config(args.config)
    if args.base_url and args.workspace:
        raise UsageError("give --workspace (from a config) or --base-url, not both")
    if args.base_url and config_path is not None and args.config is None:
        config_path = None  # an ad-hoc URL does not pick up a default config by accident
    if args.workspace and config_path is None:
        raise ConfigError("--workspace needs a config file: none given or found")
    settings = load_settings(config_path) if config_path else Settings()
    for warning in secret_warnings(config_path, settings):
        log.warning("config_token_readable", detail=warning)
    if args.base_url:
        name, ws, token = _workspace_from_flags(args)
    else:
        name, ws, token = _workspace_from_config(args.workspace, settings, config_path)
    register_secret(token.get_secret_value())
    try:
        zone = zone_named(args.timezone) if args.timezone else ws.zone
        window = ExportWindow(
            parse_bound(args.from_, zone, end=False), parse_bound(args.to, zone, end=True), zone
        )
    except ValueError as exc:
        raise UsageError(f"--timezone/--from/--to: {exc}") from None
    key, file, compression, output_format = _destination(args, settings, config_path, name, window)
    job = None if file is not None else _job_of_window(settings, name, args.type, window)
    spec = ExportSpec(name, args.type, window, key, job=job).split_exactly()
    temp_dir = settings.daemon.state_dir / "tmp" if config_path is not None else None
    to_stdout = args.output == "-"
    return _Plan(
        settings,
        name,
        ws.base_url,
        token,
        spec,
        file,
        temp_dir,
        compression,
        output_format,
        to_stdout,
    )


def _workspace_from_flags(args: argparse.Namespace) -> tuple[str, WorkspaceSettings, SecretStr]:
    if bool(args.token_env) == bool(args.token_file):
        raise UsageError("--base-url needs exactly one of --token-env VAR or --token-file FILE")
    try:
        ws = WorkspaceSettings(
            base_url=args.base_url,
            token_env=args.token_env,
            token_file=args.token_file,
            timezone=args.timezone or "UTC",
        )
        return "adhoc", ws, ws.read_token()
    except ValidationError as exc:
        raise UsageError(_flag_problems(exc)) from None
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from None


def _flag_problems(exc: ValidationError) -> str:
    """pydantic's report as one line naming the flags: ``--base-url: expected ...``."""
    problems = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        flag = f"--{str(error['loc'][0]).replace('_', '-')}: " if error["loc"] else ""
        problems.append(flag + message)
    return "; ".join(problems)


def _workspace_from_config(
    wanted: str | None, settings: Settings, config_path: Path | None
) -> tuple[str, WorkspaceSettings, SecretStr]:
    if config_path is None:
        raise UsageError(
            "no config file given or found ($ACEXPORT_CONFIG, ./acexport.toml, "
            "/etc/acexport/config.toml): give --config, or --base-url with a token flag"
        )
    if not wanted:
        if len(settings.workspaces) != 1:
            raise UsageError("name the workspace with --workspace (or use --base-url)")
        wanted = next(iter(settings.workspaces))
    if wanted not in settings.workspaces:
        known = ", ".join(sorted(settings.workspaces)) or "none"
        raise ConfigError(f"{config_path}: no workspace {wanted!r} (known: {known})")
    return wanted, settings.workspaces[wanted], resolve_tokens(settings, str(config_path))[wanted]


def _destination(
    args: argparse.Namespace,
    settings: Settings,
    config_path: Path | None,
    workspace: str,
    window: ExportWindow,
) -> tuple[PurePosixPath, Path | None, Compression, OutputFormat]:
    """The key, the local file (None: the configured output store), the compression
    and the format."""
    chosen = None if args.compression is None else Compression(args.compression)
    named = None if args.format is None else OutputFormat(args.format)
    if args.output == "-" or args.output:
        file = Path("out") if args.output == "-" else Path(args.output).absolute()
        if args.output != "-" and file.exists() and not args.force:
            raise UsageError(f"{file} exists: give --force to replace it")
        output_format = named or OutputFormat.of_name(file.name) or OutputFormat.NDJSON
        if output_format is OutputFormat.PARQUET:
            compression = chosen or Compression.ZSTD  # the columns' codec
        elif args.output == "-":
            compression = chosen or Compression.NONE
        else:
            compression = chosen or Compression.of_name(file.name)
        # stdout's data goes through a file in the private temp dir
        return PurePosixPath(file.name), file, compression, output_format
    if config_path is None:
        raise UsageError("--output is required without a config file")
    output = settings.output
    job = _job_of_window(settings, workspace, args.type, window)
    if job is None:
        raise UsageError(
            f"{args.type} --from {args.from_} --to {args.to} is not one window of a job "
            f"of {config_path} for {workspace}: written into the daemon's output it would "
            "overlap the windows' files (their rows counted twice). Give --output FILE to "
            "export any range elsewhere, or use `acexport reexport --job J --from --to` to "
            "replace a job's windows"
        )
    if (named or output.format) != output.format or (
        chosen or output.file_compression
    ) != output.file_compression:
        raise UsageError(
            "a window of the daemon's output is written in its format and compression "
            f"({output.format.value}, {output.file_compression.value}), or a second file "
            "would hold its rows: leave out --format/--compression, or give --output FILE"
        )
    layout = OutputLayout.from_settings(output)
    key = layout.key_for(workspace, args.type, job, window, output.file_compression)
    return key, None, output.file_compression, output.format


def _job_of_window(
    settings: Settings, workspace: str, type_: str, window: ExportWindow
) -> str | None:
    """The job of ``workspace`` that exports ``type_`` in windows of which ``window``
    is exactly one (a one-off export may write that file in the daemon's output, as
    the job would); None if there is none."""
    for job in settings.jobs:
        if job.workspace != workspace or type_ not in job.window_types:
            continue
        zone = settings.workspaces[workspace].zone
        if aligned_windows(zone, job.window, window.start, window.end) == [
            ExportWindow(window.start, window.end, zone)
        ]:
            return job.name
    return None


def _with_private_dir(plan: _Plan) -> _Plan:
    """Without a state dir, temp files go to a directory of their own (removed at the end).

    Beside the output file, so the final rename stays on one filesystem; in the
    system's temp dir for stdout. No file of the user's is ever touched by cleanup.
    """
    if plan.temp_dir is not None and not plan.to_stdout:
        return plan
    if plan.to_stdout:  # (with a config too: the data is not the output store's)
        private = Path(tempfile.mkdtemp(prefix="acexport-export-"))
        file: Path | None = private / "out"
    else:
        assert plan.file is not None  # without a config there is no store but the file
        plan.file.parent.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=".acexport-", dir=plan.file.parent))
        file = plan.file
    return replace(plan, file=file, temp_dir=private, private_dir=private)


class _Progress(ExportObserver):
    """One rewritten status line on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = time.monotonic()
        self._download_started: float | None = None
        self._last_draw = 0.0

    def _draw(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_draw >= 0.2:
            self._last_draw = now
            self._stream.write(f"\r\x1b[2K{text}")
            self._stream.flush()

    async def status(self, answer: ExportStatus, next_poll_s: float) -> None:
        elapsed = time.monotonic() - self._started
        self._draw(
            f"{answer.status:<8} waited {elapsed:6.1f}s, next poll in {next_poll_s:5.1f}s", True
        )

    async def downloaded(self, received_bytes: int, total_bytes: int | None) -> None:
        now = time.monotonic()
        self._download_started = self._download_started or now
        rate = received_bytes / max(now - self._download_started, 1e-3) / 1e6
        total = f" of {total_bytes / 1e6:.1f}" if total_bytes else ""
        self._draw(f"DOWNLOAD {received_bytes / 1e6:8.1f}{total} MB at {rate:6.1f} MB/s")

    def close(self) -> None:
        self._stream.write("\r\x1b[2K")
        self._stream.flush()


_terminated: set[int] = set()  # SIGTERM, once it came


async def _open_sink(plan: _Plan, stack: AsyncExitStack) -> Sink:
    """The output (the file asked for, or the config's store) behind a sink, with a
    temp dir of this process's own; closed with ``stack``."""
    assert plan.temp_dir is not None
    temp_dir = plan.temp_dir
    if plan.private_dir is None:  # the state dir's: shared with a daemon, maybe
        clean_abandoned(temp_dir)
        own = claim_temp_dir(temp_dir)
        stack.callback(own.release)
        temp_dir = own.path
    if plan.file is not None:
        store: OutputStore = LocalStore(plan.file.parent, temp_dir)
    else:
        store = open_store(plan.settings, temp_dir)
    await store.start(stack)
    sink = Sink(
        temp_dir,
        plan.compression,
        store,
        plan.settings.http.payload_limits(),
        plan.output_format,
    )
    stack.callback(sink.close)
    return sink


async def _export(plan: _Plan, progress: _Progress | None) -> str:
    assert plan.temp_dir is not None
    # SIGTERM cancels like Ctrl-C does, so temp files are removed on the way out.
    task = asyncio.current_task()
    assert task is not None

    def terminate() -> None:
        _terminated.add(signal.SIGTERM)
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    timeout = plan.settings.http.timeout.total_seconds()
    async with AsyncExitStack() as stack:
        sink = await _open_sink(plan, stack)
        if plan.spec.job is not None:
            await _refuse_a_stored_window(plan, sink.store)
        session = await stack.enter_async_context(new_session(timeout))
        client = ExportClient(
            session,
            plan.base_url,
            plan.token,
            max_inflate_ratio=plan.settings.http.max_inflate_ratio,
        )
        try:
            outcome = await run_export(
                plan.spec,
                client,
                sink,
                replace(Timing.from_settings(plan.settings.http), fail_fast_unreachable=True),
                progress,
            )
        finally:
            if progress:
                progress.close()
    return outcome.manifest_location


async def _refuse_a_stored_window(plan: _Plan, store: OutputStore) -> None:
    """A one-off export never replaces a job's window file, with or without --force,
    nor adds one beside it in a format or compression the output had before."""
    spec = plan.spec
    assert spec.job is not None
    output = plan.settings.output
    keys = sorted(
        {
            OutputLayout(output.path, compression, output.snapshot_path, format_).key_for(
                spec.workspace, spec.type, spec.job, spec.window
            )
            for format_ in OutputFormat
            for compression in Compression
        }
    )
    prefix = common_prefix(keys)
    present = with_manifests(await store.listed_under(prefix), prefix)
    found = [key for key in keys if key in present]
    if found:
        raise UsageError(
            f"the daemon's output holds {spec.type} {spec.window.label} already "
            f"({found[0]}): a one-off export never replaces a job's window file. "
            f"To replace it: acexport reexport --job {spec.job} {_range_args(spec.window)} "
            f"--type {spec.type}; or give --output FILE to export it elsewhere"
        )


def _range_args(window: ExportWindow) -> str:
    """``--from``/``--to`` naming exactly ``window``: a date when it is one whole day
    (``--to`` a date is inclusive), else its bounds (``--to`` a time is exclusive)."""
    start, end = window.local_start, window.local_end
    midnights = all(t == t.replace(hour=0, minute=0, second=0, microsecond=0) for t in (start, end))
    if midnights and end.date() == start.date() + timedelta(days=1):
        return f"--from {start:%Y-%m-%d} --to {start:%Y-%m-%d}"
    return f"--from {start:%Y-%m-%dT%H:%M} --to {end:%Y-%m-%dT%H:%M}"


def main(args: argparse.Namespace) -> int:
    # A file-size limit must surface as an error we can report, not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return exit_code_of("export", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    plan = _plan(args)
    configure_logging(plan.settings.daemon.log_format, plan.settings.daemon.log_level)
    try:
        plan = _with_private_dir(plan)
    except OSError as exc:
        print(f"acexport export: cannot create a temp dir: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    try:
        return _run(plan, args.quiet)
    finally:
        if plan.private_dir is not None:
            shutil.rmtree(plan.private_dir, ignore_errors=True)


def _run(plan: _Plan, quiet: bool) -> int:
    show = not quiet and sys.stderr.isatty()
    progress = _Progress(sys.stderr) if show else None
    try:
        manifest_path = asyncio.run(_export(plan, progress))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("acexport export: interrupted; nothing was written", file=sys.stderr)
        # As a shell reports a process the signal ended: 130 for Ctrl-C, 143 for SIGTERM.
        return 128 + signal.SIGTERM if _terminated else ExitCode.INTERRUPTED
    except UsageError:
        raise  # refused before anything was asked of AC: said as a usage error
    except AcexportError as exc:
        log.error("export_failed", error=str(exc), kind=type(exc).__name__)
        return ExitCode.FAILED
    except Exception as exc:
        log.exception("export_crashed", kind=type(exc).__name__)
        return ExitCode.FAILED
    if plan.to_stdout:
        try:
            assert plan.file is not None
            with plan.file.open("rb") as data:
                shutil.copyfileobj(data, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            # The reader stopped early (`| head`): say so once, without a traceback.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            print("acexport export: stdout closed before all data was written", file=sys.stderr)
            return ExitCode.FAILED
    else:
        print(manifest_path, file=sys.stderr if quiet else sys.stdout)
    return ExitCode.OK
