"""Library-level lookups across every configured backend, for callers (like the CSI
controller) that know an id or name but not which backend holds it.

The metadata store is shared by all backends, so one query answers; a record whose
backend is not configured in this process is reported by name rather than skipped.
"""

from __future__ import annotations

from typing import Any

from csi_driver.storage import runtime
from csi_driver.storage.backend import Backend
from csi_driver.storage.connection import Connection
from csi_driver.storage.exceptions import InvalidState, NotFound
from csi_driver.storage.snapshot import Snapshot
from csi_driver.storage.volume import Volume


def _backend_of(record: dict[str, Any], kind: str) -> Backend:
    backend = Backend.backends.get(record["backend"])
    if backend is None:
        raise InvalidState(
            f"{kind} {record['id']} is on backend {record['backend']!r}, "
            "which is not configured in this process"
        )
    return backend


def get_volume(volume_id: str) -> Volume:
    """The volume with that id on any configured backend, or ``NotFound``."""
    records = runtime.store().get_volumes(volume_id=volume_id)
    if not records:
        raise NotFound(f"volume {volume_id} not found")
    return Volume(_backend_of(records[0], "volume"), records[0])


def get_snapshot(snapshot_id: str) -> Snapshot:
    """The snapshot with that id on any configured backend, or ``NotFound``."""
    records = runtime.store().get_snapshots(snapshot_id=snapshot_id)
    if not records:
        raise NotFound(f"snapshot {snapshot_id} not found")
    return Snapshot(_backend_of(records[0], "snapshot"), records[0])


def find_volumes(name: str | None = None) -> list[Volume]:
    """Volumes on configured backends (with that name, when given), sorted by id."""
    records = runtime.store().get_volumes(name=name)
    return [
        Volume(Backend.backends[r["backend"]], r)
        for r in sorted(records, key=lambda r: r["id"])
        if r["backend"] in Backend.backends
    ]


def find_snapshots(name: str | None = None, volume_id: str | None = None) -> list[Snapshot]:
    """Snapshots on configured backends matching the filters given, sorted by id."""
    records = runtime.store().get_snapshots(name=name, volume_id=volume_id)
    return [
        Snapshot(Backend.backends[r["backend"]], r)
        for r in sorted(records, key=lambda r: r["id"])
        if r["backend"] in Backend.backends
    ]


def find_connections() -> list[Connection]:
    """Every connection on configured backends, with one store read (their volumes
    are loaded lazily, only if asked for)."""
    return [
        Connection(Backend.backends[r["backend"]], r)
        for r in runtime.store().get_connections()
        if r["backend"] in Backend.backends
    ]
