"""The alert rules in deploy/: valid for Prometheus, and their unit tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not installed (Debian's prometheus package; .ci/run installs it)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60
    )


def test_rules_are_valid() -> None:
    """`promtool check rules` accepts every rule."""
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_rules_fire_when_they_should() -> None:
    """`promtool test rules`: each alert fires on its scenario and stays quiet otherwise."""
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_only_name_metrics_the_daemon_exports() -> None:
    """Every acexport_* series a rule reads is one the daemon defines."""
    import re

    from acexport.ops.metrics import Metrics

    rules = (DEPLOY / "alerts.yml").read_text()
    named = set(re.findall(r"\b(acexport_[a-z_]+)", rules)) - {"acexport_job"}  # a label
    exported = {
        name
        for family in Metrics().registry.collect()
        for name in (family.name, f"{family.name}_total")
    }
    assert named
    assert named <= exported, named - exported


def test_the_compose_prometheus_config_loads_the_rules() -> None:
    """deploy/prometheus.yml (compose's monitoring profile) is valid, rules included."""
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout
