"""Connections: a volume exported to one host, and its os-brick attachment there.

``volume.connect(props)`` runs on the controller (driver export +
initialize_connection). ``connection.attach()`` runs on the host named in the
connector properties, often another process that received ``connection.jsons``:
it needs os-brick and the connection info, not the driver or the store.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from csi_driver.storage import connector, crash_points, secrets, validation
from csi_driver.storage.exceptions import AttachError, InvalidArgument, InvalidState, NotFound
from csi_driver.storage.persistence.base import CONNECTION as CONNECTION_KIND
from csi_driver.storage.persistence.base import compact
from csi_driver.storage.resource import Field, Resource, new_id, operation_record, utcnow

if TYPE_CHECKING:
    from csi_driver.storage.backend import Backend
    from csi_driver.storage.persistence.base import Record
    from csi_driver.storage.volume import Volume

LOG = logging.getLogger(__name__)

CONNECTED = "connected"
ATTACHED = "attached"
ATTACH_MODES = ("rw", "ro")


class Connection(Resource):
    """A volume exported to a host; ``volume`` is loaded lazily."""

    __slots__ = ("_volume",)

    KIND = "connection"
    LAZY = ("volume",)
    SUMMARY = (
        "id", "volume_id", "status", "attach_mode", "attached_host", "connector",
        "connection_info", "device", "created_at",
    )  # fmt: skip

    volume_id: Field[str] = Field()
    connector: Field[dict[str, Any]] = Field()
    connection_info: Field[dict[str, Any]] = Field()
    attach_mode: Field[str] = Field()
    attached_host: Field[str | None] = Field()
    #: What os-brick's ``connect_volume`` returned on the attaching host, or None.
    device: Field[dict[str, Any] | None] = Field()

    def __init__(self, backend: Backend, data: Record, *, volume: Volume | None = None) -> None:
        super().__init__(backend, data)
        self._volume = volume
        secrets.remember_secrets_in(data.get("connection_info"))

    @property
    def volume(self) -> Volume:
        """The connected volume (read from the store on first use)."""
        if self._volume is None:
            from csi_driver.storage.volume import Volume

            records = self._store().get_volumes(volume_id=self.volume_id)
            if not records:
                raise NotFound(
                    f"volume {self.volume_id} of connection {self.id} is not in the store"
                )
            self._volume = Volume(self.backend, records[0])
        return self._volume

    @property
    def conn_info(self) -> dict[str, Any]:
        """The driver's connection info (alias of ``connection_info``)."""
        return self.connection_info

    @property
    def protocol(self) -> str:
        """os-brick protocol name, e.g. 'iscsi', 'rbd', 'local'."""
        return self.connection_info["driver_volume_type"]

    @property
    def path(self) -> str | None:
        """Device path on the attaching host, once attached."""
        return (self.device or {}).get("path")

    @property
    def _multipath(self) -> bool:
        """Whether the attaching host asked for multipath in its connector properties."""
        return bool((self.connector or {}).get("multipath"))

    @property
    def attached(self) -> bool:
        return self.device is not None

    # -- controller side -------------------------------------------------------------
    @classmethod
    def _create(
        cls, volume: Volume, connector_properties: Mapping[str, Any], attach_mode: str
    ) -> Connection:
        if not isinstance(connector_properties, Mapping):
            raise InvalidArgument("connector_properties must be a mapping (os-brick's form)")
        if attach_mode not in ATTACH_MODES:
            raise InvalidArgument(f"attach_mode must be one of {ATTACH_MODES}, not {attach_mode!r}")
        try:
            props = json.loads(json.dumps(dict(connector_properties)))
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"connector_properties are not JSON-serializable: {exc}"
            ) from None
        host = props.get("host")
        validation.check_optional_str("connector host", host)
        if volume.status not in ("available", "in-use"):
            raise InvalidState(f"volume {volume.id} is {volume.status}; cannot connect it")
        store = volume._store()
        existing = store.get_connections(volume_id=volume.id)
        if existing and not volume.multiattach and any(c["connector"] != props for c in existing):
            raise InvalidState(
                f"volume {volume.id} is already connected to another host and is not multiattach"
            )
        now = utcnow()
        record: Record = compact(
            {
                "id": new_id(),
                "backend": volume.backend_name,
                "volume_id": volume.id,
                "status": "connecting",
                "operation": operation_record("connect", now),
                "attach_mode": attach_mode,
                "attached_host": host,
                "connector": props,
                "connection_info": None,
                "device": None,
                "created_at": now,
                "updated_at": now,
            }
        )
        store.set_connection(record)
        crash_points.reach("connect.before-driver")
        connection = cls(volume.backend, record, volume=volume)
        try:
            connection._export(existing)
        except Exception:
            store.delete_connection(record["id"])
            raise
        return connection

    def _export(self, others: list[Record]) -> None:
        """Export the volume and initialize the connection on the backend, then store
        both records as connected. Also what finishes an interrupted ``connect``:
        cinder-volume likewise re-runs export and initialize for a retried attach."""
        volume = self.volume
        updates, conn_info = volume.backend._host.connect(volume._data, self._data, others)
        crash_points.reach("connect.after-driver")
        secrets.remember_secrets_in(conn_info)
        self._update(status=CONNECTED, operation=None, connection_info=conn_info)
        volume._update(status="in-use", **updates)
        self._store().write(volumes=(volume._data,), connections=(self._data,))
        LOG.info("connected volume %s to host %s (%s)", volume.id, self.attached_host,
                 self.protocol)  # fmt: skip

    def disconnect(self, force: bool = False) -> None:
        """Undo ``connect`` on the backend; refused while attached unless ``force``."""
        if self.attached and not force:
            raise InvalidState(
                f"connection {self.id} is attached at {self.path} on {self.attached_host}; "
                "detach it first"
            )
        host = self.backend._host  # an attach-only process (a CSI node) stops here, by name
        volume = self.volume
        store = self._store()
        others = [c for c in store.get_connections(volume_id=volume.id) if c["id"] != self.id]
        previous = self.status if self.status != "disconnecting" else CONNECTED
        self._begin("disconnecting", "disconnect", previous_status=previous)
        crash_points.reach("disconnect.before-driver")
        try:
            updates = host.disconnect(volume._data, self._data, others, force=force)
        except Exception:
            self._end(previous)
            raise
        crash_points.reach("disconnect.after-driver")
        if updates:
            volume._update(**updates)
        changed = volume._closing(self) or bool(updates)
        # One write removes the connection and stores the volume's new state. Not
        # durable: a power loss that undoes it leaves the connection 'disconnecting',
        # which recovery finishes (terminate and remove_export again, then this write).
        store.write(volumes=(volume._data,) if changed else (),
                    remove=((CONNECTION_KIND, self.id),), durable=False)  # fmt: skip
        self._update(status="disconnected", operation=None)
        volume._connection_closed(self)
        LOG.info("disconnected volume %s from host %s", volume.id, self.attached_host)

    # -- attaching host side ---------------------------------------------------------
    @classmethod
    def load_for_host(cls, data: str | bytes | dict[str, Any]) -> Connection:
        """Load a serialized connection to attach or detach it on this host, apart from
        any metadata store: bound to an attach-only stand-in of its backend with a store
        of its own, so its ``attach``/``detach`` never write what a document says into
        the store this process may share with a controller (a stale document would
        otherwise bring back a record the controller removed). Its state travels in
        its ``jsons``, which the caller keeps."""
        from csi_driver.storage.backend import AttachOnlyBackend
        from csi_driver.storage.persistence.memory import MemoryStore

        loaded = cls.load(data)
        return cls(AttachOnlyBackend(loaded.backend_name, store=MemoryStore()), loaded.record)

    def attach(self) -> str | None:
        """Attach the volume on this host with os-brick; returns the device path."""
        if self.attached:
            return self.path
        try:
            device = connector.connect(self.connection_info, use_multipath=self._multipath)
        except AttachError as exc:
            raise self._named(exc) from exc
        self._update(status=ATTACHED, device=device)
        self._save()
        LOG.info("attached volume %s at %s", self.volume_id, self.path)
        return self.path

    def detach(self, force: bool = False) -> None:
        """Detach the device from this host (the export stays until ``disconnect``)."""
        if not self.attached:
            return
        try:
            connector.disconnect(
                self.connection_info, self.device, use_multipath=self._multipath, force=force
            )
        except AttachError as exc:
            raise self._named(exc) from exc
        self._update(status=CONNECTED, device=None)
        self._save()
        LOG.info("detached volume %s", self.volume_id)

    def extend(self) -> int | None:
        """After the volume grew, make this host's device show the new size (os-brick
        rescan); returns the size in bytes, or None if the protocol has no rescan."""
        if not self.attached:
            raise InvalidState(f"connection {self.id} is not attached on this host")
        try:
            return connector.extend(self.connection_info, use_multipath=self._multipath)
        except AttachError as exc:
            raise self._named(exc) from exc

    def _named(self, exc: AttachError) -> AttachError:
        """os-brick knows no backend; name it and the volume for the administrator."""
        return AttachError(f"backend {self.backend_name!r}: volume {self.volume_id}: {exc}")
