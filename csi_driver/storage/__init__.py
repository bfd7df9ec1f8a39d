"""Cinder volume drivers as a library: backends, volumes, snapshots, connections.

Typical use::

    from csi_driver import storage
    storage.setup(persistence_config={'storage': 'sqlite', 'path': '/var/lib/x/meta.db'})
    lvm = storage.Backend(volume_backend_name='lvm',
                          volume_driver='cinder.volume.drivers.lvm.LVMVolumeDriver',
                          volume_group='cinder-volumes', target_helper='lioadm')
    vol = lvm.create_volume(size=1)
    data = storage.dumps()          # every backend; vol.dumps for one volume
    storage.load(data, save=True)   # the counterpart of every dump

Importing this package does not import Cinder: a node that only attaches
serialized connections needs os-brick alone. Cinder is imported when the first
``Backend`` is configured.
"""

from __future__ import annotations

from typing import Any

from csi_driver.storage import serialization
from csi_driver.storage.backend import Backend
from csi_driver.storage.catalog import (
    find_connections,
    find_snapshots,
    find_volumes,
    get_snapshot,
    get_volume,
)
from csi_driver.storage.connection import Connection
from csi_driver.storage.exceptions import (
    AttachError,
    BackendSetupError,
    DriverError,
    InvalidArgument,
    InvalidState,
    NameInUse,
    NotFound,
    NotSupported,
    SerializationError,
    StorageError,
    StoreError,
    StoreUnavailable,
)
from csi_driver.storage.runtime import setup
from csi_driver.storage.snapshot import Snapshot
from csi_driver.storage.volume import Volume

__all__ = [
    "AttachError", "Backend", "BackendSetupError", "Connection", "DriverError",
    "InvalidArgument", "InvalidState", "NameInUse", "NotFound", "NotSupported",
    "SerializationError", "Snapshot", "StorageError", "StoreError", "StoreUnavailable", "Volume",
    "dump", "dumps", "find_connections", "find_snapshots", "find_volumes", "get_snapshot",
    "get_volume", "json", "jsons", "load", "setup",
]  # fmt: skip


def json() -> dict[str, Any]:
    """Every configured backend and its loaded resources, as a document dict."""
    return serialization.library_document(load_lazy=False, copy=True)


def jsons() -> str:
    """``json()`` as a string."""
    return serialization.to_string(serialization.library_document(load_lazy=False))


def dump() -> dict[str, Any]:
    """Like ``json()`` after loading every lazy relation not loaded yet."""
    return serialization.library_document(load_lazy=True, copy=True)


def dumps() -> str:
    """``dump()`` as a string."""
    return serialization.to_string(serialization.library_document(load_lazy=True))


def load(data: str | bytes | dict[str, Any], save: bool = False) -> Any:
    """Load anything that was serialized: all backends (a list), one backend, or
    one volume, snapshot or connection. ``save=True`` writes it to the store."""
    return serialization.load(data, save=save)
