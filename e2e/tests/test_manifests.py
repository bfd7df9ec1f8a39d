"""The chart and the kustomize overlays, accepted by the real API server (dry run).

kubeconform (`make manifests-check`) checks them against the published schemas
offline; the API server also runs defaulting, admission and the CRDs' own schemas.
Runs before the install (file order): the VolumeSnapshot CRDs are created for real
here (the chart's crds/, which helm then finds in place and skips), the rest only
dry-run.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import RELEASE, RELEASE_NAMESPACE, VALUES
from kube import Kubectl, Tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "csi-driver"


def dry_run(kubectl: Kubectl, manifests: str) -> str:
    done = kubectl.run("apply", "--dry-run=server", "-f", "-", stdin=manifests)
    return done.stdout


def test_chart_and_overlays_pass_the_api_server_dry_run(
    kubectl: Kubectl, helm: Tool, cluster: dict[str, str]
) -> None:
    kubectl.run("apply", "-f", str(CHART / "crds"))
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CHART / "crds"))
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": RELEASE_NAMESPACE}}
    )
    rendered = helm.run(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "-f", str(VALUES)
    ).stdout
    accepted = dry_run(kubectl, rendered)
    kinds = {line.split("/", 1)[0] for line in accepted.splitlines()}
    for kind in ("csidriver.storage.k8s.io", "deployment.apps", "daemonset.apps",
                 "customresourcedefinition.apiextensions.k8s.io",
                 "volumesnapshotclass.snapshot.storage.k8s.io"):  # fmt: skip
        assert kind in kinds, f"{kind} missing from the dry run: {accepted}"
    kustomize = os.environ["KUSTOMIZE"]
    for overlay in sorted((REPO / "deploy" / "overlays").iterdir()):
        built = subprocess.run(
            [kustomize, "build", str(overlay)], capture_output=True, text=True, check=True
        ).stdout
        assert "daemonset.apps" in dry_run(kubectl, built), overlay.name
