"""Privileges: os-brick's and Cinder's privsep, in-process as root and through the helper.

This process runs as root with the default ``privsep='auto'``: both contexts run their
privileged functions in-process. The node process (``node_agent.py``) was set up with
``privsep='helper', root_helper='sudo'``: each context starts the venv's
``privsep-helper`` through sudo, as a non-root deployment must.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from vmcase import PROTOCOLS, NodeAgent, lvm_options

from csi_driver import storage
from csi_driver.storage import runtime

CONTEXTS = {
    "os_brick": "os_brick.privileged.default",
    "cinder_sys_admin": "cinder.privsep.sys_admin_pctxt",
}


def test_as_root_privsep_runs_in_process(lvm_backend: Callable[[str], storage.Backend]) -> None:
    from cinder import privsep as cinder_privsep
    from os_brick import privileged

    assert runtime.settings().privsep == "auto" and runtime.settings().privsep_in_process
    volume = lvm_backend("nvmeof").create_volume(size=1)  # nvmet: Cinder's privsep
    try:
        volume.attach()  # os-brick's privsep (nvme connect)
        volume.detach()
    finally:
        volume.delete()
    for context in (privileged.default, cinder_privsep.sys_admin_pctxt):
        assert context.client_mode is False and context.channel is None


@pytest.mark.usefixtures("library")
def test_privsep_helper_through_sudo(node: NodeAgent) -> None:
    options = lvm_options("lvm-nvmeof-helper", **PROTOCOLS["nvmeof"])
    cycle = node.ok("volume_cycle", options=options)  # create, attach, write, detach, delete
    assert len(cycle["checksum"]) == 64
    state = node.ok("privsep")
    assert state["settings"] == {"privsep": "helper", "root_helper": "sudo"}
    assert state["client_mode"] == {"os_brick": True, "cinder_sys_admin": True}
    running = {d["context"]: d["uid"] for d in state["daemons"]}
    for context in CONTEXTS.values():
        assert running.get(context) == 0, state["daemons"]  # a root daemon per context
