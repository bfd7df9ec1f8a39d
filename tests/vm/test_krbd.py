"""Cinder's RBD driver end to end, attached by os-brick's RBD connector with krbd.

The guest runs a single-node Ceph test cluster on its loopback (``e2e/ceph/cluster.py``,
the ``ceph_cluster`` fixture); ``guest.sh`` has loaded the ``rbd`` kernel module. The
life cycle is ``test_lvm_attach.py``'s: create, attach (``rbd map``: ``/dev/rbdN``),
mkfs and write, detach, snapshot, volume from snapshot, attach in the node process
from the serialized connection, the data is there, extend while attached, detach,
delete everything. The store, the cluster (``rbd ls -l``) and the kernel
(``rbd showmapped``, ``/sys/bus/rbd/devices``) agree at every step.

The backend sets ``rbd_keyring_conf``: the keyring travels in connection info and
os-brick writes it into a temporary ceph.conf of its own, so neither process needs a
keyring file where os-brick would look (``/etc/ceph``).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import vmdisk
from vmcase import (
    CEPH_POOL,
    CEPH_USER,
    NodeAgent,
    rbd_options,
    timed,
    undo,
    undo_delete,
    undo_detach,
    undo_disconnect,
)

from csi_driver import storage
from csi_driver.storage import runtime

GiB = 1024**3
RBD_DEVICE = re.compile(r"/dev/rbd\d+$")
# Where os-brick's RBD connector reads a keyring when connection info carries none.
ETC_KEYRING = Path(f"/etc/ceph/ceph.client.{CEPH_USER}.keyring")


def image(volume: storage.Volume) -> str:
    return f"volume-{volume.id}"


def cluster_images(cluster: Any) -> dict[str, dict[str, Any]]:
    """``rbd ls -l POOL`` as client.admin: image -> size, snapshots, parent."""
    images: dict[str, dict[str, Any]] = {}
    for entry in json.loads(cluster.rbd("ls", "-l", "--format=json", CEPH_POOL) or "[]"):
        found = images.setdefault(entry["image"], {"snaps": set(), "parent": None})
        if "snapshot" in entry:
            found["snaps"].add(entry["snapshot"])
        else:
            found["size"] = entry["size"]
            parent = entry.get("parent")
            if parent:
                found["parent"] = (parent["pool"], parent["image"], parent["snapshot"])
    return images


def check_store_matches_cluster(backend: storage.Backend, cluster: Any) -> dict[str, Any]:
    """The store's volumes and snapshots of ``backend`` are the pool's images and
    snapshots, with the same sizes; returns the cluster's view."""
    store = runtime.store()
    images = cluster_images(cluster)
    volumes = {f"volume-{v['id']}": v for v in store.get_volumes(backend=backend.name)}
    assert set(images) == set(volumes), ("rbd ls != store", images, list(volumes))
    for name, record in volumes.items():
        assert images[name]["size"] == record["size"] * GiB, name
        snapshots = {f"snapshot-{s['id']}" for s in store.get_snapshots(volume_id=record["id"])}
        assert images[name]["snaps"] == snapshots, ("rbd snap ls != store", name)
    return images


def check_mapped(image_name: str, path: str, size: int) -> str:
    """krbd has ``image_name`` mapped once, at ``path``'s device; returns ``/dev/rbdN``."""
    device = os.path.realpath(path)
    assert RBD_DEVICE.match(device), (path, device)
    assert vmdisk.is_block_device(device) and vmdisk.device_size(device) == size
    mapped = [m for m in vmdisk.rbd_showmapped() if m["name"] == image_name]
    assert len(mapped) == 1, mapped
    assert mapped[0]["pool"] == CEPH_POOL and mapped[0]["device"] == device
    assert vmdisk.rbd_device_for(image_name) == device  # the kernel's own account
    sysfs = vmdisk.rbd_sysfs_devices()[device.removeprefix("/dev/rbd")]
    assert sysfs["pool"] == CEPH_POOL and sysfs["current_snap"] == "-"
    assert int(sysfs["size"]) == size
    return device


def check_unmapped(image_name: str) -> None:
    assert not [m for m in vmdisk.rbd_showmapped() if m["name"] == image_name]
    assert vmdisk.rbd_device_for(image_name) is None


def wait_for_size(device: str, size: int, timeout: float = 60.0) -> float:
    """krbd refreshes a mapped image's size when the header changes (watch/notify);
    returns how long that took, fails if it did not happen within ``timeout``."""
    sysfs = Path("/sys/bus/rbd/devices", device.removeprefix("/dev/rbd"), "size")
    started = time.monotonic()
    while int(sysfs.read_text()) != size:
        assert time.monotonic() - started < timeout, f"{device} still {sysfs.read_text()} bytes"
        time.sleep(0.2)
    return time.monotonic() - started


