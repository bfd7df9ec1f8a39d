"""Refused requests and failing drivers leave the store and the backend as they were.

Driver failures come from ``fault_injection.FaultInjectingFileDriver`` (a deliberate
fake, see tests/storage/fault_injection.py); everything else is the real FileDriver.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from samples import NODE_A, NODE_B

from csi_driver import storage
from csi_driver.storage import runtime

FAULTY_DRIVER = "fault_injection.FaultInjectingFileDriver"

pytestmark = pytest.mark.usefixtures("memory_store")

MakeBackend = Callable[..., storage.Backend]


@pytest.fixture
def backend(make_backend: MakeBackend) -> storage.Backend:
    return make_backend("errors")


@pytest.fixture
def flags(tmp_path: Path) -> Path:
    """Directory of fault flags: a file named after a driver method makes it fail."""
    path = tmp_path / "fault-flags"
    path.mkdir()
    return path


@pytest.fixture
def faulty(make_backend: MakeBackend, tmp_path: Path, flags: Path) -> storage.Backend:
    return make_backend(
        "faulty",
        FAULTY_DRIVER,
        file_volumes_dir=str(tmp_path / "faulty-vols"),
        fault_inject_flag_dir=str(flags),
    )


def stored(kind: str, **filters: Any) -> list[dict[str, Any]]:
    return getattr(runtime.store(), f"get_{kind}s")(**filters)


# -- argument checks ------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, -1, "1", True, 1.5, None])
def test_create_with_invalid_size_is_refused_and_stores_nothing(
    backend: storage.Backend, size: Any
) -> None:
    with pytest.raises(storage.InvalidArgument, match="size"):
        backend.create_volume(size=size)
    assert stored("volume", backend="errors") == []


def test_unknown_create_argument_is_refused_by_name(backend: storage.Backend) -> None:
    with pytest.raises(storage.InvalidArgument, match="colour"):
        backend.create_volume(size=1, colour="red")
    assert stored("volume", backend="errors") == []


@pytest.mark.parametrize("new_size", [1, 2])
def test_extend_to_smaller_or_equal_size_is_refused(
    backend: storage.Backend, new_size: int, tmp_path: Path
) -> None:
    vol = backend.create_volume(size=2)
    with pytest.raises(storage.InvalidArgument, match="larger"):
        vol.extend(new_size)
    assert vol.size == 2
    assert vol.status == "available"
    assert stored("volume", volume_id=vol.id)[0]["size"] == 2
    assert os.path.getsize(tmp_path / "errors" / "vols" / f"volume-{vol.id}") == 2 * 1024**3


# -- state checks ---------------------------------------------------------------------
def test_delete_of_volume_with_snapshot_is_refused_and_volume_kept(
    backend: storage.Backend, tmp_path: Path
) -> None:
    vol = backend.create_volume(size=1)
    snap = vol.create_snapshot()
    with pytest.raises(storage.InvalidState, match="snapshot"):
        vol.delete()
    assert stored("volume", volume_id=vol.id)[0]["status"] == "available"
    assert vol.status == "available"
    assert (tmp_path / "errors" / "vols" / f"volume-{vol.id}").exists()
    assert [s.id for s in backend.get_volume(vol.id).snapshots] == [snap.id]


def test_delete_of_connected_volume_is_refused_and_volume_kept(
    backend: storage.Backend, tmp_path: Path
) -> None:
    vol = backend.create_volume(size=1)
    conn = vol.connect(NODE_A)
    with pytest.raises(storage.InvalidState, match="connection"):
        vol.delete()
    assert stored("volume", volume_id=vol.id)[0]["status"] == "in-use"
    assert [c["id"] for c in stored("connection", volume_id=vol.id)] == [conn.id]
    assert (tmp_path / "errors" / "vols" / f"volume-{vol.id}").exists()


def test_disconnect_of_attached_connection_needs_force(backend: storage.Backend) -> None:
    vol = backend.create_volume(size=1)
    conn = vol.connect(NODE_A)
    conn.attach()
    with pytest.raises(storage.InvalidState, match="detach it first"):
        conn.disconnect()
    assert conn.attached
    assert [c["status"] for c in stored("connection", volume_id=vol.id)] == ["attached"]
    assert vol.status == "in-use"


def test_second_host_is_refused_for_a_volume_without_multiattach(
    backend: storage.Backend,
) -> None:
    vol = backend.create_volume(size=1)
    first = vol.connect(NODE_A)
    with pytest.raises(storage.InvalidState, match="multiattach"):
        vol.connect(NODE_B)
    assert [c["id"] for c in stored("connection", volume_id=vol.id)] == [first.id]
    assert [c.id for c in vol.connections] == [first.id]


def test_second_host_is_accepted_for_a_multiattach_volume(backend: storage.Backend) -> None:
    vol = backend.create_volume(size=1, multiattach=True)
    first = vol.connect(NODE_A)
    second = vol.connect(NODE_B)
    stored_ids = {c["id"] for c in stored("connection", volume_id=vol.id)}
    assert stored_ids == {first.id, second.id}


# -- lookups and registration ---------------------------------------------------------
def test_get_volume_of_unknown_id_raises_not_found(backend: storage.Backend) -> None:
    with pytest.raises(storage.NotFound, match="0b5c1d2e-0000-4000-8000-000000000000"):
        backend.get_volume("0b5c1d2e-0000-4000-8000-000000000000")


def test_second_backend_with_same_name_is_refused_and_first_keeps_working(
    backend: storage.Backend, tmp_path: Path
) -> None:
    other_dir = tmp_path / "other-vols"
    with pytest.raises(storage.InvalidArgument, match="already configured"):
        storage.Backend(
            volume_backend_name="errors",
            volume_driver="csi_driver.storage.drivers.file.FileDriver",
            file_volumes_dir=str(other_dir),
        )
    assert storage.Backend.backends["errors"] is backend
    vol = backend.create_volume(size=1)
    assert (tmp_path / "errors" / "vols" / f"volume-{vol.id}").exists()
    assert not other_dir.exists()
    vol.delete()


# -- driver failures --------------------------------------------------------------------
def test_failing_driver_create_raises_driver_error_and_leaves_no_record(
    faulty: storage.Backend, flags: Path, tmp_path: Path
) -> None:
    (flags / "create_volume").touch()
    with pytest.raises(storage.DriverError) as caught:
        faulty.create_volume(size=1, name="doomed")
    error = caught.value
    assert error.backend == "faulty"
    assert error.operation == "create volume"
    assert "'faulty'" in str(error)
    assert "create volume" in str(error)
    assert "injected fault" in str(error)
    assert stored("volume", backend="faulty") == []
    assert faulty.find_volumes("doomed") == []
    assert os.listdir(tmp_path / "faulty-vols") == []


def test_failing_create_configured_as_backend_option_is_reported_too(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend(
        "always-failing",
        FAULTY_DRIVER,
        file_volumes_dir=str(tmp_path / "always"),
        fault_inject_operations=["create_volume"],
    )
    with pytest.raises(storage.DriverError, match=r"'always-failing'.*create volume"):
        backend.create_volume(size=1)
    assert stored("volume", backend="always-failing") == []


def test_failing_initialize_connection_leaves_no_connection_and_status_unchanged(
    faulty: storage.Backend, flags: Path
) -> None:
    vol = faulty.create_volume(size=1)
    (flags / "initialize_connection").touch()
    with pytest.raises(storage.DriverError, match="connect volume"):
        vol.connect(NODE_A)
    assert stored("connection", volume_id=vol.id) == []
    assert vol.connections == []
    assert vol.status == "available"
    assert stored("volume", volume_id=vol.id)[0]["status"] == "available"


def test_failing_initialize_connection_keeps_an_in_use_volume_in_use(
    faulty: storage.Backend, flags: Path
) -> None:
    vol = faulty.create_volume(size=1)
    first = vol.connect(NODE_A)
    (flags / "initialize_connection").touch()
    with pytest.raises(storage.DriverError):
        vol.connect(NODE_A)  # same host again: allowed, but the driver fails
    assert [c["id"] for c in stored("connection", volume_id=vol.id)] == [first.id]
    assert vol.status == "in-use"
    assert stored("volume", volume_id=vol.id)[0]["status"] == "in-use"


def test_failing_delete_marks_error_deleting_and_keeps_the_record(
    faulty: storage.Backend, flags: Path, tmp_path: Path
) -> None:
    vol = faulty.create_volume(size=1)
    (flags / "delete_volume").touch()
    with pytest.raises(storage.DriverError, match="delete volume"):
        vol.delete()
    assert vol.status == "error_deleting"
    (record,) = stored("volume", volume_id=vol.id)
    assert record["status"] == "error_deleting"
    assert faulty.get_volume(vol.id).id == vol.id
    assert (tmp_path / "faulty-vols" / f"volume-{vol.id}").exists()


def test_delete_succeeds_after_the_delete_fault_is_cleared(
    faulty: storage.Backend, flags: Path, tmp_path: Path
) -> None:
    vol = faulty.create_volume(size=1)
    (flags / "delete_volume").touch()
    with pytest.raises(storage.DriverError):
        vol.delete()
    (flags / "delete_volume").unlink()
    vol.delete()
    assert stored("volume", volume_id=vol.id) == []
    assert os.listdir(tmp_path / "faulty-vols") == []


def test_failing_snapshot_leaves_no_snapshot_record(faulty: storage.Backend, flags: Path) -> None:
    vol = faulty.create_volume(size=1)
    (flags / "create_snapshot").touch()
    with pytest.raises(storage.DriverError, match="create snapshot"):
        vol.create_snapshot(name="doomed")
    assert stored("snapshot", volume_id=vol.id) == []
    assert vol.snapshots == []
    assert vol.status == "available"
    vol.delete()  # nothing holds the volume back


def test_failing_extend_keeps_size_and_status(
    faulty: storage.Backend, flags: Path, tmp_path: Path
) -> None:
    vol = faulty.create_volume(size=1)
    vol.connect(NODE_A)
    (flags / "extend_volume").touch()
    with pytest.raises(storage.DriverError, match="extend volume"):
        vol.extend(2)
    assert (vol.size, vol.status) == (1, "in-use")
    (record,) = stored("volume", volume_id=vol.id)
    assert (record["size"], record["status"]) == (1, "in-use")
    assert os.path.getsize(tmp_path / "faulty-vols" / f"volume-{vol.id}") == 1024**3


def test_busy_deletes_keep_status_and_records(make_backend: MakeBackend, tmp_path: Path) -> None:
    """A driver's "is busy" leaves volume and snapshot as they were (not error_deleting)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    backend = make_backend(
        "busy",
        "fault_injection.BusyOnDeleteFileDriver",
        fault_inject_flag_dir=str(flags),
        file_volumes_dir=str(tmp_path / "busy-vols"),
    )
    volume = backend.create_volume(1)
    snapshot = volume.create_snapshot()
    (flags / "busy").touch()
    with pytest.raises(storage.InvalidState, match="busy"):
        snapshot.delete()
    assert snapshot.status == "available"
    assert runtime.store().get_snapshots(snapshot_id=snapshot.id)[0]["status"] == "available"
    (flags / "busy").unlink()
    snapshot.delete()
    (flags / "busy").touch()
    with pytest.raises(storage.InvalidState, match="busy"):
        volume.delete()
    assert runtime.store().get_volumes(volume_id=volume.id)[0]["status"] == "available"
    (flags / "busy").unlink()
    volume.delete()
    assert runtime.store().get_volumes(backend="busy") == []
