"""The chart's install on the single-node cluster: what `make e2e` and
`make e2e-storage-suite` both set on top of their values file.

Why: the cluster harness puts the kubelet, the host data directory and the API server
where a temporary state directory says; the chart's host paths and API address must
follow it, the same way for every suite that installs the chart.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Protocol

RELEASE = "csi-driver"
RELEASE_NAMESPACE = "csi-driver"
CHART = Path(__file__).resolve().parents[2] / "charts" / "csi-driver"


def read_env(path: Path) -> dict[str, str]:
    """The ``export A=B`` lines of the cluster harness's env file."""
    values = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            values[key] = value
    return values


def volumes_dir(cluster: dict[str, str]) -> Path:
    """Host directory the release's FileDriver keeps its volumes in (made here)."""
    path = Path(cluster["HOST_DATA_DIR"]) / "volumes"
    path.mkdir(parents=True, exist_ok=True)
    return path


def node_state_dir(cluster: dict[str, str]) -> Path:
    return Path(cluster["HOST_DATA_DIR"]) / "node-state"


def cluster_overrides(cluster: dict[str, str]) -> list[str]:
    """``--set-string`` arguments placing the chart's host paths and API address on
    the harness's cluster (its env file's values)."""
    host_dir = volumes_dir(cluster)
    overrides = {
        "kubeletDir": cluster["KUBELET_DIR"],
        "kubernetesAPI.host": cluster["KUBE_API_HOST"],
        "kubernetesAPI.port": cluster["KUBE_API_PORT"],
        "hostDirectories[0]": str(host_dir),
        "config.backends[0].options.file_volumes_dir": str(host_dir),
        "config.node.local_roots[0]": str(host_dir),
        "node.stateDir": str(node_state_dir(cluster)),
        "node.iscsiDir": str(Path(cluster["HOST_DATA_DIR"]) / "iscsi"),
        "node.multipathDir": str(Path(cluster["HOST_DATA_DIR"]) / "multipath"),
    }
    return [arg for key, value in overrides.items() for arg in ("--set-string", f"{key}={value}")]


class _Runs(Protocol):
    def run(self, *args: str, timeout: float = ...) -> object: ...


def wait_for_node_plugin(kubectl: _Runs, timeout: int = 300) -> None:
    """Wait, as the README says, until every node plugin pod is Ready: its readiness
    probe holds until kubelet confirmed the registration (CSINode, topology labels).
    ``helm --wait`` does not cover it: it counts a DaemonSet ready with up to
    maxUnavailable (1) pods not ready, which on a single node is all of them."""
    kubectl.run(
        "-n", RELEASE_NAMESPACE, "rollout", "status", f"daemonset/{RELEASE}-node",
        f"--timeout={timeout}s", timeout=timeout + 30,
    )  # fmt: skip
