"""Operations in records name their process: a replica sharing the store never heals
(undoes) an operation another live process is running, and still heals abandoned ones."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from csi_driver import storage
from csi_driver.storage import ownership, recovery
from csi_driver.storage.exceptions import OperationInProgress


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


def _owner_of(pid: int) -> dict:
    me = ownership.this_process()
    return {**me, "pid": pid, "start": ownership._start_ticks(pid)}


def test_own_operations_and_legacy_records_count_as_abandoned() -> None:
    assert ownership.is_abandoned({"name": "x", "started_at": _ago(1),
                                   "owner": ownership.this_process()}, 900)  # fmt: skip
    assert ownership.is_abandoned({"name": "x", "started_at": _ago(1)}, 900)
    assert ownership.is_abandoned(None, 900)


def test_a_live_process_on_this_host_keeps_its_operation_until_it_dies() -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        operation = {"name": "create_volume", "started_at": _ago(5000),
                     "owner": _owner_of(other.pid)}  # fmt: skip
        assert not ownership.is_abandoned(operation, 900)  # alive: age does not matter here
    finally:
        other.kill()
        other.wait()
    assert ownership.is_abandoned(operation, 900)


def test_a_reused_pid_is_not_mistaken_for_the_owner() -> None:
    me = ownership.this_process()
    operation = {"name": "x", "started_at": _ago(1),
                 "owner": {**me, "pid": 1, "start": "12345678901234"}}  # fmt: skip
    assert ownership.is_abandoned(operation, 900)


def test_another_hosts_operation_is_abandoned_only_when_stale() -> None:
    owner = {"host": "replica-on-another-node", "boot": "b", "pid": 1, "start": "1"}
    assert not ownership.is_abandoned({"name": "x", "started_at": _ago(30), "owner": owner}, 900)
    assert ownership.is_abandoned({"name": "x", "started_at": _ago(901), "owner": owner}, 900)
    assert ownership.is_abandoned({"name": "x", "started_at": "garbage", "owner": owner}, 900)


@pytest.mark.usefixtures("memory_store")
def test_recovery_leaves_a_live_operation_alone(tmp_path: Path) -> None:
    backend = storage.Backend(
        volume_backend_name="own",
        volume_driver="csi_driver.storage.drivers.file.FileDriver",
        file_volumes_dir=str(tmp_path / "v"),
    )
    volume = backend.create_volume(1, name="busy")
    other = subprocess.Popen(["sleep", "60"])
    try:
        volume._begin("extending", "extend", size=2, previous_status="available")
        volume._data["operation"]["owner"] = _owner_of(other.pid)
        volume._save()
        found = storage.get_volume(volume.id)
        assert not recovery.is_interrupted(found)
        assert recovery.interrupted() == []
        with pytest.raises(OperationInProgress, match="extending by another process"):
            recovery.check_not_in_progress(found)
    finally:
        other.kill()
        other.wait()
    found = storage.get_volume(volume.id)
    assert recovery.is_interrupted(found)
    assert [r.id for r in recovery.interrupted()] == [volume.id]
    recovery.check_not_in_progress(found)  # abandoned: no longer "in progress"
