"""csi-sanity, the CSI conformance suite, against the real plugin on FileDriver + SQLite.

Four runs: one process serving all services and, separately, a controller process
and a node process (the node in attach-only mode: no store, no backend options, so
it works from publish_context alone, signed by the controller), each with mount and
with raw block volumes; then the controller apart on each store with a server (etcd,
Kubernetes custom resources), the real server started by the test harness.
Node specs attach with loop devices and mount, so these need root. And a node process on
each older supported Cinder release beside a controller on the newest one.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from csi_support import plugin, releases, sanity

pytestmark = pytest.mark.skipif(
    not plugin.is_root(), reason="node specs need root: loop devices and mounts"
)

#: The suite has 103 specs; these runs pass 78 (the rest are listed skips).
MINIMUM_PASSED = 75


@pytest.mark.parametrize("access_type", ["mount", "block"])
def test_all_in_one_process(tmp_path: Path, access_type: str) -> None:
    config = plugin.write_config(
        tmp_path,
        volume_types={"sanity": {"extra_specs": {"purpose": "csi-sanity"}}},
        node={"max_volumes": 8},
    )
    with plugin.running(config, "all", tmp_path) as server:
        report = sanity.run(
            tmp_path / "sanity", server.endpoint, access_type=access_type,
            parameters={"volume_type": "sanity"},
        )  # fmt: skip
    sanity.assert_clean(report, MINIMUM_PASSED)
    assert plugin.leftovers(tmp_path) == []


@pytest.mark.parametrize("access_type", ["mount", "block"])
def test_controller_and_node_in_separate_processes(tmp_path: Path, access_type: str) -> None:
    _controller_and_node_apart(tmp_path, access_type)


def test_controller_on_the_etcd_store(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("etcd_server")
    persistence = {"storage": "etcd", "endpoints": [server.endpoint],
                   "prefix": f"/csi-sanity/{tmp_path.name}/"}  # fmt: skip
    _controller_and_node_apart(tmp_path, "mount", persistence)


def test_controller_on_the_kubernetes_store(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from csi_support.kube_store import ensure_crds, new_namespace

    plane = request.getfixturevalue("kube_apiserver")
    ensure_crds(plane)
    persistence = {"storage": "kubernetes", "namespace": new_namespace(plane, "csi-sanity"),
                   "kubeconfig": plane.kubeconfig}  # fmt: skip
    _controller_and_node_apart(tmp_path, "mount", persistence)


@pytest.mark.cross_release
@pytest.mark.parametrize("release", releases.OLDER)
def test_node_on_an_older_cinder_release(tmp_path: Path, release: str) -> None:
    """A node not yet upgraded serves what a controller on the newest release publishes."""
    node_python = releases.python(release)
    version = subprocess.run(
        [node_python, "-m", "csi_driver.cli", "--version"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    assert f"; cinder {release}." in version, version
    _controller_and_node_apart(tmp_path, "mount", node_python=node_python)


def _controller_and_node_apart(
    tmp_path: Path, access_type: str, persistence: dict | None = None,
    node_python: Path | None = None,
) -> None:  # fmt: skip
    # Both read one signing key, as a Secret mounted into both pods: the node stages
    # only what this controller published.
    key = tmp_path / "publish.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    key.chmod(0o600)
    controller_config = plugin.write_config(
        tmp_path, node={"max_volumes": 8}, signing_key_file=str(key),
        **({"storage": {"persistence_config": persistence}} if persistence else {}),
    )  # fmt: skip
    node_dir = tmp_path / "node-process"
    node_dir.mkdir()
    # The node's file has no store and no backends: all it knows comes in publish_context.
    # It may attach the controller's FileDriver files, and nothing else on the host.
    node_config = plugin.write_config(
        node_dir, backends=[], storage={"file_locks_path": str(node_dir / "locks")},
        node={"max_volumes": 8, "local_roots": [str(tmp_path / "volumes")]},
        signing_key_file=str(key),
    )  # fmt: skip
    node_config.write_text(node_config.read_text().replace("backends: []\n", ""))
    with (
        plugin.running(controller_config, "controller", tmp_path) as controller,
        plugin.running(node_config, "node", node_dir, python=node_python or sys.executable) as node,
    ):
        report = sanity.run(
            tmp_path / "sanity", node.endpoint, controller_endpoint=controller.endpoint,
            access_type=access_type,
        )  # fmt: skip
        node_log = node.log()
    sanity.assert_clean(report, MINIMUM_PASSED)
    assert "NodeStageVolume ok" in node_log
    assert "SECURITY" not in node_log
    assert plugin.leftovers(tmp_path) == []
