"""``load_store``: from a persistence config to a store."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from csi_driver.storage.exceptions import InvalidArgument, StoreError
from csi_driver.storage.persistence import STORES, MetadataStore, load_store
from csi_driver.storage.persistence.memory import MemoryStore
from csi_driver.storage.persistence.sqlite import SQLiteStore


def test_load_memory_by_name() -> None:
    store = load_store({"storage": "memory"})
    assert type(store) is MemoryStore
    store.set_value("k", "v")
    assert store.get_value("k") == "v"


def test_load_sqlite_by_name_with_options(tmp_path: Path) -> None:
    config = {
        "storage": "sqlite",
        "path": str(tmp_path / "m.db"),
        "timeout": 5,
        "synchronous": "NORMAL",
    }
    store = load_store(config)
    try:
        assert type(store) is SQLiteStore
        assert store.timeout == 5 and store.synchronous == "NORMAL"
        store.set_volume({"id": "v1", "backend": "lvm"})
        assert (tmp_path / "m.db").exists()
    finally:
        store.close()
    assert config["storage"] == "sqlite" and len(config) == 4  # config left untouched


def test_table_maps_each_name_to_the_store_of_that_name() -> None:
    assert set(STORES) == {"memory", "sqlite", "etcd", "kubernetes"}
    for name, dotted in STORES.items():
        module, _, attr = dotted.rpartition(".")
        assert getattr(importlib.import_module(module), attr).name == name


def test_load_by_dotted_path() -> None:
    store = load_store({"storage": "csi_driver.storage.persistence.memory.MemoryStore"})
    assert type(store) is MemoryStore


def test_load_by_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real distribution on sys.path, declaring a store under a name of its own.
    dist = tmp_path / "extra_store-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-store\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[csi_driver.storage.persistence]\n"
        "volatile = csi_driver.storage.persistence.memory:MemoryStore\n"
        "broken = csi_driver.storage.persistence.memory:NoSuchStore\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(load_store({"storage": "volatile"})) is MemoryStore
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": "nonesuch"})
    assert "volatile" in str(info.value)  # entry point names are listed as known
    with pytest.raises(StoreError, match="broken") as failed:
        load_store({"storage": "broken"})
    assert "NoSuchStore" in str(failed.value)


def test_instance_is_returned_as_is() -> None:
    store = MemoryStore()
    assert load_store(store) is store


def test_unknown_name_lists_known_stores() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": "postgres"})
    message = str(info.value)
    assert "'postgres'" in message
    assert "memory" in message and "sqlite" in message


@pytest.mark.parametrize("config", [{}, {"storage": ""}, {"storage": None}, {"path": "x"}])
def test_missing_storage_name_is_refused(config: dict) -> None:
    with pytest.raises(InvalidArgument, match="'storage'") as info:
        load_store(config)
    assert "memory" in str(info.value)


@pytest.mark.parametrize("config", ["memory", ["memory"], None])
def test_config_of_wrong_type_is_refused(config: object) -> None:
    with pytest.raises(InvalidArgument, match="mapping"):
        load_store(config)  # type: ignore[arg-type]


def test_unknown_option_names_option_and_store() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": "memory", "path": "/tmp/x.db"})
    assert "'path'" in str(info.value) and "'memory'" in str(info.value)


def test_unknown_option_lists_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": "sqlite", "path": str(tmp_path / "x.db"), "journal": "wal"})
    message = str(info.value)
    assert "'journal'" in message and "'sqlite'" in message
    assert "path" in message and "timeout" in message and "synchronous" in message
    assert not (tmp_path / "x.db").exists()


def test_missing_required_option_is_named() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": "sqlite"})
    assert "'path'" in str(info.value) and "'sqlite'" in str(info.value)


def test_bad_option_value_is_refused_by_the_store(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="synchronous"):
        load_store({"storage": "sqlite", "path": str(tmp_path / "x.db"), "synchronous": "OFF"})


@pytest.mark.parametrize(
    "name,hint",
    [
        ("no_such_package.module.Store", "no_such_package.module"),
        ("csi_driver.storage.persistence.memory.NoStore", "NoStore"),
        ("collections.OrderedDict", "not a MetadataStore"),
        ("csi_driver.storage.persistence.base.MetadataStore", "abstract"),
        (".memory", "dotted path"),
    ],
)
def test_bad_dotted_path_is_refused(name: str, hint: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        load_store({"storage": name})
    assert name in str(info.value) and hint in str(info.value)


def test_metadata_store_is_exported() -> None:
    assert issubclass(MemoryStore, MetadataStore) and issubclass(SQLiteStore, MetadataStore)
