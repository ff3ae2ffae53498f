"""``acexport verify``: check the output's files against their manifests.

Exit 0 when every file checked matches; 1, with one line per file that does
not, when nothing was checked, when the output root is missing, or when a data
file has no manifest.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from ..config import Settings
from ..output.layout import OutputLayout
from ..output.open import open_store
from ..output.verify import Manifests, Verified, verify_store
from ..windows import iso_ms, parse_bound
from . import ExitCode
from .common import UsageError, counted, exit_code_of, load


def main(args: argparse.Namespace) -> int:
    def body() -> int:
        settings, _ = load(args.config)
        wanted = _selection(args, settings)
        root = settings.output_dir() if settings.output.s3_location() is None else None
        if root is not None and not root.is_dir():
            print(f"the output root {root} does not exist: nothing to verify")
            return ExitCode.FAILED
        whole = args.job is None and args.from_ is None
        result = asyncio.run(_verify(settings, wanted, whole))
        for problem in result.problems:
            print(problem)
        if result.problems:
            problems, checked = len(result.problems), result.checked
            print(f"{counted(problems, 'problem')} in {counted(checked, 'file')} checked")
            return ExitCode.FAILED
        if not result.checked:
            print("no file was checked: no manifest matches (checked nothing is no proof)")
            return ExitCode.FAILED
        print(f"{counted(result.checked, 'file')} ({result.bytes:,} bytes) match their manifests")
        return ExitCode.OK

    return exit_code_of("verify", body)


def _selection(args: argparse.Namespace, settings: Settings) -> Manifests:
    """Which manifests to check: of ``--job``, windows starting in ``[--from, --to]``."""
    if (args.from_ is None) != (args.to is None):
        raise UsageError("give --from and --to together")
    zone = None
    if args.job is not None:
        job = settings.jobs_by_name.get(args.job)
        if job is None:
            known = ", ".join(j.name for j in settings.jobs) or "none"
            raise UsageError(f"no job {args.job!r} (known: {known})")
        zone = settings.workspaces[job.workspace].zone
    first = last = ""
    if args.from_ is not None:
        zone = zone or ZoneInfo("UTC")
        try:
            first = iso_ms(parse_bound(args.from_, zone, end=False))
            last = iso_ms(parse_bound(args.to, zone, end=True))
        except ValueError as exc:
            raise UsageError(f"--from/--to: {exc}") from None

    def wanted(fields: dict[str, Any]) -> bool:
        if args.job is not None and fields.get("job") != args.job:
            return False
        start = fields.get("fromDate")
        return not first or (isinstance(start, str) and first <= start < last)

    return wanted


async def _verify(settings: Settings, wanted: Manifests, whole: bool) -> Verified:
    """``whole``: every file is in question, so a data file without a manifest is one
    of the problems (with a selection, it cannot be told whose it is)."""
    layout = OutputLayout.from_settings(settings.output)
    with tempfile.TemporaryDirectory(prefix="acexport-verify-") as temp:
        store = open_store(settings, Path(temp))
        async with AsyncExitStack() as stack:
            await store.start(stack)
            return await verify_store(store, wanted, layout.could_be_key if whole else None)
