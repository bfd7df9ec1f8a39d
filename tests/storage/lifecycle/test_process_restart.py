"""A SQLite store outlives the process: what one process created another one finds
again and can delete, in both directions (child -> test process, test process -> child)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from samples import NODE_A

from csi_driver import storage
from csi_driver.storage import runtime

FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"

# Runs in a fresh interpreter: argv[1] is a JSON dict of parameters.
CHILD_PRELUDE = """
import json, sys
from csi_driver import storage
p = json.loads(sys.argv[1])
storage.setup(persistence_config={"storage": "sqlite", "path": p["db"]},
              file_locks_path=p["locks"], host="restart-test-host")
backend = storage.Backend(volume_backend_name=p["name"], volume_driver=p["driver"],
                          file_volumes_dir=p["vols"])
"""

CHILD_CREATES = """
first = backend.create_volume(size=1, name="first")
second = backend.create_volume(size=2, name="second")
snap = first.create_snapshot(name="snap")
conn = first.connect(p["connector"])
print(json.dumps({"first": first.id, "second": second.id, "snapshot": snap.id,
                  "connection": conn.id}))
backend.close()
"""

CHILD_FINDS_AND_DELETES = """
found = {v.id: v for v in backend.volumes}
first, second = found[p["first"]], found[p["second"]]
report = {
    "volumes": sorted(found),
    "statuses": {v.id: v.status for v in found.values()},
    "sizes": {v.id: v.size for v in found.values()},
    "snapshots": [s.id for s in first.snapshots],
    "connections": [c.id for c in first.connections],
    "connection_path": first.connections[0].connection_info["data"]["device_path"],
    "get_volume": backend.get_volume(p["second"]).name,
}
first.connections[0].disconnect()
first.snapshots[0].delete()
first.delete()
second.delete()
print(json.dumps(report))
backend.close()
"""


def run_child(body: str, **params: Any) -> dict[str, Any]:
    script = textwrap.dedent(CHILD_PRELUDE) + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"child failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def params(tmp_path: Path, name: str) -> dict[str, Any]:
    return {
        "db": str(tmp_path / "meta.db"),
        "locks": str(tmp_path / "locks"),
        "vols": str(tmp_path / "vols"),
        "name": name,
        "driver": FILE_DRIVER,
        "connector": NODE_A,
    }


def setup_same_store(p: dict[str, Any]) -> None:
    storage.setup(
        persistence_config={"storage": "sqlite", "path": p["db"]},
        file_locks_path=p["locks"],
        host="restart-test-host",
    )


def test_test_process_finds_and_deletes_what_a_child_process_created(
    tmp_path: Path, make_backend: Callable[..., storage.Backend]
) -> None:
    p = params(tmp_path, "restart-from-child")
    created = run_child(CHILD_CREATES, **p)

    setup_same_store(p)
    backend = make_backend(p["name"], FILE_DRIVER, file_volumes_dir=p["vols"])
    volumes = {v.id: v for v in backend.volumes}
    assert set(volumes) == {created["first"], created["second"]}
    first, second = volumes[created["first"]], volumes[created["second"]]
    assert (first.name, first.size, first.status) == ("first", 1, "in-use")
    assert (second.name, second.size, second.status) == ("second", 2, "available")
    assert [s.id for s in first.snapshots] == [created["snapshot"]]
    assert second.snapshots == []
    assert [c.id for c in first.connections] == [created["connection"]]
    conn = first.connections[0]
    assert conn.connector == NODE_A
    assert conn.connection_info["data"]["device_path"] == os.path.join(
        p["vols"], f"volume-{first.id}"
    )
    assert backend.get_volume(created["second"]).name == "second"
    assert backend.get_snapshot(created["snapshot"]).volume_id == first.id

    conn.disconnect()
    assert first.status == "available"
    first.snapshots[0].delete()
    first.delete()
    second.delete()
    store = runtime.store()
    assert store.get_volumes(backend=p["name"]) == []
    assert store.get_snapshots(backend=p["name"]) == []
    assert store.get_connections(backend=p["name"]) == []
    assert os.listdir(p["vols"]) == []


def test_child_process_finds_and_deletes_what_the_test_process_created(
    tmp_path: Path, make_backend: Callable[..., storage.Backend]
) -> None:
    p = params(tmp_path, "restart-to-child")
    setup_same_store(p)
    backend = make_backend(p["name"], FILE_DRIVER, file_volumes_dir=p["vols"])
    first = backend.create_volume(size=1, name="first")
    second = backend.create_volume(size=2, name="second")
    snap = first.create_snapshot(name="snap")
    conn = first.connect(NODE_A)

    report = run_child(CHILD_FINDS_AND_DELETES, first=first.id, second=second.id, **p)

    assert report["volumes"] == sorted([first.id, second.id])
    assert report["statuses"] == {first.id: "in-use", second.id: "available"}
    assert report["sizes"] == {first.id: 1, second.id: 2}
    assert report["snapshots"] == [snap.id]
    assert report["connections"] == [conn.id]
    assert report["connection_path"] == os.path.join(p["vols"], f"volume-{first.id}")
    assert report["get_volume"] == "second"
    # The child deleted everything: this process's store sees it, the files are gone.
    store = runtime.store()
    assert store.get_volumes(backend=p["name"]) == []
    assert store.get_snapshots(backend=p["name"]) == []
    assert store.get_connections(backend=p["name"]) == []
    assert os.listdir(p["vols"]) == []
