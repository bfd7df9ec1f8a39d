"""The whole csi-sanity suite, Node specs included, on real kernel storage in the VM:
LVM + LIO iSCSI (with CHAP) and Ceph RBD attached with krbd.

The controller and the node run as separate plugin processes, as in a cluster: the
node's config names no backend and no store, so every attach it makes comes from the
serialized Connection in publish_context (iSCSI portal, IQN and CHAP credentials; RBD
monitors and keyring).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from csi_support import plugin, sanity
from vmcase import PROTOCOLS, lvm_options, rbd_options

SANITY_POOL, SANITY_USER = "csi-sanity", "csi-sanity"

#: Every spec but the listed skips passes; the whole suite has 103.
MINIMUM_PASSED = 75

#: A whole suite under software emulation: each LIO export runs cinder-rtstool (~17 s a
#: publish), so the node allows 2 volumes, which keeps the attach-limit spec short.
pytestmark = pytest.mark.timeout(2400)


def _backend(options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    name = options.pop("volume_backend_name")
    return {"name": name, "driver": options.pop("volume_driver"), "options": options}


def _run_split(tmp_path: Path, backend: dict[str, Any], results_dir: Path) -> sanity.Report:
    controller_config = plugin.write_config(tmp_path, backends=[backend])
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    node_config = node_dir / "config.yaml"
    node_config.write_text(
        f"storage:\n  file_locks_path: {node_dir / 'locks'}\n"
        f"node:\n  state_dir: {node_dir / 'state'}\n  max_volumes: 2\n"
        f"  mount_roots: [{tmp_path}]\n"
    )
    try:
        with (
            plugin.running(controller_config, "controller", tmp_path) as controller,
            plugin.running(node_config, "node", node_dir) as node,
        ):
            report = sanity.run(
                tmp_path / "sanity", node.endpoint, controller_endpoint=controller.endpoint
            )
    finally:
        for log in tmp_path.glob("*.log"):
            (results_dir / f"sanity-{backend['name']}-{log.name}").write_bytes(log.read_bytes())
        for log in node_dir.glob("*.log"):
            (results_dir / f"sanity-{backend['name']}-node-{log.name}").write_bytes(
                log.read_bytes()
            )
    return report


def test_full_suite_on_lvm_iscsi(tmp_path: Path, results_dir: Path) -> None:
    backend = _backend(lvm_options("sanity-lvm-iscsi", **PROTOCOLS["iscsi"]))
    report = _run_split(tmp_path, backend, results_dir)
    sanity.assert_clean(report, MINIMUM_PASSED)
    assert plugin.leftovers(tmp_path) == []


def test_full_suite_on_rbd_krbd(tmp_path: Path, results_dir: Path, ceph_cluster: Any) -> None:
    # A pool and user of its own: the krbd test compares its pool with its store.
    ceph_cluster.create_pools(SANITY_POOL)
    ceph_cluster.create_user(SANITY_USER, [SANITY_POOL])
    options = rbd_options(
        "sanity-rbd", ceph_cluster, rbd_pool=SANITY_POOL, rbd_user=SANITY_USER,
        rbd_keyring_conf=str(ceph_cluster.keyring_path(SANITY_USER)),
    )  # fmt: skip
    report = _run_split(tmp_path, _backend(options), results_dir)
    sanity.assert_clean(report, MINIMUM_PASSED)
    assert plugin.leftovers(tmp_path) == []
    images = ceph_cluster.rbd("ls", SANITY_POOL).split()
    # Cinder's RBD driver renames a volume whose snapshot still has clones to
    # "<name>.deleted" and leaves it for later; no live volume may remain.
    assert [i for i in images if not i.endswith(".deleted")] == [], images
