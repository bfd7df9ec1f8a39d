"""Attach errors say where os-brick was sent: its own messages often do not."""

from __future__ import annotations

from typing import Any

import pytest

from csi_driver.storage import secrets
from csi_driver.storage.connector import describe_target


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": 0},
         "127.0.0.1:3260 (iqn.x)"),
        ({"target_portals": ["10.0.0.1:3260", "10.0.0.2:3260"], "target_iqn": "iqn.x"},
         "10.0.0.1:3260, 10.0.0.2:3260 (iqn.x)"),
        ({"target_portal": "127.0.0.1", "target_port": "4420", "nqn": "nqn.y",
          "transport_type": "tcp"}, "127.0.0.1:4420 (nqn.y)"),
        ({"portals": [["127.0.0.1", "4420", "tcp"]], "target_nqn": "nqn.z"},
         "127.0.0.1:4420 (nqn.z)"),
        ({"name": "volumes/volume-1", "hosts": ["127.0.0.1"], "ports": ["6789"]},
         "127.0.0.1:6789 (volumes/volume-1)"),
        ({"device_path": "/dev/loop3"}, "(/dev/loop3)"),
        ({}, "an unnamed target"),
    ],
)  # fmt: skip
def test_the_target_of_each_protocol_is_described(data: dict[str, Any], expected: str) -> None:
    assert describe_target(data) == expected


def test_the_description_holds_no_secret() -> None:
    secrets.remember("s3cr3t-chap")
    data = {"target_portal": "127.0.0.1:3260", "name": "s3cr3t-chap", "auth_password": "x"}
    assert describe_target(data) == "127.0.0.1:3260 (***)"
