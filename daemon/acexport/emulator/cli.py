"""``acexport emulator``: its options, and serving until interrupted.

aiohttp and the app are imported only when serving, so ``acexport --help``
does not pay for them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .data import FORMATS

if TYPE_CHECKING:
    from .app import EmulatorSettings

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(text: str) -> float:
    """``1.5``, ``200ms``, ``30s``, ``15m``, ``24h`` or ``1d`` as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 1.5, 200ms, 15m, 24h)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"not a rate between 0 and 1: {text!r}")
    return value


def token_pair(text: str) -> tuple[str, str]:
    name, sep, token = text.partition("=")
    if not sep or not name or not token:
        raise argparse.ArgumentTypeError(f"expected NAME=TOKEN, got {text.split('=')[0]!r}=...")
    return name, token


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument(
        "--token",
        action="append",
        type=token_pair,
        default=[],
        metavar="NAME=TOKEN",
        help="a workspace and its access token (repeatable); default demo=secret",
    )
    _add_processing_arguments(parser)
    _add_fault_arguments(parser)


def _add_processing_arguments(parser: argparse.ArgumentParser) -> None:
    queue = parser.add_argument_group("processing")
    queue.add_argument("--processing-time", type=seconds, default=5.0, metavar="DURATION")
    queue.add_argument(
        "--processing-per-1000",
        type=seconds,
        default=0.0,
        metavar="DURATION",
        help="extra processing time per 1000 records",
    )
    queue.add_argument(
        "--expiry",
        type=seconds,
        default=86400.0,
        metavar="DURATION",
        help="how long ready data can be downloaded (default 24h)",
    )
    records = queue.add_mutually_exclusive_group()
    records.add_argument("--records", type=int, default=100, help="records per window")
    records.add_argument("--records-per-day", type=int, help="records per day of window")
    queue.add_argument(
        "--format",
        choices=FORMATS,
        default="zip",
        help="payload format: zip as AC serves it (default), or legacy ndjson/json bodies",
    )
    queue.add_argument(
        "--auth-failure",
        type=int,
        choices=(401, 403, 500),
        default=500,
        help="status a bad token gets (default 500, an error page, as AC plausibly answers)",
    )
    extras = parser.add_argument_group("defensive extras (not in the real service)")
    extras.add_argument("--range", action="store_true", help="Content-Length and Range support")
    extras.add_argument("--gzip", action="store_true", help="Content-Encoding: gzip when accepted")
    extras.add_argument("--redirect", action="store_true", help="302 to a signed storage URL")
    queue.add_argument(
        "--status-code",
        type=int,
        choices=(200, 202),
        default=200,
        help="statuses answered with 200 (AC's controllers) or 202 (its engine)",
    )
    queue.add_argument(
        "--retention-months",
        type=int,
        metavar="N",
        help="refuse ranges starting more than N months ago, as AC's retention does",
    )
    queue.add_argument(
        "--retention-as",
        type=int,
        choices=(400, 500),
        default=400,
        help="the retention refusal as a 400 (newest controller) or inside a 500",
    )
    queue.add_argument(
        "--restate-rate",
        type=rate,
        default=0.0,
        help="share of page windows whose data changed when asked again after expiry",
    )
    queue.add_argument(
        "--legacy-properties",
        action="store_true",
        help="events carry the older properties array instead of eventProperties text",
    )
    queue.add_argument(
        "--iso-timestamps",
        action="store_true",
        help="event and page times in ISO 8601 with Z, as AC's older exports wrote them",
    )
    queue.add_argument(
        "--tick",
        type=seconds,
        default=0.0,
        metavar="DURATION",
        help="AC's worker runs every DURATION (5m in AC) and only then starts pending "
        "exports, one after another (default: at once)",
    )
    queue.add_argument("--seed", type=int, default=0)
    queue.add_argument(
        "--storage-dir", type=Path, help="where payloads over 1 MiB are rendered (temp dir)"
    )


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    faults = parser.add_argument_group("fault injection (rates are probabilities per request)")
    faults.add_argument(
        "--error-rate", type=rate, default=0.0, help="exports that fail at AC (status ERROR)"
    )
    faults.add_argument(
        "--truncate-rate", type=rate, default=0.0, help="downloads that end cleanly but early"
    )
    faults.add_argument("--fail-rate", type=rate, default=0.0, help="500/503 answers")
    faults.add_argument("--throttle-rate", type=rate, default=0.0, help="429 with Retry-After")
    faults.add_argument("--retry-after", type=int, default=1, metavar="SECONDS")
    faults.add_argument("--cut-rate", type=rate, default=0.0, help="connections cut mid-download")
    faults.add_argument("--garbage-rate", type=rate, default=0.0, help="HTML pages, broken JSON")
    faults.add_argument("--slow", type=int, metavar="BYTES_PER_S", help="cap download speed")


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    from .app import EmulatorSettings, FaultSettings
    from .jobs import QueueSettings

    tokens = dict(args.token or [("demo", "secret")])
    return EmulatorSettings(
        tokens=tokens,
        queue=QueueSettings(
            processing_s=args.processing_time,
            processing_per_1000_s=args.processing_per_1000,
            expiry_s=args.expiry,
            records=args.records,
            records_per_day=args.records_per_day,
            format=args.format,
            seed=args.seed,
            restate_rate=args.restate_rate,
            legacy_properties=args.legacy_properties,
            iso_timestamps=args.iso_timestamps,
            tick_s=args.tick,
        ),
        faults=FaultSettings(
            error_rate=args.error_rate,
            truncate_rate=args.truncate_rate,
            fail_rate=args.fail_rate,
            throttle_rate=args.throttle_rate,
            retry_after_s=args.retry_after,
            cut_rate=args.cut_rate,
            garbage_rate=args.garbage_rate,
            slow_bytes_per_s=args.slow,
        ),
        gzip=args.gzip,
        redirect=args.redirect,
        ranges=args.range,
        auth_failure=args.auth_failure,
        status_code=args.status_code,
        retention_months=args.retention_months,
        retention_as=args.retention_as,
        storage_dir=args.storage_dir,
    )


async def serve(settings: EmulatorSettings, host: str, port: int) -> None:
    from aiohttp import web

    from .app import make_app

    runner = web.AppRunner(make_app(settings), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    assert site._server is not None
    sockets = getattr(site._server, "sockets", [])
    bound_port = sockets[0].getsockname()[1] if sockets else port
    names = ", ".join(sorted(settings.tokens))
    print(f"emulator listening on http://{host}:{bound_port} (workspaces: {names})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(settings, args.host, args.port))
    except (ValueError, OSError) as exc:
        print(f"acexport emulator: {exc}", file=sys.stderr)
        return 2
    return 0
