"""csi_driver.node_identity: node ids carry os-brick connector properties to the controller.

The controller exports a volume to what ``decode(node_id)`` says, so a round trip must
be exact; anything the plugin did not issue (foreign, corrupted) must be refused rather
than half-read; and the 256-byte spec limit must hold, with what was left out reported.
"""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from csi_driver import node_identity
from csi_driver.node_identity import FIELDS, MAX_BYTES, InvalidNodeId, decode, encode

HOST = "node-1.example.org"
#: What os-brick's get_connector_properties reports on an iSCSI + NVMe + FC host.
PROPERTIES: dict[str, Any] = {
    "platform": "x86_64",
    "os_type": "linux",
    "ip": "10.0.0.5",
    "host": "not-used-the-host-argument-wins",
    "multipath": True,
    "enforce_multipath": False,
    "initiator": "iqn.2004-10.com.ubuntu:01:ab12cd34",
    "nqn": "nqn.2014-08.org.example:node-1",
    "nvme_hostid": "0b7e5a52-3d7c-4d1e-9c35-2f6a8b9d0e11",
    "uuid": "6a1c9f1e-7b2d-4c3e-8f9a-0d1e2f3a4b5c",
    "wwpns": ["21000024ff5a6b7c", "21000024ff5a6b7d"],
    "do_local_attach": False,
}


def crc(body: str) -> str:
    """The module's checksum, computed independently so a change to it is noticed."""
    return f"{zlib.crc32(body.encode()):08x}"


def test_round_trip_of_realistic_properties() -> None:
    node_id, dropped = encode(HOST, PROPERTIES, max_volumes=16)

    assert dropped == []
    assert len(node_id.encode()) <= MAX_BYTES
    assert node_id.startswith(f"{node_identity.VERSION};{HOST};")
    assert decode(node_id) == {
        "host": HOST,
        "ip": "10.0.0.5",
        "initiator": "iqn.2004-10.com.ubuntu:01:ab12cd34",
        "nqn": "nqn.2014-08.org.example:node-1",
        "nvme_hostid": "0b7e5a52-3d7c-4d1e-9c35-2f6a8b9d0e11",
        "uuid": "6a1c9f1e-7b2d-4c3e-8f9a-0d1e2f3a4b5c",
        "wwpns": ["21000024ff5a6b7c", "21000024ff5a6b7d"],
        "multipath": True,
        "enforce_multipath": False,
        "os_type": "linux",
        node_identity.MAX_VOLUMES: 16,
    }


def test_encode_does_not_change_the_callers_properties() -> None:
    before = {k: list(v) if isinstance(v, list) else v for k, v in PROPERTIES.items()}
    encode(HOST, PROPERTIES, max_volumes=3)
    assert before == PROPERTIES


@pytest.mark.parametrize(
    ("properties", "max_volumes", "expected"),
    [
        pytest.param({}, 0, {"multipath": False}, id="nothing"),
        pytest.param(
            {"multipath": False, "wwpns": []},
            0,
            {"multipath": False},
            id="false-and-empty-left-out",
        ),
        pytest.param(
            {"wwpns": ["5005076801401b3f"]},
            0,
            {"multipath": False, "wwpns": ["5005076801401b3f"]},
            id="single-wwpn-stays-a-list",
        ),
        pytest.param({"ip": "fd00::5"}, 0, {"multipath": False, "ip": "fd00::5"}, id="ipv6"),
        pytest.param(
            {}, 250, {"multipath": False, node_identity.MAX_VOLUMES: 250}, id="max-volumes"
        ),
    ],
)
def test_round_trip_of_sparse_properties(
    properties: dict[str, Any], max_volumes: int, expected: dict[str, Any]
) -> None:
    node_id, dropped = encode("h", properties, max_volumes)

    assert dropped == []
    assert decode(node_id) == {
        "host": "h",
        "enforce_multipath": False,
        "os_type": "linux",
        **expected,
    }


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("node;1", id="semicolon"),
        pytest.param("node=1", id="equals"),
        pytest.param("a;c=00000000", id="looks-like-a-crc"),
        pytest.param("v1;x;ip=1.2.3.4", id="looks-like-an-id"),
        pytest.param("host with spaces", id="spaces"),
        pytest.param("100%-node", id="percent"),
        pytest.param("knoten-\u00fc", id="non-ascii"),
    ],
)
def test_awkward_host_names_round_trip(host: str) -> None:
    node_id, dropped = encode(host, {"ip": "10.0.0.5"}, max_volumes=2)

    assert dropped == []
    props = decode(node_id)
    assert props["host"] == host
    assert props["ip"] == "10.0.0.5"
    assert props[node_identity.MAX_VOLUMES] == 2


@pytest.mark.parametrize(
    "node_id",
    [
        pytest.param("fake-node-id-123", id="foreign"),
        pytest.param("", id="empty"),
        pytest.param("v1;node-1", id="no-crc"),
        pytest.param("v1;node-1;c=", id="empty-crc"),
        pytest.param(f"v2;node-1;c={crc('v2;node-1')}", id="other-version-valid-crc"),
        pytest.param(f"v1node-1;c={crc('v1node-1')}", id="no-separator-after-version"),
    ],
)
def test_ids_not_issued_here_are_refused(node_id: str) -> None:
    with pytest.raises(InvalidNodeId):
        decode(node_id)


