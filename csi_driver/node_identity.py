"""Node ids that carry the node's connector properties to the controller.

A Cinder driver exports a volume *to* a host described by os-brick's connector
properties (iSCSI initiator IQN, NVMe host NQN, FC WWPNs, IP, multipath). The
controller must know them at ControllerPublishVolume, but the node has no
metadata-store credentials to publish them there. The CSI node id is the one
value the CO carries from NodeGetInfo to ControllerPublishVolume, so the node
packs the properties into it:

    v1;<host>;ip=10.0.0.5;iqn=iqn.1993-08.org.debian:01:abc;nqn=nqn.2014-08...;c=1a2b3c4d

The spec caps a node id at 256 bytes (128 recommended). Properties are dropped,
least useful first, until it fits, and each drop is reported; the trailing CRC-32
lets the controller tell an id this plugin issued from a mistyped or foreign one
(NOT_FOUND).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote

VERSION = "v1"
MAX_BYTES = 256
RECOMMENDED_BYTES = 128

#: Not a connector property: the node's max_volumes_per_node, which the controller
#: enforces at ControllerPublishVolume. Kept out of what drivers receive.
MAX_VOLUMES = "csi_max_volumes"

#: (node-id key, connector property); dropped from the end first when too long.
FIELDS: tuple[tuple[str, str], ...] = (
    ("max", MAX_VOLUMES),
    ("ip", "ip"),
    ("iqn", "initiator"),
    ("nqn", "nqn"),
    ("wwpn", "wwpns"),
    ("mp", "multipath"),
    ("hostid", "nvme_hostid"),
    ("wwnn", "wwnns"),
    ("uuid", "uuid"),
)
_LISTS = {"wwpns", "wwnns"}
_SAFE = ":.,-_@/[]"


class InvalidNodeId(ValueError):
    """Not a node id this plugin issued (or corrupted on the way)."""


def encode(host: str, properties: Mapping[str, Any], max_volumes: int = 0) -> tuple[str, list[str]]:
    """The node id for this host, and the properties left out to fit 256 bytes."""
    properties = {**properties, MAX_VOLUMES: max_volumes}
    parts = [VERSION, quote(host, safe=_SAFE)]
    pairs: list[str] = []
    for key, prop in FIELDS:
        value = properties.get(prop)
        if value in (None, "", [], False):
            continue
        if prop in _LISTS:
            value = ",".join(str(v) for v in value)
        elif prop == "multipath":
            value = "1"
        pairs.append(f"{key}={quote(str(value), safe=_SAFE)}")
    dropped: list[str] = []
    while True:
        body = ";".join(parts + pairs)
        node_id = f"{body};c={_crc(body)}"
        if len(node_id.encode()) <= MAX_BYTES:
            return node_id, dropped
        if not pairs:
            raise InvalidNodeId(f"host name {host!r} alone makes a node id over {MAX_BYTES} bytes")
        dropped.append(pairs.pop().split("=", 1)[0])


def decode(node_id: str) -> dict[str, Any]:
    """The connector properties a node id carries (os-brick's form)."""
    body, sep, crc = node_id.rpartition(";c=")
    if not sep or not body.startswith(VERSION + ";") or crc != _crc(body):
        raise InvalidNodeId(f"node id {node_id!r} was not issued by this plugin's NodeGetInfo")
    fields = body.split(";")
    properties: dict[str, Any] = {"host": unquote(fields[1]), "multipath": False,
                                  "enforce_multipath": False, "os_type": "linux"}  # fmt: skip
    names = dict(FIELDS)
    for pair in fields[2:]:
        key, _, value = pair.partition("=")
        prop = names.get(key)
        if prop is None:
            continue  # a newer node's key this controller does not know yet
        value = unquote(value)
        if prop in _LISTS:
            properties[prop] = value.split(",")
        elif prop == "multipath":
            properties[prop] = value == "1"
        elif prop == MAX_VOLUMES:
            properties[prop] = int(value) if value.isdigit() else 0
        else:
            properties[prop] = value
    return properties


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"
