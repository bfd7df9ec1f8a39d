"""Every metadata store, fresh and empty, for the tests that hold them all to one
contract (``tests/storage/persistence/test_contract*.py``) and for benchmarks.

A store joins by adding a factory to ``STORE_FACTORIES``: a callable taking
pytest's ``request`` and ``tmp_path`` and returning a fresh, empty store. A
store with a server gets it with ``request.getfixturevalue`` (the real server,
started by the test harness); it fails, never skips, when that server cannot
be started.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from csi_driver.storage.persistence import MetadataStore
from csi_driver.storage.persistence.memory import MemoryStore
from csi_driver.storage.persistence.sqlite import SQLiteStore


def _kubernetes_store(request: pytest.FixtureRequest, tmp_path: Path) -> MetadataStore:
    from csi_support.kube_store import kube_store  # imports the kubernetes client

    return kube_store(request)


StoreFactory = Callable[[pytest.FixtureRequest, Path], MetadataStore]

_etcd_prefixes = itertools.count()


def etcd_store(request: pytest.FixtureRequest, tmp_path: Path, **options: Any) -> MetadataStore:
    """An EtcdStore on the session's etcd (``etcd_server``, tests/csi_support/cluster.py)
    under a prefix no other store of the run uses, so it starts empty."""
    from csi_driver.storage.persistence.etcd import EtcdStore

    server = request.getfixturevalue("etcd_server")
    prefix = f"/csi-test/{os.getpid()}-{next(_etcd_prefixes)}/"
    return EtcdStore(endpoints=[server.endpoint], prefix=prefix, **options)


STORE_FACTORIES: list[tuple[str, StoreFactory]] = [
    ("memory", lambda request, tmp_path: MemoryStore()),
    ("sqlite", lambda request, tmp_path: SQLiteStore(path=tmp_path / "metadata.db")),
    ("kubernetes", _kubernetes_store),
    ("etcd", etcd_store),
]

STORE_PARAMS = {
    "params": [factory for _, factory in STORE_FACTORIES],
    "ids": [name for name, _ in STORE_FACTORIES],
}


def vol(vid: str, backend: str = "lvm", name: str | None = None, **extra: Any) -> dict:
    return {"id": vid, "backend": backend, "name": name, **extra}


def snap(sid: str, volume_id: str, backend: str = "lvm", name: str | None = None,
         **extra: Any) -> dict:  # fmt: skip
    return {"id": sid, "backend": backend, "volume_id": volume_id, "name": name, **extra}


def conn(cid: str, volume_id: str, backend: str = "lvm", **extra: Any) -> dict:
    return {"id": cid, "backend": backend, "volume_id": volume_id, **extra}


def ids(records: list[dict]) -> list[str]:
    return [record["id"] for record in records]


def realistic_records(
    count: int, backend: str = "lvm"
) -> tuple[list[dict], list[dict], list[dict]]:
    """``count`` volumes as the library stores them, a snapshot for every fourth and
    a connection for every third (with CHAP secrets, as iSCSI exports carry)."""
    volume_type = {"id": "7c1f4d1e-type", "name": "fast", "extra_specs": {"tier": "ssd"},
                   "qos_specs": None}  # fmt: skip
    volumes, snapshots, connections = [], [], []
    for n in range(count):
        vid = f"{n:08x}-0000-4000-8000-{n:012x}"
        volumes.append({
            "id": vid, "backend": backend, "pool": "pool-a", "name": f"pvc-{n}",
            "size": 1 + n % 50, "status": "in-use" if n % 3 == 0 else "available",
            "created_at": "2026-11-29T10:00:00.000000", "updated_at": "2026-11-29T10:00:01.000000",
            "volume_type": volume_type, "multiattach": False,
            "metadata": {"csi-driver/access-type": "mount"}, "admin_metadata": {},
            "user_id": "csi", "project_id": "csi",
            "provider_location": f"10.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-{vid} 0",
            "provider_auth": f"CHAP user-{n} secret-{n}",
        })  # fmt: skip
        if n % 4 == 0:
            snapshots.append({
                "id": f"{n:08x}-0000-4000-9000-{n:012x}", "backend": backend, "volume_id": vid,
                "name": f"snapshot-{n}", "volume_size": 1 + n % 50, "status": "available",
                "created_at": "2026-11-29T10:00:02.000000", "metadata": {},
            })  # fmt: skip
        if n % 3 == 0:
            connections.append({
                "id": f"{n:08x}-0000-4000-a000-{n:012x}", "backend": backend, "volume_id": vid,
                "status": "attached", "attach_mode": "rw", "attached_host": f"node-{n % 5}",
                "connector": {"host": f"node-{n % 5}", "initiator": f"iqn.2004-10.x:node-{n % 5}"},
                "connection_info": {"driver_volume_type": "iscsi", "data": {
                    "target_iqn": f"iqn.2010-10.org.openstack:volume-{vid}", "target_lun": 0,
                    "auth_method": "CHAP", "auth_username": f"user-{n}",
                    "auth_password": f"secret-{n}"}},
            })  # fmt: skip
    return volumes, snapshots, connections


def fill(store: MetadataStore, records: tuple[list[dict], list[dict], list[dict]],
         batch: int = 20) -> None:  # fmt: skip
    """Write records in small atomic batches (stores with servers bound transactions)."""
    volumes, snapshots, connections = records
    for key, items in (("volumes", volumes), ("snapshots", snapshots),
                       ("connections", connections)):  # fmt: skip
        for start in range(0, len(items), batch):
            store.write(**{key: items[start : start + batch]})


def contents(store: MetadataStore) -> tuple[list[dict], list[dict], list[dict], dict[str, str]]:
    """Everything in a store, sorted by id, for comparisons."""

    def by_id(records: list[dict]) -> list[dict]:
        return sorted(records, key=lambda r: r["id"])

    return (by_id(store.get_volumes()), by_id(store.get_snapshots()),
            by_id(store.get_connections()), store.get_values())  # fmt: skip
