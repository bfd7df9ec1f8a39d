"""Every metadata store, fresh and empty, for the tests that hold them all to one
contract (``tests/storage/persistence/test_contract*.py``) and for benchmarks.

A store joins by adding a factory to ``STORE_FACTORIES``: a callable taking
pytest's ``request`` and ``tmp_path`` and returning a fresh, empty store. A
store with a server gets it with ``request.getfixturevalue`` (the real server,
started by the test harness); it fails, never skips, when that server cannot
be started.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from csi_driver.storage.persistence import MetadataStore
from csi_driver.storage.persistence.memory import MemoryStore
from csi_driver.storage.persistence.sqlite import SQLiteStore

StoreFactory = Callable[[pytest.FixtureRequest, Path], MetadataStore]

STORE_FACTORIES: list[tuple[str, StoreFactory]] = [
    ("memory", lambda request, tmp_path: MemoryStore()),
    ("sqlite", lambda request, tmp_path: SQLiteStore(path=tmp_path / "metadata.db")),
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
