"""Hardening round 3 (issue 34): the powers of the last round composed: retention
refusals, restatement, coalescing, snapshots and the store as truth, each case a
reproduced defect that fails before its fix. Against the emulator on 127.0.0.1,
real files, the real ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acexport.ledger import LedgerState, read_rows
from acexport.retention import LearnedRetention, effective_months, refusal_fits
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import job, run_cli, write_config

pytestmark = pytest.mark.slow


# -- item 1: a retention refusal teaches only what can be true ----------------------


def test_a_refusal_fits_only_a_plausible_retention_the_window_lies_before() -> None:
    now = datetime(2026, 12, 6, 12, tzinfo=UTC)
    old = now - timedelta(days=420)
    young = now - timedelta(days=4)
    assert refusal_fits(13, old, now)
    assert not refusal_fits(0, old, now)  # "0 months": no workspace keeps nothing
    assert not refusal_fits(500, old, now)
    assert not refusal_fits(13, young, now)  # a 4-day-old window is inside 13 months
    assert refusal_fits(1, now - timedelta(days=40), now)


def test_a_learned_retention_holds_only_under_the_configured_one_it_was_learned_with() -> None:
    assert effective_months(13, LearnedRetention(6, 13)) == 6
    assert effective_months(12, LearnedRetention(6, 13)) == 12  # the operator changed it
    assert effective_months(13, LearnedRetention(0, 13)) == 13
    assert effective_months(13, LearnedRetention(6, None)) == 6  # stored by an older version
    assert LearnedRetention.from_text("6") == LearnedRetention(6, None)
    assert LearnedRetention.from_text("{not json") is None
    learned = LearnedRetention(6, 13, "AC refused page 2025-01-01", "2026-12-06T12:00:00+00:00")
    assert LearnedRetention.from_text(learned.to_text()) == learned


@pytest.mark.parametrize(("says", "answered_as"), [(0, 400), (0, 500), (13, 400)])
async def test_a_refusal_that_cannot_be_true_fails_the_window_visibly_and_teaches_nothing(
    emulator: EmulatorFactory, tmp_path: Path, says: int, answered_as: int
) -> None:
    """Reproduced: AC refusing every window "for 0 months" (or a 2-day-old one "for 13
    months") made every window of the workspace beyond_retention, final, while `run
    --once` and `status` exited 0. Now the windows fail as rejections (exit 1, status
    exit 1), nothing is learned, and the next run asks again."""
    emu = await emulator(
        tokens={"acme": "acme-token"},
        retention_months=0,  # every range is refused...
        retention_says=says,  # ... naming this retention
        retention_as=answered_as,
        records=2,
    )
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="2d", lag="0s"))

    code, _, err = await run_cli("run", "--once", "--config", str(config))

    assert code == 1, err
    rows = await read_rows(tmp_path / "state")
    assert rows
    assert all(r.state is LedgerState.FAILED for r in rows), [r.state for r in rows]
    assert "retention_refusal_ignored" in err
    code, out, _ = await run_cli("status", "--config", str(config))
    assert code == 1
    assert "retention: 1200 months (configured)" in out.decode()
    code, _, _ = await run_cli("run", "--once", "--config", str(config))
    assert code == 1
    again = await read_rows(tmp_path / "state")
    assert all(r.failures == 2 for r in again)  # asked again: nothing was made final


async def test_a_true_refusal_is_learned_and_shown_with_its_reason(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    emu = await emulator(tokens={"acme": "acme-token"}, retention_months=2, records=2)
    config = write_config(tmp_path, emu, job("p", "acme", types=["page"], catch_up="0s"))
    start = (datetime.now(UTC) - timedelta(days=75)).date().isoformat()
    end = (datetime.now(UTC) - timedelta(days=73)).date().isoformat()

    code, _, err = await run_cli(
        "backfill", "--config", str(config), "--job", "p", "--from", start, "--to", end
    )

    assert code == 0, err
    code, out, _ = await run_cli("status", "--config", str(config))
    assert "retention: 2 months (learned from AC" in out.decode()
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert "retention: 2 months (learned from AC" in out.decode()
    config.write_text(config.read_text().replace("retention = 1200", "retention = 14"))
    code, out, _ = await run_cli("check-config", "--config", str(config))
    assert "retention: 14 months (AC named 2 months while 1200 were configured" in out.decode()
