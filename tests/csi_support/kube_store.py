"""The Kubernetes metadata store on the session's real kube-apiserver, for tests.

``kube_store(request)`` applies ``deploy/crds/`` once per API server (and waits
until they are served), makes a fresh namespace, and returns a store on it. The
API server comes from the ``kube_apiserver`` fixture (tests/csi_support/cluster.py),
which fails rather than skips when it cannot be started.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from csi_driver.storage.persistence.kubernetes import KubernetesStore

CRDS = Path(__file__).resolve().parents[2] / "deploy" / "crds"
CRD_NAMES = [
    "csivolumes.metadata.csi-driver.dev",
    "csisnapshots.metadata.csi-driver.dev",
    "csiconnections.metadata.csi-driver.dev",
    "csikeyvalues.metadata.csi-driver.dev",
]
_applied: set[str] = set()
_lock = threading.Lock()


def kubectl(plane: Any, *args: str, stdin: str | None = None, timeout: float = 60.0) -> str:
    """Run kubectl as admin against ``plane``; its output (AssertionError if it fails)."""
    done = subprocess.run([plane.kubectl, *args], env=plane.kubectl_env(), input=stdin,
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr or done.stdout}"
    return done.stdout


def ensure_crds(plane: Any) -> None:
    """Apply the CRDs to ``plane`` once, and wait until the API server serves them."""
    with _lock:
        if plane.kubeconfig in _applied:
            return
        kubectl(plane, "apply", "--server-side", "-f", str(CRDS))
        kubectl(plane, "wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{name}" for name in CRD_NAMES))  # fmt: skip
        # Established can come a moment before the resources are served.
        deadline = time.monotonic() + 30
        while True:
            out = kubectl(
                plane, "api-resources", "--api-group=metadata.csi-driver.dev", "-o", "name"
            )
            if len(out.split()) == len(CRD_NAMES):
                break
            assert time.monotonic() < deadline, f"CRDs not served: {out!r}"
            time.sleep(0.2)
        _applied.add(plane.kubeconfig)


def new_namespace(plane: Any, prefix: str = "csi-test") -> str:
    """A fresh namespace (left behind: the test API server has no controller to empty it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    kubectl(plane, "create", "-f", "-", stdin=json.dumps(manifest))
    return name


def kube_store(request: pytest.FixtureRequest, **options: Any) -> KubernetesStore:
    """A store on a fresh namespace of the session's kube-apiserver."""
    plane = request.getfixturevalue("kube_apiserver")
    ensure_crds(plane)
    namespace = new_namespace(plane)
    return KubernetesStore(namespace=namespace, kubeconfig=plane.kubeconfig, **options)
