"""Cinder's LVM driver end to end, with LIO iSCSI (CHAP) and with NVMe/TCP (nvmet).

One test per target runs the life cycle of issue #4: create, attach with os-brick,
mkfs and write, detach, snapshot, volume from snapshot, attach (in the node process,
from the serialized connection), the data is there, extend while attached, detach,
delete everything; the store, the kernel and LVM agree at every step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import vmdisk
from vmcase import (
    PROTOCOLS,
    NodeAgent,
    lvm_options,
    timed,
    undo,
    undo_delete,
    undo_detach,
    undo_disconnect,
)

from csi_driver import storage
from csi_driver.storage import runtime

GiB = 1024**3
DEVICE = {"iscsi": re.compile(r"/dev/sd[a-z]+$"), "nvmeof": re.compile(r"/dev/nvme\d+n\d+$")}


def check_exported(protocol: str, conn: storage.Connection) -> None:
    """The target the kernel serves matches the connection info the driver returned."""
    data = conn.connection_info["data"]
    if protocol == "iscsi":
        assert conn.protocol == "iscsi"
        assert data["target_portal"] == "127.0.0.1:3260"
        assert data["auth_method"] == "CHAP" and data["auth_username"] and data["auth_password"]
        chap = vmdisk.lio_chap(data["target_iqn"])
        assert chap["authentication"] == "1"  # the target refuses logins without CHAP
        assert chap[conn.connector["initiator"]] == data["auth_username"]
    else:
        assert conn.protocol == "nvmeof"
        nqn = data.get("target_nqn") or data["nqn"]
        assert nqn in vmdisk.nvmet_subsystems()
        port = vmdisk.nvmet_port(PROTOCOLS["nvmeof"]["nvmet_port_id"])
        assert port is not None and port["port"] == "4420" and nqn in port["subsystems"]


def check_nothing_attached(protocol: str, conn: storage.Connection) -> None:
    """No initiator session or controller is left for this connection's target."""
    data = conn.connection_info["data"]
    if protocol == "iscsi":
        assert data["target_iqn"] not in vmdisk.iscsi_sessions()
    else:
        assert (data.get("target_nqn") or data["nqn"]) not in vmdisk.nvme_connected()


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_lvm_volume_life_cycle(
    protocol: str,
    lvm_backend: Callable[[str], storage.Backend],
    node: NodeAgent,
    cleanup: ExitStack,
    record_property: Callable[[str, object], None],
) -> None:
    backend = lvm_backend(protocol)
    store = runtime.store()
    vg = backend.config["volume_group"]
    timings: dict[str, float] = {}

    # create
    source = backend.create_volume(size=1, name=f"{protocol}-source")
    undo_delete(cleanup, source)
    assert vmdisk.logical_volumes(vg)[vmdisk.volume_lv(source.id)] == GiB

    # attach here (os-brick in this process, privsep in-process), mkfs + write
    with timed(timings, "attach_s"):
        conn = source.attach()
    undo_detach(cleanup, source)
    assert conn.path and DEVICE[protocol].match(conn.path), conn.path
    assert vmdisk.is_block_device(conn.path) and vmdisk.device_size(conn.path) == GiB
    stored = store.get_connections(connection_id=conn.id)[0]
    assert stored["status"] == "attached" and stored["device"]["path"] == conn.path
    assert source.status == "in-use"
    check_exported(protocol, conn)
    checksum = vmdisk.format_and_write(conn.path)

    # detach: initiator logged out, export removed, record gone
    with timed(timings, "detach_s"):
        source.detach()
    check_nothing_attached(protocol, conn)
    assert store.get_connections(volume_id=source.id) == []
    assert source.status == "available" and source.connections == []

    # snapshot, and a volume from it
    snapshot = source.create_snapshot(name=f"{protocol}-snap")
    undo_delete(cleanup, snapshot)
    restored = snapshot.create_volume(name=f"{protocol}-restored")
    undo_delete(cleanup, restored)
    lvs = vmdisk.logical_volumes(vg)
    assert f"_snapshot-{snapshot.id}" in lvs and vmdisk.volume_lv(restored.id) in lvs

    # attach in the node process, from the serialized connection, as a node plugin would
    properties = node.ok("properties")["properties"]
    node.ok("backend", options=lvm_options(backend.name, **PROTOCOLS[protocol]))
    with timed(timings, "connect_s"):
        conn2 = restored.connect(properties)
    undo_disconnect(cleanup, conn2)
    attached = node.ok("attach", connection=conn2.jsons)
    timings["node_attach_s"] = attached["seconds"]
    undo(cleanup, lambda: node.call("detach", connection_id=conn2.id))
    assert DEVICE[protocol].match(attached["path"])
    # os-brick rewrites the connection properties it is given (NVMe-oF converts their
    # format in place); the connection's record must stay what the driver returned
    assert attached["info_unchanged"]
    # the data is there
    assert node.ok("read_back", device=attached["path"])["checksum"] == checksum

    # extend while attached
    with timed(timings, "extend_s"):
        restored.extend(2)
    assert restored.size == 2 and store.get_volumes(volume_id=restored.id)[0]["size"] == 2
    assert vmdisk.logical_volumes(vg)[vmdisk.volume_lv(restored.id)] == 2 * GiB

    # detach on the node, disconnect on the controller
    timings["node_detach_s"] = node.ok("detach", connection_id=conn2.id)["seconds"]
    check_nothing_attached(protocol, conn2)
    with timed(timings, "disconnect_s"):
        conn2.disconnect()
    assert restored.status == "available"

    # delete all: nothing left in LVM or in the store
    restored.delete()
    snapshot.delete()
    source.delete()
    names = set(vmdisk.logical_volumes(vg))
    for made in (vmdisk.volume_lv(source.id), vmdisk.volume_lv(restored.id)):
        assert made not in names
    assert f"_snapshot-{snapshot.id}" not in names
    assert not [v for v in store.get_volumes(backend=backend.name) if v["id"] in
                (source.id, restored.id)]  # fmt: skip
    assert store.get_snapshots(snapshot_id=snapshot.id) == []
    for name, seconds in timings.items():
        record_property(name, seconds)
    print(json.dumps({"protocol": protocol, **timings}))
