"""Finishing or undoing what an interrupted operation left in the metadata store.

Every operation stores its record in a transitional status, with the operation in
flight (``record['operation']``), *before* it calls the driver, and a stable status
after. A process killed in between leaves the transitional record, and ``heal`` takes
it back to a stable state, the same way for every caller (a retried request, the
plugin's reconciler):

=================  ===========================  =========================================
operation          record left                  healed by
=================  ===========================  =========================================
create volume      volume ``creating``          undo: driver delete (idempotent), record
(clone, from                                    removed; the caller creates it again
snapshot)
delete volume      volume ``deleting``          finish: driver delete, record removed
extend volume      volume ``extending``         finish: driver extend to the size noted;
                                                if that fails, the size and status before
create snapshot    snapshot ``creating``        undo, as for a volume
delete snapshot    snapshot ``deleting``        finish
connect            connection ``connecting``    finish (export + initialize again) when
                                                the same connection is asked for again,
                                                else undo (terminate, remove export)
disconnect         connection ``disconnecting`` finish
=================  ===========================  =========================================

Drivers' deletes succeed on what is already gone (Cinder's driver contract), which is
what makes "run it again" safe. Callers must make sure no other thread of this process
is working on the resource (the CSI controller holds its in-flight locks); an operation
another live process runs (a replica sharing the store) is not interrupted but in
progress (storage/ownership.py decides), and is left alone.
"""

from __future__ import annotations

import logging
from typing import Any

from csi_driver.storage import ownership, runtime
from csi_driver.storage.backend import Backend
from csi_driver.storage.connection import Connection
from csi_driver.storage.exceptions import OperationInProgress
from csi_driver.storage.resource import TRANSITIONAL, Resource
from csi_driver.storage.snapshot import Snapshot
from csi_driver.storage.volume import Volume

LOG = logging.getLogger(__name__)


def _abandoned(operation: Any) -> bool:
    return ownership.is_abandoned(operation, runtime.settings().stale_operation_seconds)


def is_interrupted(resource: Resource) -> bool:
    """Whether the record says an operation was in flight when it was stored, and no
    live process is running it any more."""
    return resource.status in TRANSITIONAL and _abandoned(resource.operation)


def must_heal(resource: Resource) -> bool:
    """Whether an interrupted operation must be healed before the resource is used;
    OperationInProgress (retry later) when another live process is running it."""
    if resource.status not in TRANSITIONAL:
        return False
    if _abandoned(resource.operation):
        return True
    owner = (resource.operation or {}).get("owner") or {}
    raise OperationInProgress(
        f"{resource.KIND} {resource.id} is {resource.status} by another process "
        f"(host {owner.get('host')!r}, pid {owner.get('pid')}); retry when it is done"
    )


def check_not_in_progress(resource: Resource) -> None:
    """Refuse (OperationInProgress) a resource whose operation another live process is
    running right now; an interrupted one is the caller's to heal."""
    must_heal(resource)


def heal_volume(volume: Volume) -> Volume | None:
    """Finish or undo the volume's interrupted operation; None when the volume is gone."""
    status = volume.status
    if status in ("creating", "deleting"):
        _log(volume, "undoing" if status == "creating" else "finishing")
        volume.delete()
        return None
    if status == "extending":
        operation = volume.operation or {}
        size = int(operation.get("size") or volume.size)
        previous = str(operation.get("previous_status") or _volume_rest(volume))
        _log(volume, f"finishing (to {size} GiB)")
        try:
            volume._run_extend(size, previous)
        except Exception:
            # The driver could not confirm the size: keep the one stored before the
            # extend began, so the volume is usable and a retry extends it again.
            LOG.warning("volume %s: the interrupted extend could not be finished; it keeps "
                        "%s GiB (the size before) and status %s", volume.id,
                        volume.size, volume.status)  # fmt: skip
            raise
    return volume


def heal_snapshot(snapshot: Snapshot) -> Snapshot | None:
    """Finish or undo the snapshot's interrupted operation; None when it is gone."""
    if snapshot.status in ("creating", "deleting"):
        _log(snapshot, "undoing" if snapshot.status == "creating" else "finishing")
        snapshot.delete()
        return None
    return snapshot


def heal_connection(connection: Connection, finish_connect: bool = False) -> Connection | None:
    """Finish or undo the connection's interrupted operation; None when it is gone.

    An interrupted ``connect`` is finished when ``finish_connect`` (the same host asks
    for the volume again), otherwise undone: nobody may be waiting for it any more.
    """
    status = connection.status
    if status == "connecting" and finish_connect:
        _log(connection, "finishing")
        others = [r for r in runtime.store().get_connections(volume_id=connection.volume_id)
                  if r["id"] != connection.id]  # fmt: skip
        try:
            connection._export(others)
        except Exception:
            LOG.warning("connection %s: finishing the interrupted connect failed; undoing it",
                        connection.id)  # fmt: skip
            connection.disconnect(force=True)
            raise
        return connection
    if status in ("connecting", "disconnecting"):
        _log(connection, "undoing" if status == "connecting" else "finishing")
        connection.disconnect(force=True)
        return None
    return connection


def interrupted() -> list[Resource]:
    """Every resource of a configured backend whose record says an operation was in
    flight: connections first, then snapshots, then volumes (the order that lets each
    heal: a volume is deleted only once its snapshots and connections are gone)."""
    store = runtime.store()
    found: list[Resource] = []
    for kind, records in (
        (Connection, store.get_connections()),
        (Snapshot, store.get_snapshots()),
        (Volume, store.get_volumes()),
    ):
        for record in records:
            if record.get("status") not in TRANSITIONAL or not _abandoned(record.get("operation")):
                continue
            backend = Backend.backends.get(record["backend"])
            if backend is None:
                LOG.warning("%s %s was left %s on backend %r, which is not configured here",
                            kind.KIND, record["id"], record["status"],
                            record["backend"])  # fmt: skip
                continue
            found.append(kind(backend, record))
    return found


def heal(resource: Resource) -> Any:
    """``heal_volume``, ``heal_snapshot`` or ``heal_connection``, by the resource's kind."""
    if isinstance(resource, Volume):
        return heal_volume(resource)
    if isinstance(resource, Snapshot):
        return heal_snapshot(resource)
    if isinstance(resource, Connection):
        return heal_connection(resource)
    raise TypeError(f"cannot heal {resource!r}")


def _volume_rest(volume: Volume) -> str:
    return "in-use" if runtime.store().get_connections(volume_id=volume.id) else "available"


def _log(resource: Resource, action: str) -> None:
    operation = resource.operation or {}
    LOG.warning("%s %s was left %s by an interrupted %s (started %s); %s it",
                resource.KIND, resource.id, resource.status,
                operation.get("name", "operation"), operation.get("started_at", "?"),
                action)  # fmt: skip
