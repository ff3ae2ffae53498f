"""An emulator of Liferay Analytics Cloud's export API, for demos, tests and benchmarks.

It imports nothing of the daemon: it plays the remote service, nothing else.
Names are loaded on first use (PEP 562), so the CLI's option parsing does not
import aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import EmulatorSettings, FaultSettings, make_app
    from .jobs import QueueSettings

__all__ = ["EmulatorSettings", "FaultSettings", "QueueSettings", "make_app"]


def __getattr__(name: str) -> Any:
    if name in ("EmulatorSettings", "FaultSettings", "make_app"):
        from . import app

        return getattr(app, name)
    if name == "QueueSettings":
        from .jobs import QueueSettings

        return QueueSettings
    raise AttributeError(name)
