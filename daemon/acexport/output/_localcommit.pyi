from collections.abc import Sequence
from os import PathLike

# The C module of local.py's commit (_localcommit.c says what it does).
STEP_ROOT: int
STEP_PART: int
STEP_PLACE: int

def commit(
    root: str | PathLike[str],
    parts: Sequence[str],
    data: str | PathLike[str],
    name: str,
    staged: str | PathLike[str],
    manifest: bytes,
    manifest_name: str,
    /,
) -> tuple[int, int, int] | None: ...
