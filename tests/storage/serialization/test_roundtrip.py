"""Dump and load round trips: the reference text's examples, the API's shape, cycles, save=.

Each test runs with the memory and the SQLite store (the ``env`` fixture is parametrized).
"""

from __future__ import annotations

import inspect
import json

import pytest

from csi_driver import storage

RESOURCE_CLASSES = (storage.Backend, storage.Volume, storage.Snapshot, storage.Connection)
TABLES = ("volumes", "snapshots", "connections")


def table_ids(doc, table):
    return [record["id"] for record in doc[table]]


# ---------------------------------------------------------------------------------
# The reference text's examples
# ---------------------------------------------------------------------------------
def test_library_dumps_written_to_file_loads_back_as_list_of_backends(env, populated, tmp_path):
    second = env.backend("ser-file-2")
    other = second.create_volume(size=2)
    path = tmp_path / "storage.txt"
    with open(path, "w") as f:
        f.write(storage.dumps())

    env.fresh_store()
    with open(path) as f:
        data = f.read()
    backends = storage.load(data, save=True)

    assert isinstance(backends, list)
    assert [b.name for b in backends] == [env.BACKEND, "ser-file-2"]
    assert backends[0] is storage.Backend.backends[env.BACKEND]
    assert backends[1] is second
    assert [v.id for v in backends[0].volumes] == [populated["vol"].id]
    assert [v.id for v in backends[1].volumes] == [other.id]
    volumes, snapshots, connections = env.ids()
    assert sorted(volumes) == sorted([populated["vol"].id, other.id])
    assert snapshots == [populated["snap"].id]
    assert connections == [populated["conn"].id]


def test_backend_dumps_loads_back_as_that_backend_with_save(env, populated, tmp_path):
    backend = populated["backend"]
    path = tmp_path / "backend.txt"
    path.write_text(backend.dumps)

    env.fresh_store()
    loaded = storage.load(path.read_text(), save=True)

    assert loaded is backend
    assert [v.id for v in loaded.volumes] == [populated["vol"].id]
    assert [s.id for s in loaded.volumes[0].snapshots] == [populated["snap"].id]
    assert env.ids() == ([populated["vol"].id], [populated["snap"].id], [populated["conn"].id])


def test_volume_dumps_loads_back_as_a_volume(env, backend, tmp_path):
    vol = backend.create_volume(size=1, name="v1", metadata={"k": "v"})
    path = tmp_path / "vol.txt"
    path.write_text(vol.dumps)

    loaded = storage.load(path.read_text())

    assert isinstance(loaded, storage.Volume)
    assert loaded is not vol
    assert (loaded.id, loaded.size, loaded.name, loaded.metadata) == (vol.id, 1, "v1", {"k": "v"})
    assert loaded.backend is backend
    assert loaded.record == vol.record


@pytest.mark.parametrize("key", ["vol", "snap", "conn"])
def test_resource_dumps_loads_while_backend_list_holds_other_volumes(env, populated, key):
    backend = populated["backend"]
    other = backend.create_volume(size=1)
    ids = {v.id for v in backend.volumes}  # the backend's list is loaded now
    assert ids == {populated["vol"].id, other.id}

    obj = populated[key]
    loaded = storage.load(obj.dumps)

    assert type(loaded) is type(obj)
    assert loaded.id == obj.id


@pytest.mark.parametrize("key", ["vol", "snap", "conn"])
def test_loading_one_resource_keeps_the_backends_other_volumes(env, populated, key):
    backend = populated["backend"]
    other = backend.create_volume(size=1)
    assert {v.id for v in backend.volumes} == {populated["vol"].id, other.id}

    storage.load(populated[key].dumps)

    assert {v.id for v in backend.volumes} == {populated["vol"].id, other.id}


def test_refresh_every_backend_then_library_dumps_shows_new_records(env, backend):
    vol = backend.create_volume(size=1)
    assert [v.id for v in backend.volumes] == [vol.id]
    backend.get_volume(vol.id).snapshots  # noqa: B018 - loaded: an empty list
    behind = vol.create_snapshot()  # through another object of the same volume

    stale = json.loads(storage.dumps())
    assert stale["snapshots"] == []

    for b in storage.Backend.backends.values():
        b.refresh()
    fresh = json.loads(storage.dumps())
    assert table_ids(fresh, "snapshots") == [behind.id]
    [loaded] = storage.load(fresh)
    assert [s.id for s in loaded.volumes[0].snapshots] == [behind.id]


def test_class_load_methods_return_their_class(env, populated):
    backend, vol, snap, conn = (populated[k] for k in ("backend", "vol", "snap", "conn"))
    assert storage.Backend.load(backend.dumps) is backend
    loaded_vol = storage.Volume.load(vol.dumps)
    loaded_snap = storage.Snapshot.load(snap.dumps)
    loaded_conn = storage.Connection.load(conn.dumps)
    assert type(loaded_vol) is storage.Volume and loaded_vol.id == vol.id
    assert type(loaded_snap) is storage.Snapshot and loaded_snap.id == snap.id
    assert type(loaded_conn) is storage.Connection and loaded_conn.id == conn.id
    assert loaded_conn.connection_info == conn.connection_info


