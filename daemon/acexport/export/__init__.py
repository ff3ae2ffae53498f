"""One export: what it asks AC for (``spec``), its life from submit to commit
(``run``), how patiently it polls (``timing``), what it does with AC's data
(``commit``). It knows no ledger: the lane passes in what history says.
"""

from .attempt import ExportObserver
from .commit import ExportOutcome, StoredFile
from .run import run_export
from .spec import ExportSpec, PlannedExport
from .timing import Timing, ready_lifetime_s

__all__ = [
    "ExportObserver",
    "ExportOutcome",
    "ExportSpec",
    "PlannedExport",
    "StoredFile",
    "Timing",
    "ready_lifetime_s",
    "run_export",
]
