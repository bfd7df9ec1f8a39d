"""The etcd store's key layout: where each record, index key and value lives.

Why a module: every other part of the store names keys, and the escaping that keeps
key order equal to id order (see the package doc) must be the same everywhere.
"""

from __future__ import annotations

from csi_driver.storage.persistence.base import CONNECTION, KINDS, SNAPSHOT, VOLUME, Record

LAYOUT_VERSION = b"1"
#: Filter fields with an index, per kind, in the order a lookup prefers them.
INDEXED: dict[str, tuple[str, ...]] = {
    VOLUME: ("name", "backend"),
    SNAPSHOT: ("name", "volume_id", "backend"),
    CONNECTION: ("volume_id", "backend"),
}
_INDEX_PART = {"backend": b"by-backend/", "volume_id": b"by-volume/", "name": b"by-name/"}


def escape(value: str) -> bytes:
    """A key component for ``value``: no ``/``, order kept, decodable (see the package doc)."""
    raw = value.encode("utf-8", "surrogatepass")
    if b"." in raw:
        raw = raw.replace(b".", b".2E")
    if b"/" in raw:
        raw = raw.replace(b"/", b".2F")
    return raw


def unescape(raw: bytes) -> str:
    """The string ``escape`` made ``raw`` from."""
    if b"." in raw:
        raw = raw.replace(b".2F", b"/").replace(b".2E", b".")
    return raw.decode("utf-8", "surrogatepass")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (ends in ``/``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def key_after(key: bytes) -> bytes:
    """The smallest key greater than ``key``."""
    return key + b"\x00"


class Keys:
    """The keys of one store prefix."""

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.meta = prefix + b"meta/layout"
        self.kv = prefix + b"kv/"
        self.rec = {kind: prefix + kind.encode() + b"/rec/" for kind in KINDS}
        self.index = {
            kind: {field: prefix + kind.encode() + b"/" + _INDEX_PART[field] for field in fields}
            for kind, fields in INDEXED.items()
        }

    def record(self, kind: str, record_id: str) -> bytes:
        return self.rec[kind] + escape(record_id)

    def index_prefix(self, kind: str, field: str, value: str) -> bytes:
        return self.index[kind][field] + escape(value) + b"/"

    def index_keys(self, kind: str, record_id: str, fields: dict[str, str | None]) -> set[bytes]:
        escaped = escape(record_id)
        return {
            self.index[kind][field] + escape(value) + b"/" + escaped
            for field, value in fields.items()
            if value is not None
        }


def indexed_fields(kind: str, record: Record) -> dict[str, str | None]:
    """The indexed fields of a record (``encode_record`` checked their types)."""
    return {field: record.get(field) for field in INDEXED[kind]}
