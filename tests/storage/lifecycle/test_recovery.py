"""storage.recovery: what a process killed mid-operation leaves is found and healed.

A child interpreter runs one library operation armed with a crash point (fault
injection: it SIGKILLs itself there); this process then opens the same SQLite store and
heals. The paths the CSI sweep cannot reach from gRPC are pinned here: a driver that
fails while an interrupted extend is being finished (the volume keeps its old size and
becomes usable again), and ``interrupted()`` listing exactly the records to heal.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from samples import NODE_A

from csi_driver import storage
from csi_driver.storage import DriverError, crash_points, recovery

FAULTY = "fault_injection.FaultInjectingFileDriver"
STORAGE_TESTS = str(Path(__file__).resolve().parents[1])

CHILD = """
import json, sys
from csi_driver import storage
p = json.loads(sys.argv[1])
storage.setup(persistence_config={"storage": "sqlite", "path": p["db"]},
              file_locks_path=p["locks"])
backend = storage.Backend(volume_backend_name="files", volume_driver=p["driver"],
                          file_volumes_dir=p["vols"], fault_inject_flag_dir=p["flags"])
volume = backend.get_volume(p["volume"])
"""


@pytest.fixture
def site(tmp_path: Path, make_backend: Callable[..., storage.Backend]) -> dict[str, Any]:
    """A SQLite store with one 1 GiB volume on a fault-injecting FileDriver."""
    params = {"db": str(tmp_path / "meta.sqlite"), "locks": str(tmp_path / "locks"),
              "vols": str(tmp_path / "vols"), "flags": str(tmp_path / "flags"),
              "driver": FAULTY}  # fmt: skip
    os.makedirs(params["flags"])
    storage.setup(persistence_config={"storage": "sqlite", "path": params["db"]},
                  file_locks_path=params["locks"])  # fmt: skip
    backend = make_backend("files", volume_driver=FAULTY, file_volumes_dir=params["vols"],
                           fault_inject_flag_dir=params["flags"])  # fmt: skip
    params["volume"] = backend.create_volume(size=1, name="data").id
    params["backend"] = backend
    return params


def _crash_child(site: dict[str, Any], point: str, code: str) -> None:
    params = {k: v for k, v in site.items() if k != "backend"}
    env = {
        **os.environ,
        crash_points.ENV: point,
        "PYTHONPATH": os.pathsep.join([STORAGE_TESTS, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD + textwrap.dedent(code), json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_an_interrupted_extend_is_listed_and_finished(site: dict[str, Any]) -> None:
    _crash_child(site, "extend_volume.after-driver", "volume.extend(3)")
    backend = site["backend"]
    volume = backend.get_volume(site["volume"])
    assert volume.status == "extending"
    assert volume.operation["name"] == "extend" and volume.operation["size"] == 3

    assert [r.id for r in recovery.interrupted()] == [volume.id]
    healed = recovery.heal(volume)

    assert healed is volume and volume.status == "available" and volume.size == 3
    assert volume.operation is None
    assert os.path.getsize(Path(site["vols"]) / f"volume-{volume.id}") == 3 * 1024**3
    assert recovery.interrupted() == []


def test_a_failing_driver_leaves_the_interrupted_extend_usable(site: dict[str, Any]) -> None:
    """The driver cannot confirm the new size: the volume goes back to its size and
    status before the extend (so it can be published and extended again), and the
    caller hears the driver's error."""
    _crash_child(site, "extend_volume.before-driver", "volume.extend(3)")
    Path(site["flags"], "extend_volume").touch()
    volume = site["backend"].get_volume(site["volume"])

    with pytest.raises(DriverError, match="injected fault"):
        recovery.heal_volume(volume)

    stored = site["backend"].get_volume(site["volume"])
    assert (stored.status, stored.size, stored.operation) == ("available", 1, None)
    Path(site["flags"], "extend_volume").unlink()
    stored.extend(3)
    assert stored.size == 3


def test_an_interrupted_connect_is_undone_unless_finished(site: dict[str, Any]) -> None:
    _crash_child(site, "connect.after-export", f"volume.connect({NODE_A!r})")
    volume = site["backend"].get_volume(site["volume"])
    (connection,) = volume.connections
    assert connection.status == "connecting" and connection.connection_info is None

    assert recovery.heal_connection(connection) is None  # nobody waits for it: undone

    fresh = site["backend"].get_volume(site["volume"])
    assert fresh.connections == [] and fresh.status == "available"


def test_an_interrupted_connect_is_finished_for_its_host(site: dict[str, Any]) -> None:
    _crash_child(site, "connect.after-driver", f"volume.connect({NODE_A!r})")
    (connection,) = site["backend"].get_volume(site["volume"]).connections

    finished = recovery.heal_connection(connection, finish_connect=True)

    assert finished is not None and finished.status == "connected"
    assert finished.connection_info["driver_volume_type"] == "local"
    assert site["backend"].get_volume(site["volume"]).status == "in-use"
    finished.disconnect()


def test_an_interrupted_snapshot_is_undone(site: dict[str, Any]) -> None:
    _crash_child(site, "create_snapshot.after-driver", "volume.create_snapshot(name='s')")
    volume = site["backend"].get_volume(site["volume"])
    (snapshot,) = volume.snapshots
    assert snapshot.status == "creating"
    assert any(f.startswith("snapshot-") for f in os.listdir(site["vols"]))

    assert recovery.heal(snapshot) is None

    assert site["backend"].get_volume(site["volume"]).snapshots == []
    assert not any(f.startswith("snapshot-") for f in os.listdir(site["vols"]))
    volume.delete()  # nothing blocks it any more
