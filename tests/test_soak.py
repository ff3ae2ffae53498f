"""The chaos soak's quick mode: faults, kills, reloads, a full disk, a revoked token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_soak_loses_duplicates_corrupts_and_leaks_nothing() -> None:
    """`bench/soak.py --quick` ends with every window exactly once and no token in any log."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, summary + result.stderr[-2000:]
    for clean in (
        "lost=0",
        "duplicated=0",
        "corrupted=0",
        "leaks=0",
        "partial=0",
        "temp_left=0",
        "max_unready=1",
    ):
        assert clean in summary, summary
    assert "restarts=" in summary
    assert "restarts=0 " not in summary
