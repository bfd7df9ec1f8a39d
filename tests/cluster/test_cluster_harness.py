"""The etcd / Kubernetes harness (e2e/cluster/cluster.py) does what the tests rely on.

Real servers: Debian's etcd (``make etcd-deps``) and kube-apiserver v1.37.2 built by
``make kube-binaries``; the fixtures come from ``tests/csi_support/cluster.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from csi_support import cluster as cluster_fixtures
from csi_support.cluster import HARNESS, harness, record_timing


def _kubectl(plane: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([plane.kubectl, f"--kubeconfig={plane.kubeconfig}", *args],
                          env=plane.kubectl_env(), capture_output=True, text=True, timeout=60,
                          check=check)  # fmt: skip


def test_etcd_put_get_and_etcdctl(etcd_server: Any) -> None:
    key = f"/harness-test/{uuid.uuid4().hex}"
    etcd_server.put(key, "value-1")
    assert etcd_server.get(key) == "value-1"
    assert etcd_server.count("/harness-test/") >= 1
    etcdctl = harness.find_etcdctl()
    assert etcdctl is not None, "etcdctl missing; run 'make etcd-deps' (Debian's etcd-client)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    read = subprocess.run([str(etcdctl), f"--endpoints={etcd_server.endpoint}", "get", key,
                           "--print-value-only"], env=env, capture_output=True, text=True,
                          timeout=30, check=True)  # fmt: skip
    assert read.stdout.strip() == "value-1"


def test_etcd_restarts_on_the_same_endpoint_with_its_data(etcd_server: Any) -> None:
    endpoint, key = etcd_server.endpoint, f"/harness-test/{uuid.uuid4().hex}"
    etcd_server.put(key, "kept")
    etcd_server.stop()
    try:
        assert not etcd_server.running
        with pytest.raises(OSError):
            etcd_server.get(key)
    finally:
        etcd_server.start()
    record_timing("etcd stop", etcd_server.timings["stop"])
    record_timing("etcd restart (to /health)", etcd_server.timings["start"])
    assert etcd_server.endpoint == endpoint
    assert etcd_server.get(key) == "kept"


def test_kube_apiserver_readyz_and_kubectl(kube_apiserver: Any) -> None:
    assert _kubectl(kube_apiserver, "get", "--raw", "/readyz").stdout.strip() == "ok"
    namespaces = _kubectl(kube_apiserver, "get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(namespaces)
    version = json.loads(_kubectl(kube_apiserver, "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == harness.KUBE_VERSION
    assert version["clientVersion"]["gitVersion"] == harness.KUBE_VERSION
    # The API server keeps its objects under its own prefix of its own etcd.
    assert kube_apiserver.etcd.count(kube_apiserver.etcd_prefix + "/") > 0


def test_kube_apiserver_restarts_on_the_same_port_with_its_data(kube_apiserver: Any) -> None:
    name = f"harness-{uuid.uuid4().hex[:8]}"
    server = kube_apiserver.server
    kube_apiserver.run_kubectl("create", "configmap", name, "--from-literal=k=v")
    kube_apiserver.stop()
    try:
        down = _kubectl(kube_apiserver, "get", "configmap", name, "--request-timeout=5s",
                        check=False)  # fmt: skip
        assert down.returncode != 0
    finally:
        kube_apiserver.start()
    record_timing("kube-apiserver stop", kube_apiserver.timings["stop"])
    record_timing("kube-apiserver restart (to /readyz)", kube_apiserver.timings["apiserver start"])
    assert kube_apiserver.server == server
    value = kube_apiserver.run_kubectl("get", "configmap", name, "-o", "jsonpath={.data.k}")
    assert value == "v"
    kube_apiserver.run_kubectl("delete", "configmap", name)


def test_cluster_up_and_down_leave_nothing(tmp_path: Path) -> None:
    """The script behind make cluster-up/cluster-down, on a state dir of its own."""
    state = tmp_path / "state"

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(HARNESS), *args, "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=240, check=False)  # fmt: skip

    up = script("up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        recorded = json.loads((state / "state.json").read_text())
        assert set(recorded["pids"]) == {
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"
        }  # fmt: skip
        env_lines = (state / "env").read_text().splitlines()
        env = dict(line.removeprefix("export ").split("=", 1) for line in env_lines)
        assert env["ETCD_ENDPOINT"].startswith("http://127.0.0.1:")
        kubectl_env = {**os.environ, "KUBECONFIG": env["KUBECONFIG"],
                       "KUBECACHEDIR": env["KUBECACHEDIR"]}  # fmt: skip
        readyz = subprocess.run([env["KUBECTL"], "get", "--raw", "/readyz"], env=kubectl_env,
                                capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        assert readyz.stdout.strip() == "ok"
        again = script("up")
        assert again.returncode == 0 and "already up" in again.stdout, again.stdout
        assert json.loads((state / "state.json").read_text())["pids"] == recorded["pids"]
    finally:
        down = script("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state.exists()
    assert harness.processes_naming(str(state)) == []
    for pid in recorded["pids"].values():
        assert not Path(f"/proc/{pid}").exists() or harness._alive(pid) is False


def test_missing_binaries_fail_naming_the_make_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBE_BIN", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"run 'make kube-binaries'"):
        cluster_fixtures._require_kube_binaries()
    monkeypatch.setattr(harness, "find_etcd", lambda etcd=None: None)
    with pytest.raises(pytest.fail.Exception, match=r"run 'make etcd-deps'"):
        cluster_fixtures._require_etcd()
    with pytest.raises(harness.ClusterError, match=r"run 'make kube-binaries'"):
        harness.ControlPlane(tmp_path, tmp_path, "http://127.0.0.1:1").start()
