"""Fixtures of the serialization tests: a configured library, FileDriver backends, a store.

Every test that takes ``env`` runs once with the memory store and once with the SQLite
store. Every backend a test configures (itself or through ``load``) is closed at teardown,
so that ``Backend.backends`` is empty again for the next test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OS_CINDER_DISABLE_EVENTLET_PATCHING", "1")

from csi_driver import storage
from csi_driver.storage import runtime

DRIVER = "csi_driver.storage.drivers.file.FileDriver"
BACKEND = "ser-file"
CONNECTOR = {"host": "node-1", "initiator": "iqn.2004-10.org.example:node-1"}


def close_all_backends() -> None:
    for backend in list(storage.Backend.backends.values()):
        backend.close()


class Env:
    """The library configured for one test, with helpers to build and inspect state."""

    DRIVER = DRIVER
    BACKEND = BACKEND
    CONNECTOR = CONNECTOR

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.locks = tmp_path / "locks"
        self._stores = 0
        self.setup(persistence_config=self.new_store_config())

    # -- configuration --------------------------------------------------------------
    def new_store_config(self) -> dict[str, Any]:
        """The config of a new, empty store of this test's kind."""
        self._stores += 1
        if self.kind == "memory":
            return {"storage": "memory"}
        return {"storage": "sqlite", "path": str(self.tmp_path / f"meta-{self._stores}.db")}

    def setup(self, output_all_backend_info: bool = False, persistence_config: Any = None) -> None:
        """``storage.setup``; keeps the current store unless a config is given."""
        storage.setup(
            persistence_config=persistence_config or runtime.store(),
            file_locks_path=str(self.locks),
            output_all_backend_info=output_all_backend_info,
        )

    def fresh_store(self, output_all_backend_info: bool = False) -> None:
        """Switch the library to a new, empty store (configured backends stay)."""
        self.setup(output_all_backend_info, persistence_config=self.new_store_config())
        for backend in storage.Backend.backends.values():
            backend._volumes = None  # their cached lists came from the old store

    def volumes_dir(self, name: str = BACKEND) -> str:
        return str(self.tmp_path / "vols" / name)

    def backend(self, name: str = BACKEND, **options: Any) -> storage.Backend:
        return storage.Backend(
            volume_backend_name=name,
            volume_driver=DRIVER,
            file_volumes_dir=self.volumes_dir(name),
            **options,
        )

    # -- inspection -----------------------------------------------------------------
    @property
    def store(self) -> Any:
        return runtime.store()

    def contents(self) -> tuple[list[dict], list[dict], list[dict]]:
        """Every record of the store, in full."""
        s = self.store
        return s.get_volumes(), s.get_snapshots(), s.get_connections()

    def ids(self) -> tuple[list[str], list[str], list[str]]:
        return tuple([r["id"] for r in table] for table in self.contents())  # type: ignore[return-value]


@pytest.fixture(params=["memory", "sqlite"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    close_all_backends()
    environment = Env(request.param, tmp_path)
    try:
        yield environment
    finally:
        close_all_backends()
        # Closes this test's store (the SQLite file) and leaves a neutral default.
        storage.setup(file_locks_path=str(tmp_path / "locks"))


@pytest.fixture
def backend(env: Env) -> storage.Backend:
    return env.backend()


@pytest.fixture
def populated(backend: storage.Backend) -> dict[str, Any]:
    """A volume with one snapshot and one connection, made through the library."""
    vol = backend.create_volume(size=1, name="data")
    snap = vol.create_snapshot(name="snap-1")
    conn = vol.connect(CONNECTOR)
    return {"backend": backend, "vol": vol, "snap": snap, "conn": conn}
