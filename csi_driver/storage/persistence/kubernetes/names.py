"""How records become Kubernetes objects: object names, label values, selectors.

Pure functions and constants, no requests: the API group and resources, the
name of the object that holds a record id, key or name claim, the label values
and selectors the API server filters by, the spec and labels a record is written
with, and the continue tokens ``list_page`` builds to start after an object.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from csi_driver.storage.persistence.base import CONNECTION, SNAPSHOT, VOLUME, Record

GROUP = "metadata.csi-driver.dev"
VERSION = "v1alpha1"
KEYVALUES = "csikeyvalues"
#: Resource (plural) per record kind.
RESOURCES = {VOLUME: "csivolumes", SNAPSHOT: "csisnapshots", CONNECTION: "csiconnections"}
KIND_NAMES = {
    "csivolumes": "CsiVolume",
    "csisnapshots": "CsiSnapshot",
    "csiconnections": "CsiConnection",
    KEYVALUES: "CsiKeyValue",
}
BACKEND_LABEL = f"{GROUP}/backend"
VOLUME_LABEL = f"{GROUP}/volume"
NAME_LABEL = f"{GROUP}/name"
ROLE_LABEL = f"{GROUP}/role"
#: Claim object name prefix per named kind.
_CLAIM_PREFIX = {VOLUME: "nc-v-", SNAPSHOT: "nc-s-"}

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def object_name(record_id: str) -> str:
    """The object name of a record id: the id itself when it is a DNS label."""
    if _DNS_LABEL.fullmatch(record_id) and not record_id.startswith("h-"):
        return record_id
    return "h-" + _digest(record_id)


def label_value(value: str) -> str:
    """A label value standing for ``value``: itself when valid, else its hash."""
    if _LABEL_VALUE.fullmatch(value) and not value.startswith("h."):
        return value
    return "h." + _digest(value)


def _continue_token(after: str) -> str:
    """An API server continue token that lists from just after object ``after``,
    at the newest resource version (``rv`` -1, as in the token the server gives
    with a 410 for an expired continuation)."""
    payload = json.dumps({"v": "meta.k8s.io/v1", "rv": -1, "start": after + "\x00"})
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _record_spec(kind: str, record: Record, text: str, seq: int, write_id: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"id": record["id"], "backend": record["backend"]}
    if kind != VOLUME:
        spec["volumeId"] = record["volume_id"]
    if kind != CONNECTION and isinstance(record.get("name"), str):
        spec["name"] = record["name"]
    size = record.get("size" if kind == VOLUME else "volume_size")
    if kind != CONNECTION and type(size) is int and -(2**63) <= size < 2**63:
        spec["size"] = size
    if isinstance(record.get("status"), str):
        spec["status"] = record["status"]
    if kind == CONNECTION and isinstance(record.get("attached_host"), str):
        spec["host"] = record["attached_host"]
    spec["seq"] = seq
    spec["writeId"] = write_id
    spec["record"] = text
    return spec


def _labels(resource: str, spec: dict[str, Any], role: str | None) -> dict[str, str]:
    if resource == KEYVALUES:
        return {ROLE_LABEL: role or "value"}
    labels = {BACKEND_LABEL: label_value(spec["backend"])}
    if "volumeId" in spec:
        labels[VOLUME_LABEL] = label_value(spec["volumeId"])
    if "name" in spec:
        labels[NAME_LABEL] = label_value(spec["name"])
    return labels


def _matches(spec: dict[str, Any], filters: dict[str, str | None]) -> bool:
    return all(v is None or spec.get(_SPEC_FIELD[k]) == v for k, v in filters.items())


_SPEC_FIELD = {"id": "id", "backend": "backend", "volume_id": "volumeId", "name": "name"}
_LABEL_OF = {"backend": BACKEND_LABEL, "volume_id": VOLUME_LABEL, "name": NAME_LABEL}


def _selector(filters: dict[str, str | None]) -> str:
    return ",".join(
        f"{_LABEL_OF[key]}={label_value(value)}"
        for key, value in filters.items()
        if value is not None
    )


def _role_of(resource: str, spec: dict[str, Any]) -> str | None:
    if resource != KEYVALUES:
        return None
    return "name-claim" if str(spec.get("key", "")).startswith("name-claim/") else "value"
