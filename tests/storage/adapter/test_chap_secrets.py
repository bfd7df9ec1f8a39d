"""CHAP credentials and the secret heuristics, as the LVM + LIO run in the VM showed them.

LIO's ``create_export`` generates CHAP credentials and logs the ``cinder-rtstool create``
command holding them before the adapter sees them; ``use_chap_auth=True`` once made
every "True" in the process's logs read "***".
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from csi_driver import storage
from csi_driver.storage import secrets


@pytest.mark.usefixtures("memory_store")
def test_chap_credentials_a_driver_generates_are_masked_from_birth(
    make_backend: Callable[..., storage.Backend], caplog: pytest.LogCaptureFixture
) -> None:
    make_backend("chap-gen")  # Cinder's process settings are applied with the first backend
    from cinder.volume import volume_utils

    username, password = volume_utils.generate_username(), volume_utils.generate_password()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("oslo_concurrency.processutils").debug(
            "Running cmd (subprocess): cinder-rtstool create /dev/vg/lv iqn.x %s %s", username,
            password,
        )  # fmt: skip
    text = caplog.handler.format(caplog.records[-1])
    assert password not in text and username not in text
    assert "cinder-rtstool create /dev/vg/lv iqn.x *** ***" in text


@pytest.mark.usefixtures("memory_store")
def test_use_chap_auth_is_a_setting_not_a_secret(
    make_backend: Callable[..., storage.Backend],
) -> None:
    backend = make_backend("chap-on", use_chap_auth=True)
    assert backend.config["use_chap_auth"] is True
    assert secrets.mask_text("ok: True") == "ok: True"
