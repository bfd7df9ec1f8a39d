"""Bad input: every one raises ``SerializationError`` naming what is wrong, and nothing of
the document reaches the metadata store, even with ``save=True``.

The documents start from a real dump whose ids are renamed, so that a valid one would add
three new records to the store (``test_valid_renamed_document_is_saved`` shows the check
would see a write), or from the dump as it is with a changed name, so that a valid one
would overwrite the stored records.
"""

from __future__ import annotations

import copy
import json

import pytest

from csi_driver import storage

NEW_IDS = ("new-volume-0001", "new-snapshot-0001", "new-connection-0001")


@pytest.fixture(params=["new-ids", "existing-ids"])
def good_doc(request, env, populated):
    """A valid Volume document holding a volume, a snapshot and a connection."""
    text = populated["vol"].dumps
    if request.param == "new-ids":
        for obj, new in zip((populated[k] for k in ("vol", "snap", "conn")), NEW_IDS, strict=True):
            text = text.replace(obj.id, new)
        doc = json.loads(text)
    else:
        doc = json.loads(text)
        for table in ("volumes", "snapshots", "connections"):
            for record in doc[table]:
                record["name"] = "overwritten"
    return doc


def check_refused(env, data, *words, save=True, loader=storage.load):
    """``loader(data)`` raises SerializationError naming ``words``; the store is unchanged."""
    before = env.contents()
    with pytest.raises(storage.SerializationError) as info:
        loader(data, save=save)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not named in: {message}"
    assert env.contents() == before
    return message


def test_valid_renamed_document_is_saved(env, populated):
    text = populated["vol"].dumps
    for obj, new in zip((populated[k] for k in ("vol", "snap", "conn")), NEW_IDS, strict=True):
        text = text.replace(obj.id, new)
    storage.load(text, save=True)
    volumes, snapshots, connections = env.ids()
    assert NEW_IDS[0] in volumes and NEW_IDS[1] in snapshots and NEW_IDS[2] in connections


def test_valid_good_doc_is_saved_as_given(env, good_doc):
    before = env.contents()
    storage.load(good_doc, save=True)
    assert env.contents() != before
    stored = dict(zip(("volumes", "snapshots", "connections"), env.contents(), strict=True))
    for table, records in stored.items():
        by_id = {r["id"]: r for r in records}
        for record in good_doc[table]:
            assert by_id[record["id"]].get("name") == record.get("name")


# ---------------------------------------------------------------------------------
# Not a document at all
# ---------------------------------------------------------------------------------
def test_malformed_json_text(env, good_doc):
    check_refused(env, json.dumps(good_doc)[:-7], "JSON")


def test_empty_text(env):
    check_refused(env, "", "JSON")


@pytest.mark.parametrize("text", ["[]", "42", '"text"', "null"])
def test_json_that_is_not_an_object(env, text):
    check_refused(env, text, "object")


def test_list_holding_a_valid_document(env, good_doc):
    check_refused(env, json.dumps([good_doc]), "object")


def test_bytes_that_are_not_utf8(env):
    message = check_refused(env, b"\xff\xfe{}")
    assert any(w in message.lower() for w in ("utf", "json", "decode", "encoding"))


@pytest.mark.parametrize("data", [None, 42, ["a"]])
def test_input_of_wrong_type(env, data):
    check_refused(env, data)


# ---------------------------------------------------------------------------------
# Header: format, version, class
# ---------------------------------------------------------------------------------
def test_missing_format(env, good_doc):
    del good_doc["format"]
    check_refused(env, good_doc, "format")


@pytest.mark.parametrize("value", ["cinderlib", "", None, 1])
def test_wrong_format(env, good_doc, value):
    good_doc["format"] = value
    check_refused(env, json.dumps(good_doc), "format")


@pytest.mark.parametrize("value", [2, 0, -1])
def test_unknown_version(env, good_doc, value):
    good_doc["version"] = value
    check_refused(env, json.dumps(good_doc), "version", str(value))


