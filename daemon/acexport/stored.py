"""Windows already in the output store are done, whatever the ledger says.

The output store is the truth of what is done (design section 5): a lost or
fresh state directory, a replacement host, a container without a state volume
all resume without asking AC again for data they already delivered. One
prefix listing per job and type covers the windows asked about; no request
per window.
"""

from __future__ import annotations

import structlog

from .config import JobSettings
from .output import OutputLayout, OutputStore, common_prefix
from .state import StateStore
from .windows import ExportWindow

log = structlog.get_logger("acexport.stored")


async def adopt_stored(
    ledger: StateStore,
    store: OutputStore,
    layout: OutputLayout,
    job: JobSettings,
    windows: list[ExportWindow],
) -> int:
    """Mark the windows of ``job`` whose manifest is in ``store`` as done; how many changed."""
    found: list[tuple[str, ExportWindow, str]] = []
    for type_ in job.types:
        keys = {w: layout.key_for(job.workspace, type_, job.name, w) for w in windows}
        if not keys:
            continue
        present = await store.manifests_under(common_prefix(list(keys.values())))
        found += [(type_, w, store.location(key)) for w, key in keys.items() if key in present]
    adopted = await ledger.adopt_stored(job.name, job.workspace, found)
    if adopted:
        log.info("exports_found_in_store", job=job.name, count=adopted, stored=len(found))
    return adopted
