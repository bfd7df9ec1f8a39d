"""Snapshots: creation from a volume, deletion, and new volumes from them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from csi_driver.storage import crash_points, validation
from csi_driver.storage.exceptions import InvalidArgument, NotFound
from csi_driver.storage.persistence.base import SNAPSHOT as SNAPSHOT_KIND
from csi_driver.storage.persistence.base import compact
from csi_driver.storage.resource import Field, Resource, new_id, operation_record, utcnow

if TYPE_CHECKING:
    from csi_driver.storage.backend import Backend
    from csi_driver.storage.persistence.base import Record
    from csi_driver.storage.volume import Volume

LOG = logging.getLogger(__name__)


class Snapshot(Resource):
    """A point-in-time copy of a volume; ``volume`` is loaded lazily."""

    __slots__ = ("_volume",)

    KIND = "snapshot"
    LAZY = ("volume",)
    SUMMARY = (
        "id", "name", "description", "volume_id", "volume_size", "status", "created_at",
        "metadata",
    )  # fmt: skip

    name: Field[str | None] = Field()
    description: Field[str | None] = Field()
    volume_id: Field[str] = Field()
    volume_size: Field[int] = Field()
    metadata: Field[dict[str, str]] = Field()
    provider_location: Field[str | None] = Field()

    def __init__(self, backend: Backend, data: Record, *, volume: Volume | None = None) -> None:
        super().__init__(backend, data)
        self._volume = volume

    @property
    def volume(self) -> Volume:
        """The volume this snapshot was taken from (read from the store on first use)."""
        if self._volume is None:
            from csi_driver.storage.volume import Volume

            records = self._store().get_volumes(volume_id=self.volume_id)
            if not records:
                raise NotFound(f"volume {self.volume_id} of snapshot {self.id} is not in the store")
            self._volume = Volume(self.backend, records[0])
        return self._volume

    @classmethod
    def _create(
        cls, volume: Volume, name: str | None, description: str | None, extra: dict[str, Any]
    ) -> Snapshot:
        validation.check_optional_str("name", name)
        validation.check_optional_str("description", description)
        extra = dict(extra)
        unique = validation.pop_unique_name("snapshot", name, extra)
        opts = validation.resource_extras("snapshot", extra)
        store = volume._store()
        snapshot_id = opts.get("id") or new_id()
        if store.get_snapshots(snapshot_id=snapshot_id):
            raise InvalidArgument(f"a snapshot with id {snapshot_id!r} already exists")
        settings = volume._settings()
        now = utcnow()
        record: Record = compact(
            {
                "id": snapshot_id,
                "backend": volume.backend_name,
                "volume_id": volume.id,
                "name": name,
                "description": description,
                "volume_size": volume.size,
                "status": "creating",
                "created_at": now,
                "updated_at": now,
                "metadata": opts["metadata"],
                "user_id": settings.user_id,
                "project_id": settings.project_id,
                "provider_location": None,
                "provider_auth": None,
                "provider_id": None,
            }
        )
        snapshot = cls(volume.backend, record, volume=volume)
        record["operation"] = operation_record("create_snapshot", now)
        if unique:
            store.create_unique(SNAPSHOT_KIND, record)
        else:
            store.set_snapshot(record)
        crash_points.reach("create_snapshot.before-driver")
        try:
            updates = volume.backend._host.create_snapshot(record, volume._data)
        except Exception:
            store.delete_snapshot(snapshot_id)
            raise
        crash_points.reach("create_snapshot.after-driver")
        snapshot._end("available", **updates)
        LOG.info("created snapshot %s of volume %s", snapshot_id, volume.id)
        return snapshot

    def delete(self) -> None:
        """Delete the snapshot. Volumes created from it are independent and stay."""
        volume = self.volume
        self._run_delete(lambda: self.backend._host.delete_snapshot(self._data, volume._data))
        # Not durable: a power loss that undoes it leaves 'deleting', which recovery finishes.
        self._store().delete(SNAPSHOT_KIND, self.id, durable=False)
        self._update(status="deleted")
        volume._snapshot_deleted(self)
        LOG.info("deleted snapshot %s", self.id)

    def create_volume(
        self,
        size: int | None = None,
        name: str | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> Volume:
        """A new volume holding this snapshot's data (``size`` defaults to the source's)."""
        from csi_driver.storage.volume import Volume

        size = self.volume_size if size is None else size
        validation.check_size(size)
        if size < self.volume_size:
            raise InvalidArgument(
                f"a volume from snapshot {self.id} needs at least {self.volume_size} GiB"
            )
        source = self.volume
        extra = dict(extra)
        unique = validation.pop_unique_name("volume", name, extra)
        record = source._derived_record(size, name, description, extra, source_snapshot_id=self.id)
        return Volume._create(
            self.backend,
            record,
            "create_volume_from_snapshot",
            self._data,
            source._data,
            unique_name=unique,
        )