@pytest.mark.parametrize("value", ["1", 1.0, 1.5, True, None, [1]])
def test_non_integer_version(env, good_doc, value):
    good_doc["version"] = value
    check_refused(env, good_doc, "version")


def test_missing_version(env, good_doc):
    del good_doc["version"]
    check_refused(env, good_doc, "version")


@pytest.mark.parametrize("value", ["Pool", "volume", "", None])
def test_unknown_class(env, good_doc, value):
    good_doc["class"] = value
    check_refused(env, good_doc, "class")


def test_missing_class(env, good_doc):
    del good_doc["class"]
    check_refused(env, good_doc, "class")


@pytest.mark.parametrize(
    ("loader", "source"),
    [
        (storage.Volume.load, "snap"),
        (storage.Volume.load, "backend"),
        (storage.Snapshot.load, "vol"),
        (storage.Connection.load, "snap"),
        (storage.Backend.load, "vol"),
    ],
    ids=["Volume<-Snapshot", "Volume<-Backend", "Snapshot<-Volume", "Connection<-Snapshot",
         "Backend<-Volume"],
)  # fmt: skip
def test_class_load_of_another_class_document(env, populated, loader, source):
    message = check_refused(env, populated[source].dumps, "class", loader=loader)
    assert type(populated[source]).__name__ in message


# ---------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("table", ["volumes", "snapshots", "connections"])
def test_record_missing_id(env, good_doc, table):
    del good_doc[table][0]["id"]
    check_refused(env, good_doc, table, "id")


@pytest.mark.parametrize("value", [5, None, "", ["x"]])
def test_record_id_of_wrong_type_or_empty(env, good_doc, value):
    good_doc["snapshots"][0]["id"] = value
    check_refused(env, good_doc, "snapshots", "id")


@pytest.mark.parametrize("value", ["1", True, False, None, 1.5, [1]])
def test_volume_size_of_wrong_type(env, good_doc, value):
    good_doc["volumes"][0]["size"] = value
    check_refused(env, json.dumps(good_doc), "size")


def test_snapshot_volume_size_of_wrong_type(env, good_doc):
    good_doc["snapshots"][0]["volume_size"] = "1"
    check_refused(env, good_doc, "volume_size")


@pytest.mark.parametrize("table", ["volumes", "snapshots", "connections"])
def test_duplicate_ids(env, good_doc, table):
    duplicate = copy.deepcopy(good_doc[table][0])
    duplicate["name"] = "the duplicate"
    good_doc[table].append(duplicate)
    check_refused(env, good_doc, "duplicate", duplicate["id"])


@pytest.mark.parametrize("table", ["volumes", "snapshots", "connections"])
def test_table_that_is_not_a_list(env, good_doc, table):
    good_doc[table] = {r["id"]: r for r in good_doc[table]}
    check_refused(env, good_doc, table)


@pytest.mark.parametrize("table", ["volumes", "snapshots", "connections"])
def test_record_that_is_not_an_object(env, good_doc, table):
    good_doc[table].append("not a record")
    check_refused(env, good_doc, table)


def test_record_missing_its_backend(env, good_doc):
    del good_doc["connections"][0]["backend"]
    check_refused(env, good_doc, "connections", "backend")


def test_connection_connector_of_wrong_type(env, good_doc):
    good_doc["connections"][0]["connector"] = "node-1"
    check_refused(env, good_doc, "connector")


def test_non_json_number_in_a_record(env, good_doc):
    good_doc["volumes"][0]["metadata"] = {"ratio": float("nan")}
    text = json.dumps(good_doc)  # writes the non-standard NaN literal
    assert "NaN" in text
    check_refused(env, text, "metadata")


def test_value_that_is_not_json_in_a_dict_document(env, good_doc):
    good_doc["volumes"][0]["metadata"] = {"tags": {"a", "b"}}
    check_refused(env, good_doc, "metadata")


