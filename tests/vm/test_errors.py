"""Errors a storage administrator can act on, with the real LVM driver and targets.

Each names the backend and the cause, and leaves nothing half-made: a failed create
leaves no record, a failed attach leaves the connection record as the backend has it
(exported, nothing attached), and ``volume.attach()`` disconnects what it connected.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pytest
import vmdisk
from vmcase import PROTOCOLS, lvm_options, undo, undo_delete, undo_disconnect

from csi_driver import storage
from csi_driver.storage import connector, runtime


def local_properties() -> dict[str, Any]:
    return connector.local_properties(runtime.settings())


@pytest.mark.usefixtures("library")
def test_a_missing_volume_group_names_the_backend_and_the_group(
    record_property: Callable[[str, object], None],
) -> None:
    options = lvm_options("lvm-no-vg", volume_group="csi-vm-missing", **PROTOCOLS["nvmeof"])
    with pytest.raises(storage.BackendSetupError) as error:
        storage.Backend(**options)
    message = str(error.value)
    record_property("error", message)
    assert "'lvm-no-vg'" in message and "csi-vm-missing" in message
    assert "not found" in message or "does not exist" in message
    assert "lvm-no-vg" not in storage.Backend.backends


@pytest.mark.usefixtures("library")
def test_a_failed_create_names_the_cause_and_leaves_no_record(
    cleanup: ExitStack, record_property: Callable[[str, object], None]
) -> None:
    # Thick LVs need the space up front: 64 GiB do not fit in the 8 GiB volume group.
    options = lvm_options("lvm-thick", lvm_type="default", **PROTOCOLS["nvmeof"])
    backend = storage.Backend(**options)
    undo(cleanup, backend.close)
    volume_id = str(uuid.uuid4())
    with pytest.raises(storage.DriverError) as error:
        backend.create_volume(size=64, id=volume_id)
    message = str(error.value)
    record_property("error", message)
    assert "'lvm-thick'" in message and "create volume" in message
    assert "insufficient free space" in message.lower()
    assert runtime.store().get_volumes(volume_id=volume_id) == []
    assert vmdisk.volume_lv(volume_id) not in vmdisk.logical_volumes(backend.config["volume_group"])


@pytest.mark.usefixtures("library")
def test_a_missing_target_tool_names_it_and_leaves_no_connection(
    cleanup: ExitStack, record_property: Callable[[str, object], None]
) -> None:
    if shutil.which("tgtadm"):
        pytest.skip("tgtadm is installed here; this test needs it missing")
    backend = storage.Backend(**lvm_options("lvm-tgtadm", target_helper="tgtadm"))
    undo(cleanup, backend.close)
    volume = backend.create_volume(size=1)
    undo_delete(cleanup, volume)
    with pytest.raises(storage.DriverError) as error:
        volume.attach()
    message = str(error.value)
    record_property("error", message)
    assert "'lvm-tgtadm'" in message and "connect volume" in message and "tgt" in message
    assert runtime.store().get_connections(volume_id=volume.id) == []
    assert volume.status == "available" and volume.connections == []
    volume.delete()


def tamper_portal(text: str, port: int) -> str:
    """The same serialized connection, pointing at a port nothing listens on."""
    document = json.loads(text)
    data = document["connections"][0]["connection_info"]["data"]
    if "target_iqn" in data:  # iSCSI: "address:port"
        data["target_portal"] = f"127.0.0.1:{port}"
    elif "portals" in data:  # NVMe-oF, current format
        data["portals"] = [[address, str(port), transport] for address, _, transport in
                           data["portals"]]  # fmt: skip
    else:  # NVMe-oF, the format Cinder's nvmet target sends by default
        data["target_port"] = str(port)
    return json.dumps(document)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_an_unreachable_portal_fails_the_attach_and_keeps_the_record_consistent(
    protocol: str,
    lvm_backend: Callable[[str], storage.Backend],
    cleanup: ExitStack,
    record_property: Callable[[str, object], None],
) -> None:
    backend = lvm_backend(protocol)
    volume = backend.create_volume(size=1)
    undo_delete(cleanup, volume)
    conn = volume.connect(local_properties())
    undo_disconnect(cleanup, conn)
    port = vmdisk.free_port()
    wrong = storage.Connection.load(tamper_portal(conn.jsons, port))
    with pytest.raises(storage.AttachError) as error:
        wrong.attach()
    message = str(error.value)
    record_property("error", message)
    assert f"backend '{backend.name}'" in message and volume.id in message
    assert f"127.0.0.1:{port} " in message  # the portal it could not reach
    # Nothing is attached, and the record still says what the backend has: an export.
    assert not wrong.attached and wrong.status == "connected"
    stored = runtime.store().get_connections(connection_id=conn.id)[0]
    assert stored["status"] == "connected" and stored.get("device") is None
    data = conn.connection_info["data"]
    if protocol == "iscsi":
        assert data["target_iqn"] in vmdisk.lio_targets()
        assert data["target_iqn"] not in vmdisk.iscsi_sessions()
    else:
        nqn = data.get("target_nqn") or data["nqn"]
        assert nqn in vmdisk.nvmet_subsystems() and nqn not in vmdisk.nvme_connected()
    conn.disconnect()
    assert volume.status == "available"
    volume.delete()


def test_a_failed_volume_attach_disconnects_again(
    lvm_backend: Callable[[str], storage.Backend],
    cleanup: ExitStack,
    record_property: Callable[[str, object], None],
) -> None:
    """Two nvmet backends given one port id: Cinder exports the second one's volumes on
    the first one's port, so its connection info names a port nobody listens on."""
    port_id = PROTOCOLS["nvmeof"]["nvmet_port_id"]
    if vmdisk.nvmet_port(port_id) is None:  # the first backend's port, made by an export
        first = lvm_backend("nvmeof").create_volume(size=1)
        undo_delete(cleanup, first)
        first.connect(local_properties()).disconnect()
    wrong_port = vmdisk.free_port()
    options = {**PROTOCOLS["nvmeof"], "target_port": wrong_port}
    clash = storage.Backend(**lvm_options("lvm-port-clash", **options))
    undo(cleanup, clash.close)
    volume = clash.create_volume(size=1)
    undo_delete(cleanup, volume)
    with pytest.raises(storage.AttachError) as error:
        volume.attach()
    message = str(error.value)
    record_property("error", message)
    assert "backend 'lvm-port-clash'" in message and str(wrong_port) in message
    assert runtime.store().get_connections(volume_id=volume.id) == []
    assert volume.status == "available" and volume.connections == []
    assert not [n for n in vmdisk.nvmet_subsystems() if volume.id in n]  # export removed
    assert not [n for n in vmdisk.nvme_connected() if volume.id in n]
    volume.delete()
