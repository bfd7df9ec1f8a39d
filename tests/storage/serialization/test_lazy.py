"""Lazy relations: ``json`` leaves out what is not loaded, ``dump`` loads it without
refreshing what is, and ``load`` restores exactly the loaded state it was given.

Whether a relation is loaded in a document is checked through the document's tables
and by loading the document where the store cannot fill in anything (a fresh store).
"""

from __future__ import annotations

import copy
import json

import pytest

from csi_driver import storage


def ids_in(doc, table):
    return [record["id"] for record in doc[table]]


def stored_volume(backend, volume_id):
    """The volume as a fresh object read from the store, with nothing loaded."""
    backend.volumes  # noqa: B018 - load the backend's list ...
    backend.refresh()  # ... and re-read it, as the reference text recommends
    volume = backend.get_volume(volume_id)
    assert not volume.is_loaded("snapshots")
    assert not volume.is_loaded("connections")
    return volume


def as_doc(value):
    return json.loads(value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------
# json leaves unloaded relations out and does not load them
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prop", ["json", "jsons"])
def test_json_of_stored_volume_omits_unloaded_relations(env, populated, prop):
    vol = stored_volume(populated["backend"], populated["vol"].id)
    doc = as_doc(getattr(vol, prop))
    entry = doc["volumes"][0]
    assert entry["id"] == vol.id
    assert "snapshots" not in entry
    assert "connections" not in entry
    assert doc["snapshots"] == []
    assert doc["connections"] == []


@pytest.mark.parametrize("prop", ["json", "jsons"])
def test_json_does_not_load_relations(env, populated, prop):
    vol = stored_volume(populated["backend"], populated["vol"].id)
    getattr(vol, prop)
    assert not vol.is_loaded("snapshots")
    assert not vol.is_loaded("connections")


@pytest.mark.parametrize("prop", ["json", "jsons"])
def test_json_of_stored_volume_loads_back_without_relations(env, populated, prop):
    doc = as_doc(getattr(stored_volume(populated["backend"], populated["vol"].id), prop))
    env.fresh_store()
    loaded = storage.load(doc)
    assert not loaded.is_loaded("snapshots")
    assert not loaded.is_loaded("connections")


@pytest.mark.parametrize("prop", ["dump", "dumps"])
def test_dump_loads_relations(env, populated, prop):
    vol = stored_volume(populated["backend"], populated["vol"].id)
    doc = as_doc(getattr(vol, prop))
    assert vol.is_loaded("snapshots")
    assert vol.is_loaded("connections")
    assert doc["snapshots"] == [populated["snap"].record]
    assert doc["connections"] == [populated["conn"].record]


@pytest.mark.parametrize("prop", ["dump", "dumps"])
def test_dump_document_carries_the_loaded_relations(env, populated, prop):
    doc = as_doc(getattr(stored_volume(populated["backend"], populated["vol"].id), prop))
    env.fresh_store()  # the store cannot fill in anything
    loaded = storage.load(doc)
    assert loaded.is_loaded("snapshots") and loaded.is_loaded("connections")
    assert [s.id for s in loaded.snapshots] == [populated["snap"].id]
    assert [c.id for c in loaded.connections] == [populated["conn"].id]


def test_json_shows_a_relation_once_it_is_loaded(env, populated):
    vol = stored_volume(populated["backend"], populated["vol"].id)
    vol.snapshots  # noqa: B018
    doc = vol.json
    assert ids_in(doc, "snapshots") == [populated["snap"].id]
    assert "connections" not in doc["volumes"][0]
    assert doc["connections"] == []
    assert not vol.is_loaded("connections")

    env.fresh_store()
    loaded = storage.load(doc)
    assert loaded.is_loaded("snapshots")
    assert [s.id for s in loaded.snapshots] == [populated["snap"].id]
    assert not loaded.is_loaded("connections")


def test_dump_does_not_refresh_a_loaded_relation(env, backend):
    created = backend.create_volume(size=1)
    first = created.create_snapshot(name="first")
    vol = stored_volume(backend, created.id)
    assert [s.id for s in vol.snapshots] == [first.id]

    second = created.create_snapshot(name="second")  # another object of the same volume

    doc = vol.dump
    assert ids_in(doc, "snapshots") == [first.id]
    assert ids_in(json.loads(vol.dumps), "snapshots") == [first.id]
    assert [s.id for s in vol.snapshots] == [first.id]
    assert [s.id for s in storage.load(doc).snapshots] == [first.id]

    backend.refresh()
    refetched = backend.get_volume(created.id)
    assert refetched is not vol
    assert ids_in(refetched.dump, "snapshots") == [first.id, second.id]


def test_dump_does_not_refresh_after_a_saved_load_adds_a_snapshot(env, backend):
    created = backend.create_volume(size=1)
    first = created.create_snapshot(name="first")
    vol = stored_volume(backend, created.id)
    assert [s.id for s in vol.snapshots] == [first.id]

    doc = copy.deepcopy(created.dump)
    doc["snapshots"].append(dict(doc["snapshots"][0], id="extra-snapshot", name="extra"))
    for entry in doc["volumes"]:
        if "snapshots" in entry:  # a per-volume id list, if the format has one
            entry["snapshots"].append("extra-snapshot")
    storage.load(doc, save=True)
    stored = env.store.get_snapshots(volume_id=created.id)
    assert [s["id"] for s in stored] == [first.id, "extra-snapshot"]

    assert ids_in(vol.dump, "snapshots") == [first.id]

    backend.refresh()
    refetched = backend.get_volume(created.id)
    assert ids_in(refetched.dump, "snapshots") == [first.id, "extra-snapshot"]


def test_volume_loaded_from_json_without_relations_is_lazy(env, populated):
    text = stored_volume(populated["backend"], populated["vol"].id).jsons
    vol = storage.Volume.load(text)
    assert not vol.is_loaded("snapshots")
    assert not vol.is_loaded("connections")
    assert "snapshots" not in vol.json["volumes"][0]
    assert not vol.is_loaded("snapshots")
    doc = vol.dump  # loads them from the store now
    assert vol.is_loaded("snapshots") and vol.is_loaded("connections")
    assert ids_in(doc, "snapshots") == [populated["snap"].id]
    assert ids_in(doc, "connections") == [populated["conn"].id]


@pytest.mark.parametrize("key", ["snap", "conn"])
def test_json_of_stored_child_leaves_its_volume_out(env, populated, key):
    backend = populated["backend"]
    getter = backend.get_snapshot if key == "snap" else backend.get_connection
    child = getter(populated[key].id)
    doc = child.json
    assert doc["volumes"] == []
    assert not child.is_loaded("volume")


@pytest.mark.parametrize("key", ["snap", "conn"])
def test_dump_of_stored_child_loads_its_volume(env, populated, key):
    backend = populated["backend"]
    getter = backend.get_snapshot if key == "snap" else backend.get_connection
    child = getter(populated[key].id)
    doc = child.dump
    assert child.is_loaded("volume")
    assert ids_in(doc, "volumes") == [populated["vol"].id]


def test_backend_json_omits_unloaded_volumes(env, populated):
    backend = populated["backend"]
    assert not backend.is_loaded("volumes")
    doc = backend.json
    assert doc["backends"] == [{"volume_backend_name": backend.name}]
    assert doc["volumes"] == []
    assert not backend.is_loaded("volumes")


def test_backend_dump_loads_volumes_and_their_relations(env, populated):
    backend = populated["backend"]
    doc = backend.dump
    assert backend.is_loaded("volumes")
    assert ids_in(doc, "volumes") == [populated["vol"].id]
    assert ids_in(doc, "snapshots") == [populated["snap"].id]
    assert ids_in(doc, "connections") == [populated["conn"].id]


def test_library_json_does_not_load_and_library_dump_does(env, populated):
    backend = populated["backend"]
    doc = storage.json()
    assert doc["volumes"] == []
    assert not backend.is_loaded("volumes")
    doc = storage.dump()
    assert backend.is_loaded("volumes")
    assert ids_in(doc, "volumes") == [populated["vol"].id]
    assert ids_in(doc, "snapshots") == [populated["snap"].id]


# ---------------------------------------------------------------------------------
# load restores the lazy state of the document
# ---------------------------------------------------------------------------------
def test_volume_loaded_from_document_without_snapshots_is_not_loaded(env, populated):
    vol = stored_volume(populated["backend"], populated["vol"].id)
    vol.connections  # noqa: B018 - only connections are loaded
    doc = vol.json
    assert doc["snapshots"] == []
    env.fresh_store()
    loaded = storage.load(doc)
    assert not loaded.is_loaded("snapshots")
    assert loaded.is_loaded("connections")
    assert [c.id for c in loaded.connections] == [populated["conn"].id]


def test_volume_loaded_from_document_with_snapshots_has_them(env, populated):
    data = populated["vol"].dumps
    env.fresh_store()  # nothing to load from: the objects must come from the document
    vol = storage.load(data)
    assert vol.is_loaded("snapshots") and vol.is_loaded("connections")
    assert [s.id for s in vol.snapshots] == [populated["snap"].id]
    assert [c.id for c in vol.connections] == [populated["conn"].id]
    assert vol.snapshots[0].record == populated["snap"].record
    assert vol.connections[0].connection_info == populated["conn"].connection_info


def test_empty_loaded_relation_loads_as_loaded_and_empty(env, backend):
    vol = backend.create_volume(size=1)
    assert vol.is_loaded("snapshots")  # a new volume knows it has none
    doc = vol.dump
    assert doc["snapshots"] == []
    loaded = storage.load(doc)
    assert loaded.is_loaded("snapshots")
    assert loaded.snapshots == []


def test_lazy_volume_document_round_trips_unchanged(env, populated):
    doc = stored_volume(populated["backend"], populated["vol"].id).json
    loaded = storage.load(doc)
    assert loaded.json == doc


def test_loaded_volume_document_round_trips_unchanged(env, populated):
    doc = populated["vol"].dump
    loaded = storage.load(doc)
    assert loaded.json == doc
    assert loaded.dump == doc


def test_child_loaded_without_its_volume_loads_it_from_the_store(env, populated):
    doc = populated["backend"].get_snapshot(populated["snap"].id).json
    snap = storage.load(doc)
    assert not snap.is_loaded("volume")
    assert snap.volume.id == populated["vol"].id
    assert snap.is_loaded("volume")


def test_child_loaded_with_its_volume_has_it(env, populated):
    data = populated["conn"].dumps
    env.fresh_store()
    conn = storage.load(data)
    assert conn.is_loaded("volume")
    assert conn.volume.record == populated["vol"].record


def test_backend_document_with_volumes_restores_the_loaded_list(env, populated):
    backend = populated["backend"]
    data = backend.dumps
    env.fresh_store()
    assert not backend.is_loaded("volumes")
    loaded = storage.load(data)
    assert loaded.is_loaded("volumes")
    assert [v.id for v in loaded.volumes] == [populated["vol"].id]
    assert [s.id for s in loaded.volumes[0].snapshots] == [populated["snap"].id]


def test_backend_document_without_volumes_leaves_the_list_unloaded(env, populated):
    backend = populated["backend"]
    doc = backend.json
    env.fresh_store()
    storage.load(doc)
    assert not backend.is_loaded("volumes")
