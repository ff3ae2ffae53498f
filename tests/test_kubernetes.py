"""deploy/kubernetes: every manifest valid for a current Kubernetes (offline, against its
OpenAPI schema), the kustomization complete, the shipped configs valid for acexport."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

KUBE = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
VERSION = "1.34.0"  # a current release; the bundled schemas reach further


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


@pytest.mark.parametrize(
    ("name", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else v["kind"]
)
def test_every_manifest_is_valid_kubernetes(name: str, doc: dict[str, Any]) -> None:
    """Strict: an unknown or misspelt field is an error too."""
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_kustomization_lists_the_daemon_and_never_the_cronjob() -> None:
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    resources = kustomization["resources"]
    assert all((KUBE / resource).exists() for resource in resources)
    assert "cronjob.yaml" not in resources  # the alternative: two exporters never at once
    kinds = {doc["kind"] for name, doc in documents() if name in resources}
    assert kinds == {"ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service"}


def test_the_deployment_is_one_non_root_read_only_replica_probed_on_healthz() -> None:
    (deployment,) = [doc for _, doc in documents() if doc["kind"] == "Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"] == "512Mi"
    (service,) = [doc for _, doc in documents() if doc["kind"] == "Service"]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("configmap", ["acexport-config", "acexport-cron-config"])
def test_the_configmaps_config_passes_check_config_offline(tmp_path: Path, configmap: str) -> None:
    (doc,) = [
        d for _, d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == configmap
    ]
    config = tmp_path / "config.toml"
    config.write_text(doc["data"]["config.toml"])
    result = subprocess.run(
        [sys.executable, "-m", "acexport", "check-config", "--offline", "--config", str(config)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "job nightly" in result.stdout
