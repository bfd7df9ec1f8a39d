"""The end-to-end session: a single-node cluster, the Ceph test cluster, one release.

Why here and not in tests/: these tests need root, containerd, a kubelet and the
images `make images` built; `make e2e` runs them after building all of that, and
`make test` never does.

- ``cluster``: `e2e/cluster/cluster.py up --node` in a short temp directory (unix
  socket paths under the kubelet root must stay below 108 bytes), always taken down.
- ``ceph``: the Ceph test cluster bound to the node's bridge address, so the
  controller pod (on the pod network) reaches it.
- ``release``: the README's install steps with `e2e/values/single-node.yaml`.

On a failure every component's log (pods' containers, kubelet, containerd, API
server, Ceph) is copied to ``e2e/.artifacts/<time>/`` and the folder is named in
the report.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

E2E_DIR = Path(__file__).resolve().parent.parent
REPO = E2E_DIR.parent
sys.path[:0] = [p for p in (str(E2E_DIR / "tests"),) if p not in sys.path]

from kube import Kubectl, Tool, save_cluster_logs  # noqa: E402
from release import (  # noqa: E402
    RELEASE,
    RELEASE_NAMESPACE,
    cluster_overrides,
    node_state_dir,
    read_env,
    volumes_dir,
    wait_for_node_plugin,
)

WORK_NAMESPACE = "e2e"
VALUES = E2E_DIR / "values" / "single-node.yaml"
ARTIFACTS = E2E_DIR / ".artifacts"
CEPH_POOL = "kube"
CEPH_USER = "kube"

_session: dict[str, Any] = {}


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"${name} is not set: run the end-to-end tests with `make e2e`")
    return value


def _harness(*args: str) -> None:
    command = [sys.executable, str(E2E_DIR / "cluster" / "cluster.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed: {(done.stderr or done.stdout)[-3000:]}")


@pytest.fixture(scope="session")
def cluster() -> Iterator[dict[str, str]]:
    state = Path(tempfile.mkdtemp(prefix="csi-e2e-", dir="/tmp"))
    _session["state"] = state
    try:
        _harness(
            "up", "--state-dir", str(state), "--node",
            "--kube-bin", _required_env("KUBE_BIN"),
            "--containerd-bin", _required_env("CONTAINERD_BIN"),
            "--images", _required_env("IMAGES_DIR"),
        )  # fmt: skip
        env = read_env(state / "env")
        _session["env"] = env
        yield env
    finally:
        _harness("down", "--state-dir", str(state))


@pytest.fixture(scope="session")
def tool_env(cluster: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(cluster)
    return env


@pytest.fixture(scope="session")
def kubectl(cluster: dict[str, str], tool_env: dict[str, str]) -> Kubectl:
    client = Kubectl(cluster["KUBECTL"], cluster["KUBECONFIG"], tool_env, WORK_NAMESPACE)
    _session["kubectl"] = client
    return client


@pytest.fixture(scope="session")
def helm(cluster: dict[str, str], tool_env: dict[str, str]) -> Tool:
    return Tool([_required_env("HELM"), f"--kubeconfig={cluster['KUBECONFIG']}"], tool_env)


@pytest.fixture(scope="session")
def host_dir(cluster: dict[str, str]) -> Path:
    """Host directory the release's FileDriver keeps its volumes in."""
    return volumes_dir(cluster)


@pytest.fixture(scope="session")
def ceph(cluster: dict[str, str]) -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location("ceph_harness", E2E_DIR / "ceph" / "cluster.py")
    assert spec and spec.loader
    ceph_harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceph_harness)
    directory = Path(cluster["CLUSTER_STATE"]) / "ceph"
    ceph_cluster = ceph_harness.CephCluster(directory, address=cluster["KUBE_API_HOST"])
    _session["ceph_dir"] = directory
    with ceph_cluster:
        ceph_cluster.create_pools(CEPH_POOL)
        ceph_cluster.create_user(CEPH_USER, [CEPH_POOL])
        yield ceph_cluster


@pytest.fixture(scope="session")
def release(
    cluster: dict[str, str], kubectl: Kubectl, helm: Tool, host_dir: Path, ceph: Any
) -> Iterator[dict[str, Any]]:
    """The chart installed as the README says; uninstalled by the last test (or here)."""
    client_dir = Path(cluster["CLUSTER_STATE"]) / "ceph-client"
    client_dir.mkdir(exist_ok=True)
    ceph.client_conf(client_dir / "ceph.conf", keyring=Path("/etc/ceph-client/keyring"))
    shutil.copy(ceph.keyring_path(CEPH_USER), client_dir / "keyring")
    for namespace in (RELEASE_NAMESPACE, WORK_NAMESPACE):  # the first may exist already
        kubectl.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl.run(
        "-n", RELEASE_NAMESPACE, "create", "secret", "generic", "ceph-client",
        f"--from-file=ceph.conf={client_dir / 'ceph.conf'}",
        f"--from-file=keyring={client_dir / 'keyring'}",
    )  # fmt: skip
    started = time.monotonic()
    helm.run(
        "install", RELEASE, str(REPO / "charts" / "csi-driver"),
        "--namespace", RELEASE_NAMESPACE, "-f", str(VALUES),
        *cluster_overrides(cluster),
        # Every volume is deleted before the uninstall: nothing to keep.
        "--set", "crds.keepOnUninstall=false",
        "--wait", "--timeout", "5m",
        timeout=420,
    )  # fmt: skip
    wait_for_node_plugin(kubectl)
    info = {
        "host_dir": host_dir,
        "node_state": node_state_dir(cluster),
        "installed_in": time.monotonic() - started,
        "uninstalled": False,
    }
    _session["release"] = info
    yield info
    if not info["uninstalled"]:
        helm.run("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "env" in _session:
        folder = _save_component_logs()
        report.sections.append(("component logs", f"every component's log: {folder}"))


def _save_component_logs() -> Path:
    """Copy pod logs, the harness's process logs and Ceph's logs to one folder (once per
    failing test; later failures get their own folder)."""
    folder = ARTIFACTS / time.strftime("%Y%m%d-%H%M%S")
    save_cluster_logs(_session.get("kubectl"), _session["state"], folder)
    ceph_dir = _session.get("ceph_dir")
    if ceph_dir and (ceph_dir / "log").is_dir():
        shutil.copytree(ceph_dir / "log", folder / "ceph", dirs_exist_ok=True)
    return folder
