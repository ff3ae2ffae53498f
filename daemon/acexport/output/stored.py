"""Which windows the output store already holds: the truth of what is done.

The output store is the truth of what is done (README, "Output"): a lost or
fresh state directory, a replacement host, a container without a state volume
all resume without asking AC again for data they already delivered. One
prefix listing per job type covers the windows asked about; no request per
window. What to do with the answer (the ledger) is the planner's business.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..windows import ExportWindow
from .layout import OutputLayout
from .store import OutputStore, common_prefix

StoredWindow = tuple[str, ExportWindow, str]  # type, window, the data's location


async def stored_windows(
    store: OutputStore,
    layout: OutputLayout,
    workspace: str,
    job: str,
    types: Iterable[str],
    windows: list[ExportWindow],
) -> list[StoredWindow]:
    """The (type, window, location) of ``windows`` whose manifest ``store`` holds."""
    found: list[StoredWindow] = []
    for type_ in types:
        keys = {w: layout.key_for(workspace, type_, job, w) for w in windows}
        if not keys:
            continue
        present = await store.manifests_under(common_prefix(list(keys.values())))
        found += [(type_, w, store.location(key)) for w, key in keys.items() if key in present]
    return found
