"""Backends: one Cinder driver with its configuration, and the volumes it holds."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, ClassVar

from csi_driver.storage import runtime, secrets, serialization, validation
from csi_driver.storage.exceptions import InvalidArgument, NotFound, NotSupported
from csi_driver.storage.volume import Volume

if TYPE_CHECKING:
    from csi_driver.storage.cinder_adapter import DriverHost
    from csi_driver.storage.connection import Connection
    from csi_driver.storage.persistence.base import MetadataStore
    from csi_driver.storage.snapshot import Snapshot


class Backend(serialization.Serializable):
    """A configured Cinder driver, e.g. ``Backend(volume_backend_name='lvm',
    volume_driver='cinder.volume.drivers.lvm.LVMVolumeDriver', volume_group='vg')``.

    Construction starts the driver (``do_setup``, ``check_for_setup_error``) and
    raises ``BackendSetupError`` naming the backend and the cause when it cannot.
    Every live backend is in ``Backend.backends``, keyed by name.
    """

    backends: ClassVar[dict[str, Backend]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()
    _starting: ClassVar[set[str]] = set()

    def __init__(self, volume_backend_name: str, volume_driver: str, **driver_options: Any):
        if not isinstance(volume_backend_name, str) or not volume_backend_name.strip():
            raise InvalidArgument("volume_backend_name must be a non-empty string")
        if not isinstance(volume_driver, str) or not volume_driver:
            raise InvalidArgument("volume_driver must be a dotted class path")
        name = volume_backend_name
        with Backend._registry_lock:
            if name in Backend.backends or name in Backend._starting:
                raise InvalidArgument(
                    f"backend {name!r} is already configured; close() it before configuring again"
                )
            Backend._starting.add(name)
        try:
            from csi_driver.storage.cinder_adapter import DriverHost

            self._host: DriverHost = DriverHost(name, volume_driver, driver_options)
        finally:
            with Backend._registry_lock:
                Backend._starting.discard(name)
        self.name = name
        self.volume_driver = volume_driver
        self._options = dict(driver_options)
        self._volumes: list[Volume] | None = None
        self._lock = threading.RLock()
        self._stats: dict[str, Any] | None = None
        with Backend._registry_lock:
            Backend.backends[name] = self

    # -- identity and configuration ---------------------------------------------------
    @property
    def id(self) -> str:
        return self.name

    @property
    def config(self) -> dict[str, Any]:
        """The driver configuration, secrets masked (for display)."""
        return secrets.masked(self._full_config(), self._host.secret_options)

    def _full_config(self) -> dict[str, Any]:
        """Everything needed to configure this backend again, secrets included."""
        return {"volume_backend_name": self.name, "volume_driver": self.volume_driver,
                **self._options}  # fmt: skip

    def __repr__(self) -> str:
        return f"<Backend {self.name!r} driver={self.volume_driver}>"

    def close(self) -> None:
        """Unregister the backend; stored metadata is kept."""
        with Backend._registry_lock:
            if Backend.backends.get(self.name) is not self:
                return  # closed already; a newer backend may own the name now
            del Backend.backends[self.name]
            self._host.close()

    # -- state ----------------------------------------------------------------------------
    def _store(self) -> MetadataStore:
        return runtime.store()

    def _settings(self) -> runtime.Settings:
        return runtime.settings()

    @property
    def volumes(self) -> list[Volume]:
        """This backend's volumes (read from the store on first use; see refresh)."""
        with self._lock:
            if self._volumes is None:
                records = self._store().get_volumes(backend=self.name)
                self._volumes = [Volume(self, record) for record in records]
            return self._volumes

    def refresh(self) -> None:
        """Re-read the volume list from the store if it was loaded."""
        with self._lock:
            if self._volumes is not None:
                self._volumes = None
                self.volumes  # noqa: B018 - reload now, as documented

    def stats(self, refresh: bool = False) -> dict[str, Any]:
        """The driver's capacity stats; cached until ``refresh=True``."""
        if refresh or self._stats is None:
            self._stats = self._host.stats(refresh=True)
        return dict(self._stats)

    def default_pool(self) -> str:
        """The pool new volumes go to when none is given."""
        stats = self.stats()
        pools = stats.get("pools") or []
        if pools and isinstance(pools[0], dict) and pools[0].get("pool_name"):
            return str(pools[0]["pool_name"])
        return str(stats.get("volume_backend_name") or self.name)

    def _remember(self, volume: Volume) -> None:
        with self._lock:
            if self._volumes is not None and all(v.id != volume.id for v in self._volumes):
                self._volumes.append(volume)

    def _forget(self, volume: Volume) -> None:
        with self._lock:
            if self._volumes is not None:
                self._volumes[:] = [v for v in self._volumes if v.id != volume.id]

    def _load_everything(self) -> None:
        """Load volumes and all their relations with three store reads, for ``dump``."""
        from csi_driver.storage.connection import Connection
        from csi_driver.storage.snapshot import Snapshot

        volumes = self.volumes
        store = self._store()
        need_snaps = [v for v in volumes if v._snapshots is None]
        need_conns = [v for v in volumes if v._connections is None]
        if need_snaps:
            by_volume = _group_by_volume(store.get_snapshots(backend=self.name))
            for v in need_snaps:
                v._snapshots = [Snapshot(self, r, volume=v) for r in by_volume.get(v.id, ())]
        if need_conns:
            by_volume = _group_by_volume(store.get_connections(backend=self.name))
            for v in need_conns:
                v._connections = [Connection(self, r, volume=v) for r in by_volume.get(v.id, ())]

    # -- lookups --------------------------------------------------------------------------
    def get_volume(self, volume_id: str) -> Volume:
        """The volume with that id, or ``NotFound``."""
        with self._lock:
            for volume in self._volumes or ():
                if volume.id == volume_id:
                    return volume
        records = self._store().get_volumes(volume_id=volume_id, backend=self.name)
        if not records:
            raise NotFound(f"volume {volume_id} not found on backend {self.name!r}")
        return Volume(self, records[0])

    def find_volumes(self, name: str) -> list[Volume]:
        """Volumes with that name (names need not be unique)."""
        return [Volume(self, r) for r in self._store().get_volumes(backend=self.name, name=name)]

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        from csi_driver.storage.snapshot import Snapshot

        records = self._store().get_snapshots(snapshot_id=snapshot_id, backend=self.name)
        if not records:
            raise NotFound(f"snapshot {snapshot_id} not found on backend {self.name!r}")
        return Snapshot(self, records[0])

    def get_connection(self, connection_id: str) -> Connection:
        from csi_driver.storage.connection import Connection

        records = self._store().get_connections(connection_id=connection_id, backend=self.name)
        if not records:
            raise NotFound(f"connection {connection_id} not found on backend {self.name!r}")
        return Connection(self, records[0])

    # -- operations -----------------------------------------------------------------------
    def create_volume(
        self,
        size: int,
        name: str | None = None,
        description: str | None = None,
        **extra: Any,
    ) -> Volume:
        """Create a volume of ``size`` GiB.

        ``extra`` accepts ``id``, ``pool``, ``volume_type`` (name, extra_specs,
        qos_specs) or ``extra_specs``/``qos_specs``, ``multiattach``,
        ``availability_zone`` and ``metadata``; ``unique_name=True`` refuses the
        create with ``NameInUse`` when another volume holds ``name`` (one atomic
        store step, so concurrent creators of one name get one volume).
        """
        extra = dict(extra)
        unique = validation.pop_unique_name("volume", name, extra)
        record = Volume._new_record(self, size, name, description, extra)
        return Volume._create(self, record, "create_volume", unique_name=unique)

    def is_loaded(self, relation: str) -> bool:
        if relation != "volumes":
            raise InvalidArgument(f"Backend has no lazy relation {relation!r}")
        return self._volumes is not None


