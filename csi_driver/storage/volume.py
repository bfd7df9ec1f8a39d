"""Volumes: creation, deletion, resize, clones, snapshots, connections."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from csi_driver.storage import connector, crash_points, validation
from csi_driver.storage.exceptions import InvalidArgument, InvalidState, NotFound
from csi_driver.storage.persistence.base import VOLUME as VOLUME_KIND
from csi_driver.storage.persistence.base import compact
from csi_driver.storage.resource import Field, Resource, new_id, operation_record, utcnow

if TYPE_CHECKING:
    from csi_driver.storage.backend import Backend
    from csi_driver.storage.connection import Connection
    from csi_driver.storage.persistence.base import Record
    from csi_driver.storage.snapshot import Snapshot

LOG = logging.getLogger(__name__)

AVAILABLE = "available"
IN_USE = "in-use"


class Volume(Resource):
    """A volume on one backend.

    ``snapshots`` and ``connections`` are loaded from the metadata store the first
    time they are read and kept afterwards (``backend.refresh()`` reloads).
    """

    __slots__ = ("_connections", "_snapshots")

    KIND = "volume"
    LAZY = ("snapshots", "connections")
    SUMMARY = (
        "id", "name", "description", "size", "status", "created_at", "source_volume_id",
        "source_snapshot_id", "volume_type", "multiattach", "availability_zone", "metadata",
    )  # fmt: skip

    name: Field[str | None] = Field()
    description: Field[str | None] = Field()
    size: Field[int] = Field()
    pool: Field[str | None] = Field()
    source_volume_id: Field[str | None] = Field()
    source_snapshot_id: Field[str | None] = Field()
    volume_type: Field[dict[str, Any]] = Field()
    multiattach: Field[bool] = Field()
    availability_zone: Field[str | None] = Field()
    metadata: Field[dict[str, str]] = Field()
    provider_location: Field[str | None] = Field()
    provider_id: Field[str | None] = Field()

    def __init__(
        self,
        backend: Backend,
        data: Record,
        *,
        snapshots: list[Snapshot] | None = None,
        connections: list[Connection] | None = None,
    ) -> None:
        super().__init__(backend, data)
        self._snapshots = snapshots
        self._connections = connections

    # -- lazy relations ------------------------------------------------------------
    @property
    def snapshots(self) -> list[Snapshot]:
        """This volume's snapshots (read from the store on first use)."""
        if self._snapshots is None:
            from csi_driver.storage.snapshot import Snapshot

            records = self._store().get_snapshots(volume_id=self.id)
            self._snapshots = [Snapshot(self.backend, r, volume=self) for r in records]
        return self._snapshots

    @property
    def connections(self) -> list[Connection]:
        """This volume's connections (read from the store on first use)."""
        if self._connections is None:
            from csi_driver.storage.connection import Connection

            records = self._store().get_connections(volume_id=self.id)
            self._connections = [Connection(self.backend, r, volume=self) for r in records]
        return self._connections

    # -- creation --------------------------------------------------------------------
    @classmethod
    def _new_record(
        cls,
        backend: Backend,
        size: Any,
        name: Any,
        description: Any,
        extra: dict[str, Any],
        **sources: str | None,
    ) -> Record:
        """Validate creation arguments and build the record of a volume to create."""
        validation.check_size(size)
        validation.check_optional_str("name", name)
        validation.check_optional_str("description", description)
        opts = validation.volume_extras(extra)
        volume_id = opts.pop("id", None)
        if volume_id and backend._store().get_volumes(volume_id=volume_id):
            raise InvalidArgument(f"a volume with id {volume_id!r} already exists")
        volume_id = volume_id or new_id()  # a fresh uuid4 is taken by nothing
        settings = backend._settings()
        now = utcnow()
        return compact(
            {
                "id": volume_id,
                "backend": backend.name,
                "pool": opts.pop("pool", None) or backend.default_pool(),
                "name": name,
                "description": description,
                "size": size,
                "status": "creating",
                "created_at": now,
                "updated_at": now,
                "source_volume_id": sources.get("source_volume_id"),
                "source_snapshot_id": sources.get("source_snapshot_id"),
                "volume_type": opts.pop("volume_type"),
                "multiattach": opts.pop("multiattach", False),
                "availability_zone": opts.pop("availability_zone", None),
                "metadata": opts.pop("metadata", {}),
                "admin_metadata": {},
                "user_id": settings.user_id,
                "project_id": settings.project_id,
                "name_id": None,
                "provider_location": None,
                "provider_auth": None,
                "provider_id": None,
                "provider_geometry": None,
                "replication_status": None,
            }
        )

    @classmethod
    def _create(
        cls,
        backend: Backend,
        record: Record,
        driver_call: str,
        *sources: Record,
        unique_name: bool = False,
    ) -> Volume:
        """Store a 'creating' record, run the driver, and keep nothing if it fails.

        The record is written first so that a crash mid-create leaves a trace an
        administrator can find; a driver failure removes it again.
        """
        volume = cls(backend, record, snapshots=[], connections=[])
        store = backend._store()
        record["operation"] = operation_record(driver_call, record["created_at"])
        if unique_name:
            store.create_unique(VOLUME_KIND, record)
        else:
            store.set_volume(record)
        crash_points.reach(f"{driver_call}.before-driver")
        try:
            updates = getattr(backend._host, driver_call)(record, *sources)
        except Exception:
            backend._host.cleanup_failed_create(record)
            store.delete_volume(record["id"])
            raise
        crash_points.reach(f"{driver_call}.after-driver")
        volume._end(AVAILABLE, **updates)
        backend._remember(volume)
        LOG.info("created volume %s (%s GiB) on backend %s", volume.id, volume.size, backend.name)
        return volume

    def _derived_record(
        self, size: int, name: Any, description: Any, extra: dict[str, Any], **sources: str
    ) -> Record:
        """The record of a volume made from this one's data (a clone, or from one of its
        snapshots): same volume type and pool unless the caller gives others."""
        if not {"volume_type", "extra_specs", "qos_specs"} & set(extra):
            extra["volume_type"] = self.volume_type
        extra.setdefault("pool", self.pool)
        return Volume._new_record(self.backend, size, name, description, extra, **sources)

    # -- operations ------------------------------------------------------------------
    def delete(self) -> None:
        """Delete the volume; refused while it has snapshots or connections."""
        store = self._store()
        # Ask the store, not the loaded lists: another process may have added some.
        if snapshots := store.get_snapshots(volume_id=self.id):
            raise InvalidState(
                f"volume {self.id} has {len(snapshots)} snapshot(s); delete them first"
            )
        if connections := store.get_connections(volume_id=self.id):
            raise InvalidState(
                f"volume {self.id} has {len(connections)} connection(s); disconnect them first"
            )
        self._run_delete(lambda: self.backend._host.delete_volume(self._data))
        # Not durable: a power loss that undoes it leaves the record 'deleting', which
        # recovery finishes (the driver's delete succeeds on what is gone).
        store.delete(VOLUME_KIND, self.id, durable=False)
        self._update(status="deleted")
        self.backend._forget(self)
        LOG.info("deleted volume %s on backend %s", self.id, self.backend.name)

    def extend(self, size: int) -> None:
        """Grow the volume to ``size`` GiB."""
        validation.check_size(size)
        if size <= self.size:
            raise InvalidArgument(
                f"new size {size} GiB must be larger than the current {self.size} GiB"
            )
        if self.status not in (AVAILABLE, IN_USE):
            raise InvalidState(f"volume {self.id} is {self.status}; cannot extend it")
        previous = self.status
        self._begin("extending", "extend", size=size, previous_status=previous,
                    previous_size=self.size)  # fmt: skip
        crash_points.reach("extend_volume.before-driver")
        self._run_extend(size, previous)

    def _run_extend(self, size: int, previous: str) -> None:
        """The driver half of ``extend`` (also what finishes an interrupted one)."""
        try:
            updates = self.backend._host.extend_volume(self._data, size)
        except Exception:
            self._end(previous)
            raise
        crash_points.reach("extend_volume.after-driver")
        # Not durable: a power loss that undoes it leaves the record 'extending' to
        # ``size``, which recovery finishes (the driver made the new size durable).
        self._end(previous, durable=False, size=size, **updates)

    def clone(
        self,
        size: int | None = None,
        name: str | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> Volume:
        """A new volume with this volume's data (``size`` defaults to this one's)."""
        size = self.size if size is None else size
        validation.check_size(size)
        if size < self.size:
            raise InvalidArgument(f"a clone cannot be smaller than its source ({self.size} GiB)")
        extra = dict(extra)
        unique = validation.pop_unique_name("volume", name, extra)
        record = self._derived_record(size, name, description, extra, source_volume_id=self.id)
        return Volume._create(
            self.backend, record, "create_cloned_volume", self._data, unique_name=unique
        )

    def create_snapshot(
        self, name: str | None = None, description: str | None = None, **extra: Any
    ) -> Snapshot:
        """Snapshot this volume."""
        from csi_driver.storage.snapshot import Snapshot

        snapshot = Snapshot._create(self, name, description, extra)
        if self._snapshots is not None:
            self._snapshots.append(snapshot)
        return snapshot

    def connect(self, connector_properties: dict[str, Any], attach_mode: str = "rw") -> Connection:
        """Export the volume to a host described by os-brick connector properties."""
        from csi_driver.storage.connection import Connection

        connection = Connection._create(self, connector_properties, attach_mode)
        self.connections.append(connection)
        return connection

    def attach(self, multipath: bool = False, enforce_multipath: bool = False) -> Connection:
        """Connect the volume to this host and attach it with os-brick."""
        properties = connector.local_properties(
            self._settings(), multipath=multipath, enforce_multipath=enforce_multipath
        )
        connection = self.connect(properties)
        try:
            connection.attach()
        except Exception:
            LOG.warning("attach of volume %s failed; disconnecting it again", self.id)
            connection.disconnect(force=True)
            raise
        return connection

    def detach(self, force: bool = False) -> None:
        """Detach and disconnect this volume's connections to this host."""
        host = self._settings().host
        local = [c for c in self.connections if c.attached_host == host]
        if not local:
            raise NotFound(f"volume {self.id} is not attached to this host ({host})")
        for connection in local:
            connection.detach(force=force)
            connection.disconnect(force=force)

    # -- bookkeeping used by the other resources -------------------------------------
    def _settings(self) -> Any:
        return self.backend._settings()

    def _closing(self, connection: Connection) -> bool:
        """Before ``connection``'s record is removed: the last one going makes 'in-use'
        'available'. True when that changed this record (the caller stores it in the
        same write as the removal)."""
        if self.status != IN_USE:
            return False
        if any(r["id"] != connection.id for r in self._store().get_connections(volume_id=self.id)):
            return False
        self._update(status=AVAILABLE)
        return True

    def _connection_closed(self, connection: Connection) -> None:
        if self._connections is not None:
            self._connections[:] = [c for c in self._connections if c.id != connection.id]

    def _snapshot_deleted(self, snapshot: Snapshot) -> None:
        if self._snapshots is not None:
            self._snapshots[:] = [s for s in self._snapshots if s.id != snapshot.id]