@pytest.mark.parametrize("form", ["str", "bytes", "dict"])
def test_load_accepts_text_bytes_and_dict(env, populated, form):
    vol = populated["vol"]
    data = {"str": vol.dumps, "bytes": vol.dumps.encode(), "dict": vol.dump}[form]
    loaded = storage.Volume.load(data)
    assert loaded.id == vol.id
    assert [s.id for s in loaded.snapshots] == [populated["snap"].id]


def test_loading_a_dict_does_not_share_it_with_the_objects(env, populated):
    doc = populated["vol"].dump
    loaded = storage.Volume.load(doc)
    doc["volumes"][0]["name"] = "changed"
    doc["snapshots"][0]["name"] = "changed"
    assert loaded.name == "data"
    assert loaded.snapshots[0].name == "snap-1"


# ---------------------------------------------------------------------------------
# The API's shape: properties on objects, functions on the library
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", RESOURCE_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["json", "jsons", "dump", "dumps"])
def test_serializers_are_properties_on_objects(cls, name):
    assert isinstance(inspect.getattr_static(cls, name), property)


@pytest.mark.parametrize("cls", RESOURCE_CLASSES, ids=lambda c: c.__name__)
def test_load_is_a_classmethod_on_objects(cls):
    assert isinstance(inspect.getattr_static(cls, "load"), classmethod)


@pytest.mark.parametrize("name", ["json", "jsons", "dump", "dumps", "load"])
def test_serializers_are_functions_on_the_library(name):
    assert inspect.isfunction(getattr(storage, name))


@pytest.mark.parametrize("cls", [storage.Volume, storage.Snapshot, storage.Connection])
def test_to_dict_is_a_method_on_resources(cls):
    assert inspect.isfunction(inspect.getattr_static(cls, "to_dict"))


def test_backend_has_no_to_dict(env, backend):
    assert not hasattr(storage.Backend, "to_dict")
    assert not hasattr(backend, "to_dict")


def test_to_dict_returns_a_plain_dict(env, populated):
    for key in ("vol", "snap", "conn"):
        out = populated[key].to_dict()
        assert isinstance(out, dict)
        assert out["id"] == populated[key].id
        assert out["backend"] == populated["backend"].name


@pytest.mark.parametrize("key", ["backend", "vol", "snap", "conn"])
def test_object_jsons_is_json_as_text_and_dumps_is_dump_as_text(env, populated, key):
    obj = populated[key]
    assert isinstance(obj.json, dict) and isinstance(obj.jsons, str)
    assert isinstance(obj.dump, dict) and isinstance(obj.dumps, str)
    assert json.loads(obj.jsons) == obj.json
    assert json.loads(obj.dumps) == obj.dump


def test_library_jsons_is_json_as_text_and_dumps_is_dump_as_text(env, populated):
    assert isinstance(storage.json(), dict) and isinstance(storage.jsons(), str)
    assert json.loads(storage.jsons()) == storage.json()
    assert json.loads(storage.dumps()) == storage.dump()
    assert table_ids(storage.dump(), "volumes") == [populated["vol"].id]


def test_library_dump_covers_every_configured_backend(env, populated):
    env.backend("ser-file-2").create_volume(size=1)
    doc = storage.dump()
    assert doc["class"] == "BackendList"
    assert [b["volume_backend_name"] for b in doc["backends"]] == [env.BACKEND, "ser-file-2"]
    assert len(doc["volumes"]) == 2


def test_json_result_is_a_copy(env, populated):
    vol = populated["vol"]
    doc = vol.dump
    doc["volumes"][0]["name"] = "changed"
    doc["snapshots"].clear()
    assert vol.name == "data"
    assert json.loads(vol.dumps)["volumes"][0]["name"] == "data"
    assert len(json.loads(vol.dumps)["snapshots"]) == 1


# ---------------------------------------------------------------------------------
# Format versioning
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["backend", "vol", "snap", "conn"])
@pytest.mark.parametrize("prop", ["json", "jsons", "dump", "dumps"])
def test_object_documents_carry_format_and_version(env, populated, key, prop):
    value = getattr(populated[key], prop)
    doc = json.loads(value) if isinstance(value, str) else value
    assert doc["format"] == "csi-driver.storage"
    assert doc["version"] == 1
    assert doc["class"] == type(populated[key]).__name__


@pytest.mark.parametrize("func", ["json", "jsons", "dump", "dumps"])
def test_library_documents_carry_format_and_version(env, populated, func):
    value = getattr(storage, func)()
    doc = json.loads(value) if isinstance(value, str) else value
    assert doc["format"] == "csi-driver.storage"
    assert doc["version"] == 1