class AttachOnlyBackend:
    """Stands for a backend that is not configured in this process, which only
    attaches serialized connections (``setup(attach_only=True)``, a CSI node).

    It has a name and no driver or credentials: ``Connection.attach``/``detach``
    work (they need os-brick alone); anything needing the driver fails by name.
    It is never registered in ``Backend.backends``.
    """

    def __init__(self, name: str, store: MetadataStore | None = None) -> None:
        self.name = name
        self._volumes: list[Volume] | None = None
        self._lock = threading.RLock()
        #: Where its resources keep their records: the process's store, or one of
        #: their own (``Connection.load_for_host``), which no one else reads.
        self._own_store = store

    def __repr__(self) -> str:
        return f"<AttachOnlyBackend {self.name!r}>"

    @property
    def _host(self) -> DriverHost:
        raise NotSupported(
            f"backend {self.name!r} is not configured in this attach-only process; "
            "only attach and detach are possible here"
        )

    def _store(self) -> MetadataStore:
        return self._own_store if self._own_store is not None else runtime.store()

    def _settings(self) -> runtime.Settings:
        return runtime.settings()

    def _full_config(self) -> dict[str, Any]:
        return {"volume_backend_name": self.name}

    def _load_everything(self) -> None:
        """Nothing to load: this process has no driver and no shared store."""

    def _remember(self, volume: Volume) -> None:
        """Attach-only processes keep no volume lists."""

    def _forget(self, volume: Volume) -> None:
        """Attach-only processes keep no volume lists."""

    def is_loaded(self, relation: str) -> bool:
        return False


def _group_by_volume(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(record["volume_id"], []).append(record)
    return grouped
