"""The os-brick connectors the library builds give the node a local block device.

os-brick's RBD connector maps an image with krbd (``rbd map`` -> ``/dev/rbdN``) only
when built with ``do_local_attach=True``; otherwise its ``connect_volume`` returns a
librbd file-like handle, which a node cannot format, mount or publish. The VM test
``tests/vm/test_krbd.py`` proves the mapping on a real kernel; this checks, on any
host, that every connector the library builds asks for it and that the other
connectors accept the argument unchanged.
"""

from __future__ import annotations

import pytest

from csi_driver.storage import connector


@pytest.mark.usefixtures("memory_store")
def test_the_rbd_connector_maps_with_krbd() -> None:
    brick = connector._brick({"driver_volume_type": "rbd", "data": {}}, use_multipath=False)
    assert type(brick).__name__ == "RBDConnector"
    assert brick.do_local_attach is True


@pytest.mark.usefixtures("memory_store")
@pytest.mark.parametrize(
    ("protocol", "expected"),
    [("iscsi", "ISCSIConnector"), ("nvmeof", "NVMeOFConnector"), ("local", "LocalConnector")],
)
def test_other_connectors_are_built_as_before(protocol: str, expected: str) -> None:
    brick = connector._brick({"driver_volume_type": protocol, "data": {}}, use_multipath=False)
    assert type(brick).__name__ == expected
    assert not hasattr(brick, "do_local_attach")