# ---------------------------------------------------------------------------------
# References inside the document
# ---------------------------------------------------------------------------------
def relation_lists(doc):
    """Every list of ids in the document that points at other entries of it."""
    found = []
    for entry in doc.get("volumes", []):
        for relation in ("snapshots", "connections"):
            if isinstance(entry.get(relation), list):
                found.append(entry[relation])
    for entry in doc.get("backends", []):
        if isinstance(entry.get("volumes"), list):
            found.append(entry["volumes"])
    loaded = doc.get("loaded")
    if isinstance(loaded, dict):
        found.extend(value for value in loaded.values() if isinstance(value, list))
    return found


def test_relation_list_referencing_an_id_not_in_the_document(env, good_doc):
    count = len(relation_lists(good_doc))
    assert count > 0, "the dump of a loaded volume has no relation list"
    for index in range(count):
        doc = copy.deepcopy(good_doc)
        relation_lists(doc)[index].append("no-such-id")
        check_refused(env, doc, "no-such-id")


def test_root_not_in_the_document(env, good_doc):
    good_doc["root"] = "no-such-volume"
    check_refused(env, good_doc, "root", "no-such-volume")


def test_root_naming_a_record_of_another_table(env, good_doc):
    good_doc["root"] = good_doc["snapshots"][0]["id"]
    check_refused(env, good_doc, "root")


def test_missing_root(env, good_doc):
    del good_doc["root"]
    check_refused(env, good_doc, "root")


def test_volume_of_an_unknown_backend(env, good_doc):
    good_doc["volumes"][0]["backend"] = "ghost-backend"
    check_refused(env, good_doc, "ghost-backend")


def test_snapshot_of_an_unknown_backend(env, good_doc):
    good_doc["snapshots"][0]["backend"] = "ghost-backend"
    check_refused(env, good_doc, "ghost-backend")


def test_backend_entry_naming_an_unknown_backend(env, good_doc):
    good_doc["backends"].append({"volume_backend_name": "ghost-backend"})
    check_refused(env, good_doc, "ghost-backend")


def test_backend_entry_without_a_name(env, good_doc):
    good_doc["backends"][0] = {}
    check_refused(env, good_doc, "volume_backend_name")


def test_unknown_backend_message_names_it_after_close(env, populated):
    data = populated["vol"].dumps
    populated["backend"].close()
    check_refused(env, data, populated["backend"].name)


# ---------------------------------------------------------------------------------
# A bad record after valid ones: nothing at all is saved
# ---------------------------------------------------------------------------------
def test_bad_connection_after_valid_volumes_and_snapshots(env, good_doc):
    extra = dict(copy.deepcopy(good_doc["volumes"][0]), id="extra-volume-0001")
    good_doc["volumes"].append(extra)
    good_doc["connections"][-1]["status"] = 7
    check_refused(env, good_doc, "connections", "status")


def test_bad_second_snapshot_after_a_valid_first(env, good_doc):
    second = dict(copy.deepcopy(good_doc["snapshots"][0]), id="second-snapshot", volume_size="x")
    good_doc["snapshots"].append(second)
    check_refused(env, good_doc, "snapshots", "volume_size")


def test_bad_later_volume_in_a_library_document(env, populated):
    populated["backend"].create_volume(size=1)
    doc = json.loads(storage.dumps())
    for record in doc["volumes"]:
        record["name"] = "overwritten"
    doc["volumes"][-1]["size"] = "big"
    check_refused(env, doc, "size")


def test_refused_load_leaves_loaded_objects_alone(env, populated, good_doc):
    backend = populated["backend"]
    listed = backend.volumes
    good_doc["volumes"][0]["size"] = "1"
    check_refused(env, good_doc, "size", save=False)
    assert backend.volumes is listed
    assert [v.id for v in backend.volumes] == [populated["vol"].id]
