"""An emulator of Liferay Analytics Cloud's export API, for demos, tests and benchmarks.

It imports nothing of the daemon: it plays the remote service, nothing else.
"""

from .app import EmulatorSettings, FaultSettings, make_app
from .jobs import QueueSettings

__all__ = ["EmulatorSettings", "FaultSettings", "QueueSettings", "make_app"]
