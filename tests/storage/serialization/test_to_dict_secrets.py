"""``to_dict()`` is for display and masks secrets; ``json``/``jsons``/``dump``/``dumps`` carry
the real values, because the node that attaches the volume needs them."""

from __future__ import annotations

import json

import pytest

from csi_driver import storage

SECRET = "chap-s3cret-value-42"


@pytest.fixture(params=["in-data", "top-level"])
def secret_doc(request, env, populated):
    """A Connection document whose connection info holds a CHAP password."""
    doc = populated["conn"].dump
    info = doc["connections"][0]["connection_info"]
    target = info["data"] if request.param == "in-data" else info
    target.update(auth_method="CHAP", auth_username="chap-user", auth_password=SECRET)
    return doc


def password_in(connection_info):
    data = connection_info.get("data", {})
    return data.get("auth_password", connection_info.get("auth_password"))


def test_to_dict_masks_the_password(env, secret_doc):
    conn = storage.Connection.load(secret_doc)
    shown = conn.to_dict()
    assert password_in(shown["connection_info"]) == "***"
    assert SECRET not in repr(shown)
    assert SECRET not in json.dumps(shown)


def test_to_dict_keeps_what_is_not_secret(env, secret_doc):
    shown = storage.Connection.load(secret_doc).to_dict()
    info = shown["connection_info"]
    data = info.get("data", {})
    assert data.get("auth_username", info.get("auth_username")) == "chap-user"
    assert info["driver_volume_type"] == "local"


@pytest.mark.parametrize("prop", ["json", "jsons", "dump", "dumps"])
def test_serialized_forms_keep_the_real_password(env, secret_doc, prop):
    conn = storage.Connection.load(secret_doc)
    conn.to_dict()  # masking a copy must not touch the object
    value = getattr(conn, prop)
    doc = json.loads(value) if isinstance(value, str) else value
    assert password_in(doc["connections"][0]["connection_info"]) == SECRET


def test_connection_info_attribute_keeps_the_real_password(env, secret_doc):
    conn = storage.Connection.load(secret_doc)
    conn.to_dict()
    assert password_in(conn.connection_info) == SECRET


def test_password_survives_the_store_and_is_masked_only_for_display(env, populated, secret_doc):
    storage.load(secret_doc, save=True)
    conn = populated["backend"].get_connection(populated["conn"].id)
    assert password_in(conn.to_dict()["connection_info"]) == "***"
    assert password_in(json.loads(conn.jsons)["connections"][0]["connection_info"]) == SECRET


def test_jsons_sent_to_a_node_gives_it_the_password(env, secret_doc):
    text = storage.Connection.load(secret_doc).jsons
    env.fresh_store()  # the node has none of the controller's metadata
    on_node = storage.Connection.load(text)
    assert password_in(on_node.connection_info) == SECRET
    assert password_in(on_node.to_dict()["connection_info"]) == "***"


def test_volume_dump_of_the_connection_keeps_the_password(env, secret_doc):
    conn = storage.Connection.load(secret_doc)
    doc = conn.volume.dump
    [entry] = [c for c in doc["connections"] if c["id"] == conn.id]
    assert password_in(entry["connection_info"]) == SECRET