# Measured in the guest: ~45 s to start the cluster and its pool, ~90 s for the cycle.
@pytest.mark.timeout(480)
def test_rbd_volume_life_cycle_with_krbd(
    library: None,
    node: NodeAgent,  # first: the node process imports Cinder while the cluster starts
    ceph_cluster: Any,
    cleanup: ExitStack,
    record_property: Callable[[str, object], None],
) -> None:
    timings: dict[str, float] = {f"cluster_{k}_s": round(v, 2)
                                 for k, v in ceph_cluster.timings.items()}  # fmt: skip
    options = rbd_options("rbd-krbd", ceph_cluster)
    backend = storage.Backend(**options)
    undo(cleanup, backend.close)
    store = runtime.store()
    assert not ETC_KEYRING.exists()  # the keyring can only come with the connection

    # create
    source = backend.create_volume(size=1, name="krbd-source")
    undo_delete(cleanup, source)
    images = check_store_matches_cluster(backend, ceph_cluster)
    assert images[image(source)]["parent"] is None

    # attach here (os-brick in this process, privsep in-process): rbd map, /dev/rbdN
    with timed(timings, "attach_s"):
        conn = source.attach()
    undo_detach(cleanup, source)
    data = conn.connection_info["data"]
    assert conn.protocol == "rbd" and data["name"] == f"{CEPH_POOL}/{image(source)}"
    assert data["hosts"] == ["127.0.0.1"] and data["auth_username"] == CEPH_USER
    assert data["keyring"] == ceph_cluster.keyring_path(CEPH_USER).read_text()
    assert conn.path == f"/dev/rbd/{CEPH_POOL}/{image(source)}"  # udev's ceph-rbdnamer link
    device = check_mapped(image(source), conn.path, GiB)
    # os-brick wrote the keyring into a ceph.conf of its own and keeps it while mapped
    brick_conf = conn.device["conf"]
    assert os.path.exists(brick_conf)
    stored = store.get_connections(connection_id=conn.id)[0]
    assert stored["status"] == "attached" and stored["device"]["path"] == conn.path
    assert source.status == "in-use"
    checksum = vmdisk.format_and_write(conn.path)

    # detach: unmapped, os-brick's conf removed, export record gone
    with timed(timings, "detach_s"):
        source.detach()
    check_unmapped(image(source))
    assert not os.path.exists(device) and not os.path.exists(brick_conf)
    assert store.get_connections(volume_id=source.id) == []
    assert source.status == "available" and source.connections == []

    # snapshot, and a volume from it (a copy-on-write clone of the snapshot)
    snapshot = source.create_snapshot(name="krbd-snap")
    undo_delete(cleanup, snapshot)
    restored = snapshot.create_volume(name="krbd-restored")
    undo_delete(cleanup, restored)
    images = check_store_matches_cluster(backend, ceph_cluster)
    assert f"snapshot-{snapshot.id}" in images[image(source)]["snaps"]
    assert images[image(restored)]["parent"] == (CEPH_POOL, image(source),
                                                 f"snapshot-{snapshot.id}")  # fmt: skip

    # attach in the node process, from the serialized connection, as a node plugin would
    properties = node.ok("properties")["properties"]
    node.ok("backend", options=options)
    with timed(timings, "connect_s"):
        conn2 = restored.connect(properties)
    undo_disconnect(cleanup, conn2)
    attached = node.ok("attach", connection=conn2.jsons)
    timings["node_attach_s"] = attached["seconds"]
    undo(cleanup, lambda: node.call("detach", connection_id=conn2.id))
    assert attached["path"] == f"/dev/rbd/{CEPH_POOL}/{image(restored)}"
    assert attached["info_unchanged"]
    device2 = check_mapped(image(restored), attached["path"], GiB)
    # the data is there
    assert node.ok("read_back", device=attached["path"])["checksum"] == checksum

    # extend while mapped: the image grows and krbd sees the new size by itself
    with timed(timings, "extend_s"):
        restored.extend(2)
    assert restored.size == 2 and store.get_volumes(volume_id=restored.id)[0]["size"] == 2
    assert cluster_images(ceph_cluster)[image(restored)]["size"] == 2 * GiB
    timings["krbd_resize_seen_s"] = round(wait_for_size(device2, 2 * GiB), 2)
    assert vmdisk.device_size(device2) == 2 * GiB
    check_store_matches_cluster(backend, ceph_cluster)

    # detach on the node (rbd unmap), disconnect on the controller
    timings["node_detach_s"] = node.ok("detach", connection_id=conn2.id)["seconds"]
    check_unmapped(image(restored))
    with timed(timings, "disconnect_s"):
        conn2.disconnect()
    assert restored.status == "available"

    # delete all: nothing left in the pool (no '.deleted' leftovers) or in the store
    restored.delete()
    snapshot.delete()
    source.delete()
    assert cluster_images(ceph_cluster) == {}
    assert store.get_volumes(backend=backend.name) == []
    assert store.get_snapshots(snapshot_id=snapshot.id) == []
    assert vmdisk.rbd_showmapped() == [] and vmdisk.rbd_sysfs_devices() == {}
    for name, seconds in timings.items():
        record_property(name, seconds)
    print(json.dumps({"protocol": "rbd", **timings}))
