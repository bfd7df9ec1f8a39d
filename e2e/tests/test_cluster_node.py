"""The single-node cluster (``e2e/cluster/cluster.py up --node``) runs real pods, and
``down`` leaves nothing on the host.

Why: every end-to-end test stands on this node. These prove, on real containerd and
kubelet, what the CSI plugin relies on: a pod on the pod network with a hostPath,
``kubectl logs``/``exec``, a pod that reaches the API server with its service-account
token (the controller's sidecars do), Bidirectional mount propagation under the
kubelet root (the node plugin mounts there), and a teardown that removes every process,
mount, loop device, network device, cgroup, kernel setting and host path it changed.

Needs root and ``make cluster-up``'s prerequisites (etcd-deps node-deps kube-binaries
containerd-binaries); a missing one fails the test, naming the target. Tests run in
file order on one cluster; the last one takes it down.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HARNESS_DIR = Path(__file__).resolve().parents[1] / "cluster"
#: A state directory under /tmp: unix sockets below the kubelet root must stay < 108 bytes.
STATE_PARENT = Path(tempfile.gettempdir())
#: Shared host directories where the node adds entries of its own.
HOST_DIRS_WITH_OUR_ENTRIES = (
    "/var/log/containers", "/var/lib/cni/results", "/run/containerd/s", "/var/lib/kubelet",
)  # fmt: skip


def _load(name: str) -> ModuleType:
    """A harness module by path (e2e/cluster is not a package; cluster.py finds its
    siblings itself)."""
    qualified = f"csi_e2e_node_test_{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    spec = importlib.util.spec_from_file_location(qualified, HARNESS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


harness = _load("cluster")
node = harness.node_mod
images = harness.images


# -- what the host looks like -----------------------------------------------------------------
def _host_snapshot(state: Path) -> dict[str, Any]:
    """Everything the node may touch outside its state directory."""

    def entries(directory: str) -> list[str]:
        path = Path(directory)
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    # Only names the node could have made: other jobs on the host make their own.
    netdevs = [p.name for p in Path("/sys/class/net").iterdir()
               if p.name == node.BRIDGE or p.name.startswith("veth")]  # fmt: skip
    cgroups = [str(h / n) for h in node.cgroup_hierarchies()
               for n in (node.CGROUP_ROOT, "kubepods", "k8s.io") if (h / n).exists()]  # fmt: skip
    return {
        "netdevs": sorted(netdevs),
        "cgroups": sorted(cgroups),
        "paths": [p for p in node.HOST_PATHS if os.path.lexists(p)],
        "entries": {d: entries(d) for d in HOST_DIRS_WITH_OUR_ENTRIES},
        "sysctls": {k: Path("/proc/sys", k).read_text().strip() for k in node.SYSCTLS},
        "mounts": node.mounts_under(state),
    }


def _loops_under(state: Path) -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):  # detached meanwhile
            if backing.read_text().strip().startswith(f"{state}/"):
                found.append(backing.parts[3])
    return found


# -- the cluster ------------------------------------------------------------------------------
@dataclass
class NodeCluster:
    state: Path
    env: dict[str, str]
    before: dict[str, Any]
    up_seconds: float
    timings: dict[str, float]
    image: str = ""
    down: subprocess.CompletedProcess[str] | None = None
    notes: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        done = subprocess.run([self.env["KUBECTL"], *args], input=stdin, env=self.tool_env(),
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {shlex.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def tool_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def apply_pod(self, name: str, spec: dict[str, Any]) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"terminationGracePeriodSeconds": 1, **spec}}  # fmt: skip
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))

    def wait_pod(self, name: str, condition: str = "condition=Ready", timeout: int = 120) -> None:
        done = subprocess.run([self.env["KUBECTL"], "wait", f"--for={condition}",
                               f"pod/{name}", f"--timeout={timeout}s"], env=self.tool_env(),
                              capture_output=True, text=True, timeout=timeout + 30,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            described = self.kubectl("describe", "pod", name, check=False)
            raise AssertionError(f"pod {name} not {condition}: {done.stderr}\n{described}")

    def run_script(self, *args: str) -> subprocess.CompletedProcess[str]:
        return _script(*args, "--state-dir", str(self.state))


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(HARNESS_DIR / "cluster.py"), *args],
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


def _require_prerequisites() -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.fail("the node cluster needs root (mounts, cgroups, a bridge)")
    kube_bin = harness.kube_bin_dir()
    containerd_bin = Path(os.environ.get("CONTAINERD_BIN") or node.DEFAULT_CONTAINERD_BIN)
    missing = harness.missing_kube_binaries(kube_bin)
    missing += [] if os.access(kube_bin / "kubelet", os.X_OK) else [str(kube_bin / "kubelet")]
    missing += node.missing_containerd_binaries(containerd_bin)
    missing += [str(p) for p in (node.RUNC, node.CNI_BIN_DIR / "bridge", images.BUSYBOX)
                if not p.exists()]  # fmt: skip
    if missing or harness.find_etcd() is None:
        pytest.fail(f"missing {', '.join(missing) or 'etcd'}; run 'make etcd-deps node-deps "
                    f"kube-binaries containerd-binaries'")  # fmt: skip
    if node.bridge_exists():
        pytest.fail(f"{node.BRIDGE} exists: another node cluster is up on this machine")
    return kube_bin, containerd_bin


@pytest.fixture(scope="module")
def node_cluster(request: pytest.FixtureRequest) -> Iterator[NodeCluster]:
    """A node cluster in a fresh state directory, for this module; always taken down."""
    kube_bin, containerd_bin = _require_prerequisites()
    state = Path(tempfile.mkdtemp(prefix="csi-e2e-node-", dir=STATE_PARENT)) / "state"
    before = _host_snapshot(state)
    started = time.monotonic()
    up = _script("up", "--node", "--state-dir", str(state), "--kube-bin", str(kube_bin),
                 "--containerd-bin", str(containerd_bin), "--timeout", "180")  # fmt: skip
    up_seconds = time.monotonic() - started
    cluster = None
    try:
        assert up.returncode == 0, f"cluster.py up failed:\n{up.stdout}\n{up.stderr}"
        env = _read_env(state / "env")
        timings = json.loads((state / "state.json").read_text())["timings"]
        cluster = NodeCluster(state, env, before, up_seconds, timings)
        yield cluster
    finally:
        if cluster is None or cluster.down is None:
            down = _script("down", "--state-dir", str(state))
            assert down.returncode == 0, down.stdout + down.stderr
        shutil.rmtree(state.parent, ignore_errors=True)
        if cluster is not None:
            _report(request, cluster)


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line)
        assert len(words) == 2 and words[0] == "export", line
        key, _, value = words[1].partition("=")
        env[key] = value
    return env


def _report(request: pytest.FixtureRequest, cluster: NodeCluster) -> None:
    """Print the timings (past pytest's output capture: this runs in a fixture)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_sep("-", "node cluster timings (seconds)")
        reporter.write_line(f"{'cluster.py up --node (total)':<40} {cluster.up_seconds:7.1f}")
        for label, seconds in cluster.timings.items():
            reporter.write_line(f"{label:<40} {seconds:7.1f}")
        for note in cluster.notes:
            reporter.write_line(note)


@pytest.fixture(scope="module")
def toolbox(node_cluster: NodeCluster) -> str:
    """busybox + kubectl, imported with ``cluster.py import``: the test pods' image."""
    kubectl = Path(node_cluster.env["KUBECTL"])
    image = images.busybox_image(images.IMAGE_CACHE / "test", name="toolbox",
                                 extra={"usr/local/bin/kubectl": kubectl})  # fmt: skip
    started = time.monotonic()
    done = node_cluster.run_script("import", str(image.archive))
    assert done.returncode == 0, done.stdout + done.stderr
    assert image.ref in done.stdout
    node_cluster.notes.append(f"{'toolbox image import (64 MB)':<40} "
                              f"{time.monotonic() - started:7.1f}")  # fmt: skip
    return str(image.ref)


# -- the tests --------------------------------------------------------------------------------
def test_node_is_ready_and_untainted(node_cluster: NodeCluster) -> None:
    env = node_cluster.env
    expected = {"KUBECONFIG", "KUBECTL", "ETCD_ENDPOINT", "CONTAINERD_ADDRESS", "CTR",
                "KUBELET_DIR", "NODE_NAME", "KUBE_API_HOST", "KUBE_API_PORT", "CLUSTER_STATE",
                "HOST_DATA_DIR"}  # fmt: skip
    assert expected <= set(env), expected - set(env)
    assert env["KUBE_API_HOST"] == node.BRIDGE_ADDRESS
    assert env["CLUSTER_STATE"] == str(node_cluster.state)
    assert Path(env["HOST_DATA_DIR"]).is_dir() and not any(Path(env["HOST_DATA_DIR"]).iterdir())
    item = json.loads(node_cluster.kubectl("get", "node", env["NODE_NAME"], "-o", "json"))
    ready = [c for c in item["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert not [t for t in item["spec"].get("taints") or [] if "not-ready" in t["key"]]
    info = item["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == f"containerd://{node.CONTAINERD_VERSION[1:]}"
    assert info["kubeletVersion"] == harness.KUBE_VERSION
    # the kubelet root is a shared mount (Bidirectional propagation needs it)
    shared = subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", env["KUBELET_DIR"]],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert shared.strip() == "shared"


def test_pod_with_hostpath_logs_and_exec(node_cluster: NodeCluster, toolbox: str) -> None:
    data = node_cluster.env["HOST_DATA_DIR"]
    container = {
        "name": "writer", "image": toolbox, "imagePullPolicy": "Never",
        "command": ["sh", "-c", "echo hello > /data/greeting; echo started; sleep 3600"],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }  # fmt: skip
    volume = {"name": "data", "hostPath": {"path": data, "type": "Directory"}}
    node_cluster.apply_pod("writer", {"containers": [container], "volumes": [volume]})
    node_cluster.wait_pod("writer")
    pod = json.loads(node_cluster.kubectl("get", "pod", "writer", "-o", "json"))
    assert pod["status"]["podIP"].startswith("10.244.0.")
    assert "started" in node_cluster.kubectl("logs", "writer")
    assert node_cluster.kubectl("exec", "writer", "--", "cat", "/data/greeting") == "hello\n"
    assert (Path(data) / "greeting").read_text() == "hello\n"


def test_pod_network_reaches_the_api_server_with_its_token(
    node_cluster: NodeCluster, toolbox: str
) -> None:
    """kubectl's in-cluster config: token, the CA's ca.crt, and the env override."""
    env = node_cluster.env
    node_cluster.apply_pod("api-client", {"restartPolicy": "Never", "containers": [{
        "name": "client", "image": toolbox, "imagePullPolicy": "Never",
        "command": ["sh", "-c", "kubectl get --raw /version && echo && "
                                "kubectl auth whoami -o jsonpath='{.status.userInfo.username}'"],
        "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": env["KUBE_API_HOST"]},
                {"name": "KUBERNETES_SERVICE_PORT", "value": env["KUBE_API_PORT"]}]}]})  # fmt: skip
    node_cluster.wait_pod("api-client", "jsonpath={.status.phase}=Succeeded")
    pod = json.loads(node_cluster.kubectl("get", "pod", "api-client", "-o", "json"))
    assert not pod["spec"].get("hostNetwork")
    assert pod["status"]["podIP"].startswith("10.244.0.")
    version, _, whoami = node_cluster.kubectl("logs", "api-client").rpartition("}")
    assert json.loads(version + "}")["gitVersion"] == harness.KUBE_VERSION
    assert whoami.strip() == "system:serviceaccount:default:default"


def test_bidirectional_mount_under_the_kubelet_dir_shows_on_the_host(
    node_cluster: NodeCluster, toolbox: str
) -> None:
    plugins = Path(node_cluster.env["KUBELET_DIR"]) / "plugins"
    node_cluster.apply_pod("propagator", {"hostNetwork": True, "containers": [{
        "name": "mounter", "image": toolbox, "imagePullPolicy": "Never",
        "securityContext": {"privileged": True},
        "command": ["sh", "-c", "mkdir -p /kubelet/e2e-prop && mount -t tmpfs e2e-prop "
                                "/kubelet/e2e-prop && echo mounted; sleep 3600"],
        "volumeMounts": [{"name": "kubelet", "mountPath": "/kubelet",
                          "mountPropagation": "Bidirectional"}]}],
        "volumes": [{"name": "kubelet", "hostPath": {"path": str(plugins),
                                                     "type": "DirectoryOrCreate"}}]})  # fmt: skip
    node_cluster.wait_pod("propagator")
    target = str(plugins / "e2e-prop")
    deadline = time.monotonic() + 30
    while target not in dict(node.mounts()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dict(node.mounts()).get(target) == "tmpfs"
    # Left mounted, with a loop device on a file in the state directory (what a CSI node
    # plugin leaves when it dies): `down` must clear both.
    image = Path(node_cluster.env["HOST_DATA_DIR"]) / "disk.img"
    with image.open("wb") as disk:
        disk.truncate(16 << 20)
    subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, check=True)
    assert _loops_under(node_cluster.state)


def test_down_leaves_nothing(node_cluster: NodeCluster) -> None:
    state, before = node_cluster.state, node_cluster.before
    started = time.monotonic()
    node_cluster.down = node_cluster.run_script("down")
    node_cluster.notes.append(f"{'cluster.py down':<40} {time.monotonic() - started:7.1f}")
    assert node_cluster.down.returncode == 0, node_cluster.down.stdout + node_cluster.down.stderr
    assert not state.exists()
    assert harness.processes_naming(str(state)) == []
    assert node.cgroup_processes(node.CGROUP_ROOT) == set()
    assert _loops_under(state) == []
    after = _host_snapshot(state)
    for key in ("mounts", "netdevs", "cgroups", "paths", "entries", "sysctls"):
        assert after[key] == before[key], f"{key}: before {before[key]}, after {after[key]}"
