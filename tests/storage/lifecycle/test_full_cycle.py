"""A volume's whole life on the FileDriver, with each store: every step checks the
statuses, the files in the volumes directory and exactly which records the store holds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from samples import NODE_A

from csi_driver import storage
from csi_driver.storage import runtime

GiB = 1024**3
PAYLOAD = b"csi-driver lifecycle payload \x00\x01\x02\xff" * 64
OFFSET = 3 * 1024 * 1024  # inside the first GiB, away from offset 0


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    config = {"storage": "memory"}
    if request.param == "sqlite":
        config = {"storage": "sqlite", "path": str(tmp_path / "meta.db")}
    storage.setup(persistence_config=config, file_locks_path=str(tmp_path / "locks"))
    return request.param


def store_ids(backend: str) -> dict[str, set[str]]:
    store = runtime.store()
    return {
        "volumes": {r["id"] for r in store.get_volumes(backend=backend)},
        "snapshots": {r["id"] for r in store.get_snapshots(backend=backend)},
        "connections": {r["id"] for r in store.get_connections(backend=backend)},
    }


def stored_volume(volume_id: str) -> dict:
    (record,) = runtime.store().get_volumes(volume_id=volume_id)
    return record


def read_at(path: str, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def test_full_volume_lifecycle_on_file_driver(
    store_kind: str, make_backend: Callable[..., storage.Backend], tmp_path: Path
) -> None:
    name = f"cycle-{store_kind}"
    backend = make_backend(name)
    vols_dir = tmp_path / name / "vols"

    def files() -> set[str]:
        return set(os.listdir(vols_dir))

    # -- create
    vol = backend.create_volume(size=1, name="original")
    assert vol.status == "available"
    assert stored_volume(vol.id)["status"] == "available"
    assert store_ids(name) == {"volumes": {vol.id}, "snapshots": set(), "connections": set()}
    assert files() == {f"volume-{vol.id}"}
    assert os.path.getsize(vols_dir / f"volume-{vol.id}") == 1 * GiB

    # -- write through a local attachment (volume.attach/detach)
    attachment = vol.attach()
    assert vol.status == "in-use"
    assert stored_volume(vol.id)["status"] == "in-use"
    assert attachment.path == str(vols_dir / f"volume-{vol.id}")
    assert store_ids(name)["connections"] == {attachment.id}
    with open(attachment.path, "r+b") as f:
        f.seek(OFFSET)
        f.write(PAYLOAD)
    vol.detach()
    assert vol.status == "available"
    assert vol.connections == []
    assert store_ids(name)["connections"] == set()
    assert stored_volume(vol.id)["status"] == "available"

    # -- snapshot
    snap = vol.create_snapshot(name="snap")
    assert snap.status == "available"
    assert snap.volume_size == 1
    assert store_ids(name) == {"volumes": {vol.id}, "snapshots": {snap.id}, "connections": set()}
    assert [s.id for s in vol.snapshots] == [snap.id]
    assert files() == {f"volume-{vol.id}", f"snapshot-{snap.id}"}

    # -- a bigger volume from the snapshot holds the data
    from_snap = snap.create_volume(size=2, name="from-snap")
    assert from_snap.status == "available"
    assert from_snap.size == 2
    assert from_snap.source_snapshot_id == snap.id
    from_snap_file = vols_dir / f"volume-{from_snap.id}"
    assert os.path.getsize(from_snap_file) == 2 * GiB
    assert read_at(str(from_snap_file), OFFSET, len(PAYLOAD)) == PAYLOAD
    assert store_ids(name)["volumes"] == {vol.id, from_snap.id}

    # -- clone holds the data too
    clone = vol.clone(name="clone")
    assert clone.status == "available"
    assert clone.source_volume_id == vol.id
    assert read_at(str(vols_dir / f"volume-{clone.id}"), OFFSET, len(PAYLOAD)) == PAYLOAD
    assert store_ids(name) == {
        "volumes": {vol.id, from_snap.id, clone.id},
        "snapshots": {snap.id},
        "connections": set(),
    }

    # -- extend
    vol.extend(3)
    assert vol.size == 3
    assert vol.status == "available"
    assert stored_volume(vol.id)["size"] == 3
    assert os.path.getsize(vols_dir / f"volume-{vol.id}") == 3 * GiB
    assert read_at(str(vols_dir / f"volume-{vol.id}"), OFFSET, len(PAYLOAD)) == PAYLOAD

    # -- connect to a node, attach there with os-brick's local connector
    conn = vol.connect(NODE_A)
    assert conn.status == "connected"
    assert conn.protocol == "local"
    assert conn.attached_host == "node-a"
    assert vol.status == "in-use"
    assert stored_volume(vol.id)["status"] == "in-use"
    assert store_ids(name)["connections"] == {conn.id}
    path = conn.attach()
    assert path == conn.path == str(vols_dir / f"volume-{vol.id}")
    assert conn.status == "attached"
    assert runtime.store().get_connections(connection_id=conn.id)[0]["device"]["path"] == path
    assert read_at(path, OFFSET, len(PAYLOAD)) == PAYLOAD

    # -- detach, disconnect
    conn.detach()
    assert conn.status == "connected"
    assert conn.path is None
    assert vol.status == "in-use"
    conn.disconnect()
    assert vol.status == "available"
    assert stored_volume(vol.id)["status"] == "available"
    assert store_ids(name)["connections"] == set()

    # -- delete everything
    snap.delete()
    assert store_ids(name)["snapshots"] == set()
    assert f"snapshot-{snap.id}" not in files()
    assert vol.snapshots == []
    for volume in (from_snap, clone, vol):
        volume.delete()
        assert volume.status == "deleted"
    assert store_ids(name) == {"volumes": set(), "snapshots": set(), "connections": set()}
    assert backend.volumes == []
    assert files() == set()