def test_library_document_with_no_backend_carries_format_and_version(env):
    doc = json.loads(storage.dumps())
    assert (doc["format"], doc["version"]) == ("csi-driver.storage", 1)
    assert storage.load(doc) == []


# ---------------------------------------------------------------------------------
# Circular references
# ---------------------------------------------------------------------------------
def test_volume_with_snapshot_and_connection_roundtrips_to_one_graph(env, populated):
    loaded = storage.load(populated["vol"].dumps)
    assert loaded.snapshots[0].volume is loaded
    assert loaded.connections[0].volume is loaded
    assert loaded.snapshots[0].id == populated["snap"].id
    assert loaded.connections[0].id == populated["conn"].id


def test_snapshot_document_loads_to_a_snapshot_its_volume_points_back_to(env, populated):
    snap = storage.load(populated["snap"].dumps)
    assert isinstance(snap, storage.Snapshot)
    assert snap.volume.id == populated["vol"].id
    assert any(s is snap for s in snap.volume.snapshots)
    assert snap.volume.connections[0].volume is snap.volume


def test_connection_document_loads_to_a_connection_its_volume_points_back_to(env, populated):
    conn = storage.load(populated["conn"].dumps)
    assert isinstance(conn, storage.Connection)
    assert any(c is conn for c in conn.volume.connections)
    assert conn.volume.snapshots[0].volume is conn.volume


def test_snapshot_fetched_from_store_dumps_and_loads_without_duplicates(env, populated):
    fetched = populated["backend"].get_snapshot(populated["snap"].id)
    doc = fetched.dump
    loaded = storage.load(doc)
    assert any(s is loaded for s in loaded.volume.snapshots)
    for table in TABLES:
        ids = table_ids(doc, table)
        assert len(ids) == len(set(ids)) == 1


@pytest.mark.parametrize("key", ["vol", "snap", "conn"])
def test_each_id_appears_once_per_table(env, populated, key):
    vol = populated["vol"]
    vol.create_snapshot(name="snap-2")
    vol.connect(env.CONNECTOR)  # same host again: allowed, a second connection
    doc = populated[key].dump
    assert len(doc["volumes"]) == 1
    assert len(doc["snapshots"]) == 2
    assert len(doc["connections"]) == 2
    for table in TABLES:
        ids = table_ids(doc, table)
        assert len(ids) == len(set(ids))
    assert [b["volume_backend_name"] for b in doc["backends"]] == [env.BACKEND]


def test_library_dump_of_clone_chain_lists_each_id_once(env, populated):
    clone = populated["snap"].create_volume(name="from-snap")
    clone2 = clone.clone(name="clone-of-clone")
    doc = json.loads(storage.dumps())
    for table in TABLES:
        ids = table_ids(doc, table)
        assert len(ids) == len(set(ids))
    assert set(table_ids(doc, "volumes")) == {populated["vol"].id, clone.id, clone2.id}
    loaded = storage.load(doc)
    assert {v.id for v in loaded[0].volumes} == {populated["vol"].id, clone.id, clone2.id}


# ---------------------------------------------------------------------------------
# save=True writes to the store, save=False does not
# ---------------------------------------------------------------------------------
def test_load_without_save_does_not_write_to_the_store(env, populated):
    data = populated["vol"].dumps
    env.fresh_store()
    loaded = storage.load(data)
    assert loaded.id == populated["vol"].id
    with pytest.raises(storage.NotFound):
        populated["backend"].get_volume(populated["vol"].id)
    assert env.contents() == ([], [], [])


def test_load_with_save_writes_volume_snapshots_and_connections(env, populated):
    vol, snap, conn = populated["vol"], populated["snap"], populated["conn"]
    data = vol.dumps
    env.fresh_store()
    storage.load(data, save=True)
    found = populated["backend"].get_volume(vol.id)
    assert found.record == vol.record
    assert [s.record for s in found.snapshots] == [snap.record]
    assert [c.record for c in found.connections] == [conn.record]
    assert populated["backend"].get_snapshot(snap.id).volume_id == vol.id
    assert populated["backend"].get_connection(conn.id).connection_info == conn.connection_info


def test_backend_document_without_save_does_not_write_to_the_store(env, populated):
    data = populated["backend"].dumps
    env.fresh_store()
    storage.load(data)
    assert env.contents() == ([], [], [])


def test_saved_records_equal_the_originals_after_a_round_trip(env, populated):
    before = env.contents()
    data = storage.dumps()
    env.fresh_store()
    storage.load(data, save=True)
    assert env.contents() == before


def test_reloading_a_document_over_its_own_records_changes_nothing(env, populated):
    before = env.contents()
    storage.load(populated["backend"].dumps, save=True)
    assert env.contents() == before
