"""``csi-driver store copy``: every record and value moves, re-runs are harmless, and a
target holding other data is refused unless --overwrite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from csi_support.stores import contents, fill, realistic_records

from csi_driver.storage.persistence import MetadataStore
from csi_driver.storage.persistence.memory import MemoryStore
from csi_driver.storage.persistence.sqlite import SQLiteStore
from csi_driver.store_copy import CopyRefused, copy_store, store_config


def sqlite(tmp_path: Path, name: str) -> SQLiteStore:
    return SQLiteStore(path=tmp_path / f"{name}.sqlite")


def populated(store: MetadataStore, count: int = 60) -> MetadataStore:
    fill(store, realistic_records(count))
    store.set_value("initiator/node-a", '{"a": 1}')
    store.set_value("ключ", "значение")
    return store


def test_copy_moves_everything(tmp_path: Path) -> None:
    source = populated(sqlite(tmp_path, "a"))
    target = MemoryStore()
    report = copy_store(source, target)
    assert contents(target) == contents(source)
    assert report.copied == {"volume": 60, "snapshot": 15, "connection": 20}
    assert report.values == 2


def test_rerun_and_resumed_copy_are_harmless(tmp_path: Path) -> None:
    source = populated(sqlite(tmp_path, "a"))
    target = sqlite(tmp_path, "b")
    # a copy interrupted half-way: some volumes are there already
    volumes, _, _ = realistic_records(60)
    target.write(volumes=volumes[:25])
    copy_store(source, target)
    copy_store(source, target)
    assert contents(target) == contents(source)


def test_target_with_other_data_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    source = populated(MemoryStore())
    target = MemoryStore()
    target.set_volume({"id": "someone-else", "backend": "x", "name": "keep"})
    before = contents(target)
    with pytest.raises(CopyRefused, match="not empty"):
        copy_store(source, target)
    assert contents(target) == before

    differing = MemoryStore()
    volumes, _, _ = realistic_records(60)
    differing.set_volume({**volumes[3], "size": 999})
    with pytest.raises(CopyRefused):
        copy_store(source, differing)
    assert differing.get_volumes()[0]["size"] == 999

    other_value = MemoryStore()
    other_value.set_value("ключ", "другое")
    with pytest.raises(CopyRefused):
        copy_store(source, other_value)


def test_overwrite_copies_over_and_deletes_nothing(tmp_path: Path) -> None:
    source = populated(MemoryStore())
    target = MemoryStore()
    volumes, _, _ = realistic_records(60)
    target.write(volumes=[{**volumes[3], "size": 999}, {"id": "extra", "backend": "x"}])
    report = copy_store(source, target, overwrite=True)
    assert report.replaced == 1 and report.only_in_target == 1
    got = {r["id"]: r for r in target.get_volumes()}
    assert got[volumes[3]["id"]] == volumes[3]
    assert "extra" in got
    assert len(got) == 61


def test_store_config_reads_plugin_and_bare_configs(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.yaml"
    plugin.write_text(yaml.safe_dump({"storage": {"persistence_config": {"storage": "memory"}},
                                      "backends": []}))  # fmt: skip
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"storage": "sqlite", "path": "/x.db"}))
    assert store_config(str(plugin)) == {"storage": "memory"}
    assert store_config(str(bare)) == {"storage": "sqlite", "path": "/x.db"}
    empty = tmp_path / "empty.yaml"
    empty.write_text("backends: []\n")
    with pytest.raises(Exception, match="no store configured"):
        store_config(str(empty))


def test_command_line(tmp_path: Path) -> None:
    source_path, target_path = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    source = populated(SQLiteStore(path=source_path), count=30)
    expected = contents(source)
    source.close()
    configs = {}
    for name, path in (("from", source_path), ("to", target_path)):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(yaml.safe_dump({"storage": "sqlite", "path": str(path)}))
    command = [sys.executable, "-m", "csi_driver.cli", "store", "copy",
               "--from", str(configs["from"]), "--to", str(configs["to"])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "copied 30 volumes, 8 snapshots, 10 connections and 2 key/value pairs" in done.stdout
    target = SQLiteStore(path=target_path)
    assert contents(target) == expected
    target.set_volume({"id": "intruder", "backend": "x"})
    target.close()
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1
    assert "refused" in refused.stderr and "--overwrite" in refused.stderr
    # secrets in records never reach the output
    assert "secret-" not in done.stdout + done.stderr + refused.stderr


def test_round_trip_of_ten_thousand_volumes_through_every_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """SQLite -> etcd -> kubernetes -> SQLite on the real servers gives identical records
    (10 000 volumes, 2 500 snapshots, 3 334 connections, and key/value pairs)."""
    from csi_support.kube_store import kube_store
    from csi_support.stores import etcd_store

    first = populated(sqlite(tmp_path, "first"), count=10_000)
    expected = contents(first)
    etcd = etcd_store(request, tmp_path)
    kubernetes = kube_store(request)
    last = sqlite(tmp_path, "last")
    hops = [(first, etcd), (etcd, kubernetes), (kubernetes, last)]
    for source, target in hops:
        report = copy_store(source, target)
        assert report.copied == {"volume": 10_000, "snapshot": 2_500, "connection": 3_334}
    for store in (etcd, kubernetes, last):
        assert contents(store) == expected
    for store in (first, etcd, kubernetes, last):
        store.close()
