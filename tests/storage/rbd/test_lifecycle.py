"""A volume's whole life through Cinder's RBDDriver, checked against the cluster at each step.

After every operation the metadata store and the cluster (``rbd ls``/``rbd snap ls``,
read as client.admin) agree. A dump taken with everything created loads back in a
fresh process, which sees the same volumes as ``rbd ls``; a SQLite store lets another
process find and delete what this one created.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rbd_support import POOL, ClusterView, RbdSite, timed
from samples import NODE_A

from csi_driver import storage
from csi_driver.storage import runtime

MakeBackend = Callable[..., storage.Backend]
Check = Callable[[storage.Backend, str], None]

# Loads a dump in a fresh interpreter and reports what it holds. argv: locks dir.
CHILD_LOADS = textwrap.dedent(
    """
    import json, sys
    from csi_driver import storage
    storage.setup(file_locks_path=sys.argv[1])
    backends = storage.load(sys.stdin.read())
    report = {}
    for backend in backends:
        report[backend.name] = {
            "driver": backend.volume_driver,
            "location": backend.stats(refresh=True)["location_info"],
            "volumes": {
                v.id: {"size": v.size, "name": v.name, "status": v.status,
                       "snapshots": [s.id for s in v.snapshots],
                       "connections": [c.connection_info["data"]["name"] for c in v.connections]}
                for v in backend.volumes
            },
        }
        backend.close()
    print("RESULT " + json.dumps(report))
    """
)

# Opens the same SQLite store, finds the volumes and deletes them. argv: params JSON.
CHILD_DELETES = textwrap.dedent(
    """
    import json, sys
    from csi_driver import storage
    p = json.loads(sys.argv[1])
    storage.setup(persistence_config={"storage": "sqlite", "path": p["db"]},
                  file_locks_path=p["locks"])
    backend = storage.Backend(volume_backend_name=p["name"], **p["options"])
    found = {v.name: v for v in backend.volumes}
    report = {"found": sorted(found), "snapshots": [s.id for s in found["source"].snapshots]}
    found["clone"].delete()
    found["source"].snapshots[0].delete()
    found["source"].delete()
    backend.close()
    print("RESULT " + json.dumps(report))
    """
)


def run_child(script: str, *args: str, stdin: str = "") -> dict[str, Any]:
    env = dict(os.environ, OS_CINDER_DISABLE_EVENTLET_PATCHING="1")
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0].removeprefix("RESULT "))


def image(volume: storage.Volume) -> str:
    return f"volume-{volume.id}"


def test_full_cycle_keeps_store_and_cluster_in_step(
    tmp_path: Path,
    make_backend: MakeBackend,
    rbd_site: RbdSite,
    view: ClusterView,
    store_matches_cluster: Check,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cinder.volume.drivers.rbd")
    storage.setup(file_locks_path=str(tmp_path / "locks"), output_all_backend_info=True)
    options = rbd_site.options()
    with timed("backend setup (do_setup + check)"):
        backend = make_backend("rbd-cycle", **options)
    store_matches_cluster(backend, POOL)

    with timed("create volume 1 GiB"):
        source = backend.create_volume(size=1, name="source")
    assert source.status == "available"
    store_matches_cluster(backend, POOL)

    with timed("create snapshot"):
        snap = source.create_snapshot(name="snap")
    assert snap.status == "available"
    assert view.snaps(POOL, image(source)) == {f"snapshot-{snap.id}"}
    store_matches_cluster(backend, POOL)

    with timed("create volume from snapshot (1->2 GiB)"):
        restored = snap.create_volume(size=2, name="restored")
    assert restored.size == 2
    assert view.size_gib(POOL, image(restored)) == 2
    assert view.parent(POOL, image(restored)) == (POOL, image(source), f"snapshot-{snap.id}")
    # The cluster's min compat client (mimic) lets the driver use the v2 clone API.
    assert "Using v2 Clone API" in caplog.text
    store_matches_cluster(backend, POOL)

    with timed("clone volume"):
        clone = source.clone(name="clone")
    assert view.parent(POOL, image(clone)) == (POOL, image(source), f"{image(clone)}.clone_snap")
    store_matches_cluster(backend, POOL)

    with timed("extend volume 1->3 GiB"):
        source.extend(3)
    assert source.size == 3
    assert runtime.store().get_volumes(volume_id=source.id)[0]["size"] == 3
    store_matches_cluster(backend, POOL)

    with timed("connect (initialize_connection)"):
        conn = source.connect(NODE_A)
    info = conn.connection_info
    data = info["data"]
    assert info["driver_volume_type"] == "rbd"
    assert data["name"] == f"{POOL}/{image(source)}"
    assert data["hosts"] == ["127.0.0.1"]
    assert data["ports"] == [str(rbd_site.cluster.mon_ports[1])]  # the mon's v1 address
    assert data["auth_enabled"] is True
    assert data["auth_username"] == "cinder"
    assert data["secret_type"] == "ceph"
    assert data["secret_uuid"] == options["rbd_secret_uuid"]
    assert data["volume_id"] == source.id
    assert "keyring" not in data
    assert rbd_site.keys["cinder"] not in json.dumps(info)
    assert source.status == "in-use"
    stored = runtime.store().get_connections(volume_id=source.id)
    assert [c["id"] for c in stored] == [conn.id]
    assert stored[0]["connection_info"] == info
    store_matches_cluster(backend, POOL)

    # Everything exists now: a dump loads in a fresh process and matches `rbd ls`.
    with timed("dumps + load in a fresh process"):
        report = run_child(CHILD_LOADS, str(tmp_path / "child-locks"), stdin=storage.dumps())
    loaded = report["rbd-cycle"]
    assert loaded["driver"] == options["volume_driver"]
    assert loaded["location"].endswith(f":cinder:{POOL}")
    assert {f"volume-{vid}" for vid in loaded["volumes"]} == view.live_images(POOL)
    for vid, seen in loaded["volumes"].items():
        assert seen["size"] == view.size_gib(POOL, f"volume-{vid}")
    assert loaded["volumes"][source.id] == {
        "size": 3, "name": "source", "status": "in-use", "snapshots": [snap.id],
        "connections": [f"{POOL}/{image(source)}"],
    }  # fmt: skip
    assert {v["name"] for v in loaded["volumes"].values()} == {"source", "restored", "clone"}

    with timed("disconnect"):
        conn.disconnect()
    assert source.status == "available"
    assert runtime.store().get_connections(volume_id=source.id) == []
    store_matches_cluster(backend, POOL)

    for volume in (restored, clone):
        with timed("delete volume"):
            volume.delete()
        store_matches_cluster(backend, POOL)
    with timed("delete snapshot"):
        snap.delete()
    store_matches_cluster(backend, POOL)
    with timed("delete volume"):
        source.delete()
    store_matches_cluster(backend, POOL)

    assert runtime.store().get_volumes(backend="rbd-cycle") == []
    assert runtime.store().get_snapshots(backend="rbd-cycle") == []
    # Upstream RBDDriver keeps a volume that had a COW clone as "<name>.deleted" (its
    # .clone_snap survives the clone's fast-path delete); nothing else may remain.
    assert view.images(POOL) <= {f"{image(source)}.deleted"}


def test_sqlite_store_lets_another_process_find_and_delete_rbd_volumes(
    tmp_path: Path,
    make_backend: MakeBackend,
    rbd_site: RbdSite,
    view: ClusterView,
    store_matches_cluster: Check,
) -> None:
    db, locks = tmp_path / "meta.db", tmp_path / "locks"
    storage.setup(
        persistence_config={"storage": "sqlite", "path": str(db)}, file_locks_path=str(locks)
    )
    options = rbd_site.options()
    backend = make_backend("rbd-sqlite", **options)
    source = backend.create_volume(size=1, name="source")
    snap = source.create_snapshot()
    clone = source.clone(name="clone")
    store_matches_cluster(backend, POOL)
    assert view.live_images(POOL) == {image(source), image(clone)}

    params = {"db": str(db), "locks": str(locks), "name": "rbd-sqlite", "options": options}
    report = run_child(CHILD_DELETES, json.dumps(params))

    assert report == {"found": ["clone", "source"], "snapshots": [snap.id]}
    store = runtime.store()
    assert store.get_volumes(backend="rbd-sqlite") == []
    assert store.get_snapshots(backend="rbd-sqlite") == []
    assert view.live_images(POOL) == set()
    store_matches_cluster(backend, POOL)
