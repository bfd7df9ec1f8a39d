"""RBD connection info carries the keyring only when ``rbd_keyring_conf`` asks for it,
and the keyring's key never reaches a log line, a summary or the backend's config.

``rbd_keyring_conf`` is not a registered Cinder option (OSSN-0085 removed it from
cinder.conf); the RBD driver reads it with ``getattr`` and the library accepts it for
RBD backends, as cinderlib did, because the node plugin needs the keyring to attach.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rbd_support import POOL, RbdSite
from samples import NODE_A

from csi_driver import storage

MakeBackend = Callable[..., storage.Backend]


def test_connection_info_has_no_key_without_rbd_keyring_conf(
    memory_store: None, make_backend: MakeBackend, rbd_site: RbdSite
) -> None:
    backend = make_backend("rbd-nokey", **rbd_site.options())
    conn = backend.create_volume(size=1).connect(NODE_A)
    data = conn.connection_info["data"]
    assert set(data) >= {"name", "hosts", "ports", "auth_username", "secret_uuid"}
    assert "keyring" not in data
    assert rbd_site.keys["cinder"] not in json.dumps(conn.connection_info)


def test_rbd_keyring_conf_puts_the_keyring_in_connection_info_and_never_in_logs(
    memory_store: None,
    make_backend: MakeBackend,
    rbd_site: RbdSite,
    captured: Any,
) -> None:
    key = rbd_site.keys["cinder"]
    keyring_file = rbd_site.cluster.keyring_path("cinder")
    backend = make_backend("rbd-keyring", **rbd_site.options(rbd_keyring_conf=str(keyring_file)))
    vol = backend.create_volume(size=1)
    conn = vol.connect(NODE_A)
    data = conn.connection_info["data"]

    assert data["keyring"] == keyring_file.read_text()
    assert key in data["keyring"]
    assert data["name"] == f"{POOL}/volume-{vol.id}"
    # The driver logged the connection data (dict repr, newlines escaped), masked.
    logged = [m for m in captured.texts()[2:] if "connection data" in m]
    assert logged, "RBDDriver's 'connection data' debug line was not captured"
    assert all("***" in m for m in logged)
    # Other shapes the keyring may be logged in: JSON and repr escape its newlines.
    log = logging.getLogger("csi-test.rbd")
    log.debug("connection as the node receives it: %s", conn.jsons)
    log.info("keyring: %r", data["keyring"])
    for text in captured.texts():
        assert key not in text
    assert key not in json.dumps(conn.to_dict())
    assert key not in json.dumps(backend.config)
    assert key not in repr(conn)
    conn.disconnect()
    vol.delete()
    for text in captured.texts():
        assert key not in text


def test_unreadable_rbd_keyring_conf_is_refused_at_setup_naming_the_option(
    memory_store: None, make_backend: MakeBackend, rbd_site: RbdSite, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such.keyring"
    with pytest.raises(storage.BackendSetupError) as caught:
        make_backend("rbd-badkeyring", **rbd_site.options(rbd_keyring_conf=str(missing)))
    assert caught.value.backend == "rbd-badkeyring"
    assert "rbd_keyring_conf" in str(caught.value)
    assert "rbd-badkeyring" not in storage.Backend.backends


def test_rbd_keyring_conf_is_refused_for_drivers_that_do_not_read_it(
    memory_store: None, make_backend: MakeBackend, tmp_path: Path
) -> None:
    with pytest.raises(storage.BackendSetupError, match="rbd_keyring_conf"):
        make_backend("file-keyring", rbd_keyring_conf=str(tmp_path / "k"))