def id_keys(node_id: str) -> list[str]:
    """The property keys an id carries, in order (host and CRC excluded)."""
    body = node_id.rpartition(";c=")[0]
    return [pair.partition("=")[0] for pair in body.split(";")[2:]]


def _change_char(text: str, index: int) -> str:
    old = text[index]
    new = "1" if old != "1" else "2"
    return text[:index] + new + text[index + 1 :]


@pytest.mark.parametrize(
    "locate",
    [
        pytest.param(lambda nid: nid.index("node-1") + 5, id="in-host"),
        pytest.param(lambda nid: nid.index("10.0.0.5") + 7, id="in-ip"),
        pytest.param(lambda nid: nid.index("iqn=") + 10, id="in-iqn"),
        pytest.param(lambda nid: nid.index("max=") + 4, id="in-max-volumes"),
        pytest.param(lambda nid: len(nid) - 1, id="in-crc"),
        pytest.param(lambda nid: 1, id="in-version"),
    ],
)
def test_one_changed_character_is_refused(locate: Any) -> None:
    node_id, _ = encode(HOST, PROPERTIES, max_volumes=16)
    corrupted = _change_char(node_id, locate(node_id))

    assert corrupted != node_id
    with pytest.raises(InvalidNodeId):
        decode(corrupted)


def test_truncated_id_is_refused() -> None:
    node_id, _ = encode(HOST, PROPERTIES, max_volumes=16)
    with pytest.raises(InvalidNodeId):
        decode(node_id[:-1])


def test_unknown_key_from_a_newer_node_is_ignored() -> None:
    """A controller older than its nodes must still read their ids."""
    node_id, _ = encode(HOST, PROPERTIES, max_volumes=16)
    body = node_id.rpartition(";c=")[0]
    version, host, *pairs = body.split(";")
    newer_body = ";".join([version, host, pairs[0], "zone=eu-1", *pairs[1:], "fut=x%3By"])
    newer = f"{newer_body};c={crc(newer_body)}"

    assert decode(newer) == decode(node_id)


def test_crc_is_over_the_body() -> None:
    node_id, _ = encode(HOST, PROPERTIES, max_volumes=16)
    body, _, checksum = node_id.rpartition(";c=")
    assert checksum == crc(body)


#: Long but plausible values: together far over 256 bytes.
LONG = {
    "ip": "fd00:1234:5678:9abc:def0:1234:5678:9abc",
    "initiator": "iqn.1993-08.org.debian:01:" + "4f3c2b1a9d8e" * 2,
    "nqn": "nqn.2014-08.org.nvmexpress:uuid:0b7e5a52-3d7c-4d1e-9c35-2f6a8b9d0e11",
    "wwpns": ["21000024ff5a6b7c", "21000024ff5a6b7d", "21000024ff5a6b7e"],
    "multipath": True,
    "nvme_hostid": "0b7e5a52-3d7c-4d1e-9c35-2f6a8b9d0e11",
    "wwnns": ["20000024ff5a6b7c", "20000024ff5a6b7d"],
    "uuid": "6a1c9f1e-7b2d-4c3e-8f9a-0d1e2f3a4b5c",
}


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("node-1", id="short-host"),
        pytest.param("worker-" + "x" * 60 + ".example.org", id="long-host"),
        pytest.param("h" * 200, id="host-leaves-room-for-little"),
    ],
)
def test_too_long_ids_drop_properties_from_the_end(host: str) -> None:
    node_id, dropped = encode(host, LONG, max_volumes=8)

    assert len(node_id.encode()) <= MAX_BYTES
    assert dropped, "these properties cannot all fit"
    # Dropped from the end of FIELDS first, one after another.
    keys = [key for key, _ in FIELDS]
    assert dropped == keys[::-1][: len(dropped)]
    kept = keys[: len(keys) - len(dropped)]
    assert id_keys(node_id) == kept
    prop_of = dict(FIELDS)
    props = decode(node_id)
    for key in kept:
        assert props[prop_of[key]] not in (None, False), f"{key} should have been kept"
    # Nothing was dropped needlessly: with the last dropped one back, it does not fit.
    with_one_more = {
        prop_of[k]: v for k in [*kept, dropped[-1]] if (v := LONG.get(prop_of[k])) is not None
    }
    _, again = encode(host, with_one_more, max_volumes=8)
    assert again == [dropped[-1]]


def test_host_alone_may_drop_everything_but_still_fits() -> None:
    host = "h" * (MAX_BYTES - len("v1;;c=00000000"))
    node_id, dropped = encode(host, LONG, max_volumes=8)

    assert len(node_id.encode()) == MAX_BYTES
    assert dropped == [key for key, _ in FIELDS][::-1]
    assert decode(node_id)["host"] == host


@pytest.mark.parametrize(
    "host",
    [
        pytest.param("h" * 300, id="300-chars"),
        pytest.param("h" * (MAX_BYTES - len("v1;;c=00000000") + 1), id="one-byte-over"),
        pytest.param(";" * 90, id="short-but-escaped-over"),
    ],
)
def test_host_name_too_long_for_any_id_is_refused(host: str) -> None:
    with pytest.raises(InvalidNodeId, match="host name"):
        encode(host, LONG, max_volumes=8)


def test_invalid_node_id_is_a_value_error() -> None:
    assert issubclass(InvalidNodeId, ValueError)
