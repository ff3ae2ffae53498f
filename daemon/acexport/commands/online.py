"""``check-config --online``: what only the services can say, asked once each.

Each token is proven with one request AC answers without making an export: a
range from the year 2000, which AC's retention refuses with a 400 after it has
accepted the token (a rejected token is an error first). The output store gets a
probe object written and deleted. Each problem is one line.
"""

from __future__ import annotations

import secrets
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

from pydantic import SecretStr
from yarl import URL

from ..ac.answers import origin_text
from ..ac.client import ExportClient, new_session
from ..config import Settings
from ..errors import AcexportError, AuthError, BeyondRetention
from ..ops.logging import register_secrets
from ..output.open import open_store
from ..windows import ExportWindow

_PROBE_DAY = datetime(2000, 1, 1, tzinfo=UTC)  # before any retention AC has


async def online_problems(settings: Settings, tokens: dict[str, SecretStr]) -> list[str]:
    """One line per problem: a token AC refused or could not be asked with, a store
    that cannot be written."""
    # Never in an error line; in one call, not a rebuild of the tables per token.
    register_secrets(token.get_secret_value() for token in tokens.values())
    problems = []
    async with new_session(settings.http.timeout.total_seconds()) as session:
        for name, ws in sorted(settings.workspaces.items()):
            client = ExportClient(session, ws.base_url, tokens[name])
            window = ExportWindow(_PROBE_DAY, _PROBE_DAY + timedelta(seconds=1))
            try:
                async with client.request("page", window):
                    pass  # answered (AC's retention reaches back that far): accepted too
            except BeyondRetention:
                pass  # refused for its age, after the token was accepted
            except AuthError as exc:
                problems.append(f"workspaces.{name}: the token was rejected: {exc}")
            except AcexportError as exc:
                where = origin_text(URL(ws.base_url))
                hint = " (AC's engine answers a rejected token so too)" if "500" in str(exc) else ""
                problems.append(f"workspaces.{name}: {where} could not be asked: {exc}{hint}")
            else:
                continue
            print(f"  workspace {name}: the token was accepted by {origin_text(URL(ws.base_url))}")
    problem = await _probe_store(settings)
    return problems + ([problem] if problem else [])


async def _probe_store(settings: Settings) -> str | None:
    """A probe object written and deleted in the output store, or why not."""
    store = open_store(settings, Path(settings.daemon.state_dir) / "tmp")
    key = PurePosixPath(f".acexport-probe-{secrets.token_hex(4)}")
    try:
        async with AsyncExitStack() as stack:
            await store.start(stack)
            await store.write_small(key, b"acexport check-config --online\n")
            await store.delete(key)
    except (AcexportError, OSError) as exc:
        return f"output {store.describe()}: a probe object could not be written: {exc}"
    print(f"  output {store.describe()}: a probe object was written and deleted")
    return None
