"""The ``cinder.db.api`` calls drivers make are served from the metadata store; any
other is refused with an error naming the function.

The drivers are deliberate fakes from tests/storage/fault_injection.py that make
those calls on purpose (``UnservedDbCallFileDriver``, ``DbShimProbeFileDriver``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from samples import NODE_A

from csi_driver import storage
from csi_driver.storage import runtime

UNSERVED_DB_CALL = "fault_injection.UnservedDbCallFileDriver"
DB_PROBE = "fault_injection.DbShimProbeFileDriver"
# Values the probe driver writes (fault_injection.DbShimProbeFileDriver).
SAVED_LOCATION = "probe-location-from-volume.save"
UPDATED_PROVIDER_ID = "probe-id-from-db.volume_update"

MakeBackend = Callable[..., storage.Backend]


def sqlite_setup(tmp_path: Path) -> None:
    storage.setup(
        persistence_config={"storage": "sqlite", "path": str(tmp_path / "meta.db")},
        file_locks_path=str(tmp_path / "locks"),
    )


@pytest.mark.usefixtures("memory_store")
def test_unserved_db_function_is_refused_naming_it(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend("unserved-db", UNSERVED_DB_CALL, file_volumes_dir=str(tmp_path / "vols"))
    with pytest.raises(storage.NotSupported) as caught:
        backend.create_volume(size=1)
    message = str(caught.value)
    assert "cinder.db.api.service_get_all" in message
    assert "'unserved-db'" in message
    assert "create volume" in message
    assert runtime.store().get_volumes(backend="unserved-db") == []
    assert os.listdir(tmp_path / "vols") == []


@pytest.mark.usefixtures("memory_store")
def test_volume_save_and_db_volume_update_reach_the_store_record(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    backend = make_backend("db-probe", DB_PROBE, file_volumes_dir=str(tmp_path / "vols"))
    vol = backend.create_volume(size=1)
    (record,) = runtime.store().get_volumes(volume_id=vol.id)
    assert record["provider_location"] == SAVED_LOCATION
    assert record["provider_id"] == UPDATED_PROVIDER_ID
    assert record["status"] == "available"
    assert vol.provider_location == SAVED_LOCATION
    assert vol.provider_id == UPDATED_PROVIDER_ID


def test_driver_updates_survive_a_fresh_store_and_backend(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    sqlite_setup(tmp_path)
    backend = make_backend("db-probe", DB_PROBE, file_volumes_dir=str(tmp_path / "vols"))
    vol_id = backend.create_volume(size=1).id
    backend.close()

    sqlite_setup(tmp_path)  # a new store object on the same file
    again = make_backend("db-probe", DB_PROBE, file_volumes_dir=str(tmp_path / "vols"))
    vol = again.get_volume(vol_id)
    assert vol.provider_location == SAVED_LOCATION
    assert vol.provider_id == UPDATED_PROVIDER_ID


def test_driver_initiator_data_round_trips_through_the_store(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    sqlite_setup(tmp_path)
    backend = make_backend("db-probe", DB_PROBE, file_volumes_dir=str(tmp_path / "vols"))
    first = backend.create_volume(size=1)
    second = backend.create_volume(size=1)

    conn1 = first.connect(NODE_A)
    assert conn1.connection_info["data"]["initiator_data"] == {"first_volume": first.id}
    # The second insert of the same key is refused (DriverInitiatorDataExists, which the
    # driver ignores); what it reads back is still the first value.
    conn2 = second.connect(NODE_A)
    assert conn2.connection_info["data"]["initiator_data"] == {"first_volume": first.id}
    backend.close()

    # Kept in the store, not in the process: a fresh store and driver read it back.
    sqlite_setup(tmp_path)
    again = make_backend("db-probe", DB_PROBE, file_volumes_dir=str(tmp_path / "vols"))
    third = again.create_volume(size=1)
    conn3 = third.connect(NODE_A)
    assert conn3.connection_info["data"]["initiator_data"] == {"first_volume": first.id}
    # Another initiator has its own data.
    other = {**NODE_A, "host": "node-b", "initiator": "iqn.2004-10.com.example:node-b"}
    third_b = again.create_volume(size=1, multiattach=True)
    conn_b = third_b.connect(other)
    assert conn_b.connection_info["data"]["initiator_data"] == {"first_volume": third_b.id}
