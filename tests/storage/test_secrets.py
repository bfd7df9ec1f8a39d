"""Secrets stay out of logs, dumps and displays.

A backend option Cinder declares secret (``chap_password``, from
``cinder.volume.driver.volume_opts``, accepted by every driver) and the CHAP secret
a driver hands out in connection info must never be written by a log handler,
whatever logger wrote the record and in whatever shape; dumps carry the backend
option only when ``setup(output_all_backend_info=True)`` asks for it (documented).

The CHAP-handing driver is ``fault_injection.ChapSecretInjectingFileDriver``, a
deliberate fake (tests/storage/fault_injection.py); tests/storage is put on
``sys.path`` for it below.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from samples import NODE_A

from csi_driver import storage

PASSWORD = "S3cr3t-Pa55"
FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"
FAULTY_DRIVER = "fault_injection.FaultInjectingFileDriver"
CHAP_DRIVER = "fault_injection.ChapSecretInjectingFileDriver"


def setup_library(tmp_path: Path, **options: Any) -> None:
    storage.setup(
        persistence_config={"storage": "memory"},
        file_locks_path=str(tmp_path / "locks"),
        **options,
    )


def test_secret_backend_option_never_reaches_a_log_line(
    tmp_path: Path, make_backend: Callable[..., storage.Backend], captured: Any
) -> None:
    setup_library(tmp_path)
    flags = tmp_path / "flags"
    flags.mkdir()
    backend = make_backend(
        "secret-logs",
        FAULTY_DRIVER,
        chap_password=PASSWORD,
        fault_inject_flag_dir=str(flags),
        file_volumes_dir=str(tmp_path / "secret-logs"),
    )
    vol = backend.create_volume(size=1)
    conn = vol.connect(NODE_A)
    conn.attach()
    conn.detach()
    conn.disconnect()
    (flags / "extend_volume").touch()
    with pytest.raises(storage.DriverError):
        vol.extend(2)
    vol.delete()

    log = logging.getLogger("csi-test.secrets")
    log.debug("backend config %s", backend._full_config())
    log.info("the array password is %s", PASSWORD)
    log.warning(f"options: chap_password={PASSWORD} user=admin")
    try:
        raise RuntimeError(f"login to the array refused password {PASSWORD!r}")
    except RuntimeError:
        log.exception("driver call failed")

    text = captured.stream.getvalue()
    assert "RuntimeError" in text  # the traceback was written...
    assert "login to the array refused password" in text
    assert "***" in text  # ...with the secret masked
    assert any(r.name.startswith("csi_driver") for r in captured.caplog.records)
    assert any(r.levelno == logging.DEBUG for r in captured.caplog.records)
    for written in captured.texts():
        assert PASSWORD not in written


def test_secret_backend_option_is_masked_in_dumps_config_and_repr(
    tmp_path: Path, make_backend: Callable[..., storage.Backend]
) -> None:
    setup_library(tmp_path)
    backend = make_backend("secret-dumps", chap_password=PASSWORD)
    vol = backend.create_volume(size=1)
    vol.create_snapshot()
    vol.connect(NODE_A)
    assert backend.config["chap_password"] == "***"
    for shown in (
        storage.dumps(),
        storage.jsons(),
        str(storage.dump()),
        backend.dumps,
        backend.jsons,
        vol.dumps,
        str(backend.config),
        repr(backend),
        str(backend),
        repr(vol),
        str(vol.to_dict()),
    ):
        assert PASSWORD not in shown


def test_secret_backend_option_is_in_dump_with_output_all_backend_info(
    tmp_path: Path, make_backend: Callable[..., storage.Backend]
) -> None:
    setup_library(tmp_path, output_all_backend_info=True)
    backend = make_backend("secret-full", chap_password=PASSWORD)
    backend.create_volume(size=1)
    document = storage.dump()
    (entry,) = [b for b in document["backends"] if b["volume_backend_name"] == "secret-full"]
    assert entry["chap_password"] == PASSWORD
    assert PASSWORD in storage.dumps()
    assert PASSWORD in backend.dumps
    assert backend.config["chap_password"] == "***"  # display stays masked


def test_chap_secret_of_connection_info_is_masked_in_logs_and_to_dict(
    tmp_path: Path, make_backend: Callable[..., storage.Backend], captured: Any
) -> None:
    setup_library(tmp_path)
    backend = make_backend("chap", CHAP_DRIVER, file_volumes_dir=str(tmp_path / "chap"))
    vol = backend.create_volume(size=1)
    conn = vol.connect(NODE_A)
    secret = conn.connection_info["data"]["auth_password"]
    assert secret.startswith("Chap-")  # the raw record keeps it: attach needs it
    assert conn.connection_info["data"]["auth_username"] == "csi-chap-user"
    conn.attach()
    conn.detach()

    log = logging.getLogger("x")
    log.info("%s", conn.connection_info)
    log.info("%s", conn.to_dict())
    log.info("connection data: %r", conn.connection_info["data"])
    log.info("free text holding the secret %s alone", secret)

    lines = [m for m in captured.caplog.messages if "auth_password" in m]
    assert len(lines) >= 3
    assert all("***" in line for line in lines)
    for written in captured.texts():
        assert secret not in written

    shown = conn.to_dict()
    assert shown["connection_info"]["data"]["auth_password"] == "***"
    assert secret not in str(shown)
    conn.disconnect()


def test_key_of_a_remembered_ceph_keyring_is_masked_in_escaped_shapes() -> None:
    from csi_driver.storage import secrets

    key = "AQBz9Xtest+Keyring/Value0123456789abcdefgh=="
    keyring = f'[client.cinder]\n\tkey = {key}\n\tcaps mon = "profile rbd"\n'
    secrets.remember(keyring)
    assert key not in secrets.mask_text(f"keyring: {keyring}")
    for escaped in (repr({"keyring": keyring}), json.dumps({"keyring": keyring})):
        masked = secrets.mask_text(f"connection data: {escaped}")
        assert key not in masked
        assert "[client.cinder]" in masked  # the escaped keyring is shown, its key is not
