"""csi-sanity's Identity and Controller specs against the plugin on Cinder's real
RBDDriver and the session's Ceph cluster (the host kernel has no rbd module, so the
Node specs, which attach with krbd, run in the VM: tests/vm/test_csi_sanity.py).

Afterwards the pool holds no image: everything the suite made was deleted through
the plugin.
"""

from __future__ import annotations

from pathlib import Path

from csi_support import plugin, sanity
from rbd_support import POOL, RbdSite

#: Identity + Controller specs (those not needing a node attach).
FOCUS = r"Identity Service|Controller Server"


def test_controller_specs_on_rbd(rbd_site: RbdSite, tmp_path: Path) -> None:
    options = rbd_site.options(pool=POOL)
    driver = options.pop("volume_driver")
    config = plugin.write_config(
        tmp_path, backends=[{"name": "ceph", "driver": driver, "options": options}]
    )
    with plugin.running(config, "controller", tmp_path) as controller:
        node_dir = tmp_path / "node"
        node_dir.mkdir()
        node_config = plugin.write_config(node_dir, storage={})
        node_config.write_text(
            node_config.read_text().split("backends:")[0]
            + f"node:\n  state_dir: {node_dir / 'state'}\n  max_volumes: 8\n"
        )
        with plugin.running(node_config, "node", node_dir) as node:
            report = sanity.run(
                tmp_path / "sanity", node.endpoint, controller_endpoint=controller.endpoint,
                focus=FOCUS,
            )  # fmt: skip
        log = controller.log()
    sanity.assert_clean(report, minimum_passed=50)
    assert "RBDDriver" in log or "rbd" in log.lower()
    assert rbd_site.view.live_images(POOL) == set(), "the suite's volumes were all deleted"
