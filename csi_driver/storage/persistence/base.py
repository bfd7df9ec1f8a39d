"""The interface every metadata store implements.

Cinder drivers are stateless: what they return (provider_location, provider_auth,
connection info...) must be kept by their host and handed back later. The storage
library keeps it in a metadata store. A store holds *records*: plain JSON-able
dicts produced by the library. The store understands only a few keys of them:

- every record: ``id`` (non-empty str, unique per kind) and ``backend`` (str);
- snapshot and connection records: ``volume_id`` (str);
- volume and snapshot records: ``name`` (str or None), used as a lookup filter.

Everything else in a record is opaque to the store and must come back exactly as
it was written (same keys, same JSON values). Stores never see Cinder objects.

Contract (checked by ``tests/storage/persistence/test_contract.py``, which every
store runs):

- ``set_*`` inserts or replaces the record with that id; a record returned by
  ``get_*`` is a fresh copy: changing it does not change what is stored, and
  changing the dict after ``set_*`` does not either.
- ``get_*`` filters combine with AND; a filter left as None is not applied. The
  result is a list (possibly empty, never an error for "no match") in the order
  the records were first stored; replacing a record keeps its position.
- ``delete_*`` of a missing id is not an error.
- ``write`` stores several records of several kinds atomically: after a failure
  none of them is stored and nothing that was there before is changed. Its
  ``remove`` ((kind, id) pairs) deletes records in the same atomic step; a
  record both written and removed is refused with ``InvalidArgument``.
- ``durable=False`` (``write``, ``delete``): the change is made and read back
  as any other and survives the process, but a power loss or OS crash may undo
  it until the store's next durable write. The store keeps its writes in order:
  after a power loss it holds a prefix of them, so a change made without
  ``durable`` is never kept while an earlier one is lost. The library asks for
  it only for the last step of an operation whose earlier, durable record lets
  recovery redo that step. Stores that make every write durable (etcd,
  kubernetes) ignore it.
- Deleting a volume record does not delete its snapshots or connections: the
  library decides what goes, the store does not cascade.
- Key/value pairs (``get_value``/``set_value``/``delete_value``) hold small
  strings for the Cinder adapter (driver initiator data and the like).
- A malformed record (missing or wrongly typed ``id``/``backend``/``volume_id``,
  or not JSON-serializable: a set, NaN, a dict key that is not a str) raises
  ``InvalidArgument`` and stores nothing; so does a filter, key or value that is
  not a str.
- A store that cannot read its own data raises ``StoreError`` naming the cause.
- Stores are safe to call from several threads at once.

Paging and unique names (for CSI listing and idempotent creates with several
controller replicas):

- ``list_page(kind, limit=N, token=T, **filters)`` returns up to N records in
  ascending ``id`` order, starting after the position T names ("" = the start),
  and the token of the next page ("" when this page reached the end). A page
  costs O(page), never a read of every record. A token is opaque, issued by the
  store for that kind; anything else raises ``BadPageToken``. A record that
  exists during the whole listing is returned exactly once, whatever is added
  or removed between pages.
- ``connections_of(volume_ids)`` returns the connections of several volumes
  in one read (the published nodes of a ListVolumes page).
- ``create_unique(kind, record)`` stores a new volume or snapshot record unless
  a record of that kind already holds its (non-empty) ``name``: then it raises
  ``NameInUse`` naming the holder, and stores nothing. The check and the write
  are one atomic step, also across processes sharing the store. A record whose
  id is taken is refused with ``InvalidArgument``.
- A store whose server is unreachable raises ``StoreUnavailable``, having
  applied nothing of the failed call.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from csi_driver.storage.exceptions import BadPageToken, InvalidArgument

Record = dict[str, Any]

VOLUME = "volume"
SNAPSHOT = "snapshot"
CONNECTION = "connection"
KINDS = (VOLUME, SNAPSHOT, CONNECTION)
#: Kinds whose records carry a ``name`` (what ``create_unique`` keeps unique).
NAMED_KINDS = (VOLUME, SNAPSHOT)
#: Filters ``list_page`` accepts per kind.
PAGE_FILTERS: dict[str, tuple[str, ...]] = {
    VOLUME: ("backend",),
    SNAPSHOT: ("backend", "volume_id"),
    CONNECTION: ("backend", "volume_id"),
}


@dataclass(frozen=True)
class Page:
    """One page of a listing: its records and the token of the next page."""

    records: list[Record] = field(default_factory=list)
    #: "" when this page reached the end of the listing.
    next_token: str = ""


class MetadataStore(abc.ABC):
    """Base class of the metadata stores; subclasses are picked by ``name``."""

    #: The name used in ``persistence_config={'storage': NAME}``.
    name: ClassVar[str]

    # -- reads ---------------------------------------------------------------
    def get_volumes(
        self,
        *,
        volume_id: str | None = None,
        backend: str | None = None,
        name: str | None = None,
    ) -> list[Record]:
        """Volume records matching every filter given."""
        return self._select(VOLUME, volume_id, {"backend": backend, "name": name})

    def get_snapshots(
        self,
        *,
        snapshot_id: str | None = None,
        backend: str | None = None,
        volume_id: str | None = None,
        name: str | None = None,
    ) -> list[Record]:
        """Snapshot records matching every filter given."""
        filters = {"backend": backend, "volume_id": volume_id, "name": name}
        return self._select(SNAPSHOT, snapshot_id, filters)

    def get_connections(
        self,
        *,
        connection_id: str | None = None,
        backend: str | None = None,
        volume_id: str | None = None,
    ) -> list[Record]:
        """Connection records matching every filter given."""
        return self._select(CONNECTION, connection_id, {"backend": backend, "volume_id": volume_id})

    @abc.abstractmethod
    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        """Records of ``kind`` with that id (None: any) matching the filters (a None
        value is not applied), in first-stored order; non-str filters refused."""

    def list_page(
        self,
        kind: str,
        *,
        limit: int,
        token: str = "",
        backend: str | None = None,
        volume_id: str | None = None,
    ) -> Page:
        """Up to ``limit`` records of ``kind`` in id order, after ``token``'s position."""
        filters = {"backend": backend, "volume_id": volume_id}
        check_page_request(kind, limit, token, filters)
        given = {key: value for key, value in filters.items() if value is not None}
        return self._list_page(kind, limit, token, given)

    @abc.abstractmethod
    def _list_page(self, kind: str, limit: int, token: str, filters: dict[str, str]) -> Page:
        """``list_page`` once the request is checked; ``filters`` holds the given ones."""

    def connections_of(self, volume_ids: Sequence[str]) -> list[Record]:
        """The connections of every volume named, in one call."""
        wanted = list(dict.fromkeys(volume_ids))
        for volume_id in wanted:
            check_filters(volume_id=volume_id)
        return self._read_connections(wanted) if wanted else []

    def _read_connections(self, volume_ids: list[str]) -> list[Record]:
        """``connections_of`` for checked, distinct, non-empty ids. Stores override this
        with one query; this fallback asks once per volume."""
        out: list[Record] = []
        for volume_id in volume_ids:
            out.extend(self.get_connections(volume_id=volume_id))
        return out

    def iterate(self, kind: str, page_size: int = 500, **filters: str | None) -> Iterator[Record]:
        """Every record of ``kind`` in id order, read a page at a time."""
        token = ""
        while True:
            page = self.list_page(kind, limit=page_size, token=token, **filters)
            yield from page.records
            if not page.next_token:
                return
            token = page.next_token

    # -- writes --------------------------------------------------------------
    @abc.abstractmethod
    def create_unique(self, kind: str, record: Record) -> None:
        """Store a new record of a NAMED_KINDS kind unless its name is taken (NameInUse)."""

    @abc.abstractmethod
    def write(
        self,
        *,
        volumes: Iterable[Record] = (),
        snapshots: Iterable[Record] = (),
        connections: Iterable[Record] = (),
        remove: Iterable[tuple[str, str]] = (),
        durable: bool = True,
    ) -> None:
        """Insert or replace all the given records, and remove the (kind, id) pairs of
        ``remove``, in one atomic step."""

    @abc.abstractmethod
    def delete(self, kind: str, record_id: str, *, durable: bool = True) -> None:
        """Remove the record of ``kind`` (one of KINDS) with that id, if any."""

    def set_volume(self, record: Record) -> None:
        """Insert or replace one volume record."""
        self.write(volumes=(record,))

    def set_snapshot(self, record: Record) -> None:
        """Insert or replace one snapshot record."""
        self.write(snapshots=(record,))

    def set_connection(self, record: Record) -> None:
        """Insert or replace one connection record."""
        self.write(connections=(record,))

    def delete_volume(self, volume_id: str) -> None:
        """Remove a volume record; its snapshots and connections stay."""
        self.delete(VOLUME, volume_id)

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot record."""
        self.delete(SNAPSHOT, snapshot_id)

    def delete_connection(self, connection_id: str) -> None:
        """Remove a connection record."""
        self.delete(CONNECTION, connection_id)

    # -- small values for the Cinder adapter ------------------------------------
    @abc.abstractmethod
    def get_value(self, key: str) -> str | None:
        """The string stored under ``key``, or None."""

    @abc.abstractmethod
    def set_value(self, key: str, value: str) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""

    @abc.abstractmethod
    def delete_value(self, key: str) -> None:
        """Forget ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def get_values(self) -> dict[str, str]:
        """Every key/value pair (they are few and small: copied whole between stores)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most stores need nothing
        """Release files, sockets or threads; the store is unusable afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def compact(record: Record) -> Record:
    """The record without its None values: an absent field reads as None.

    Records leave unset fields out, which makes each one a third smaller in
    memory and in serialized text (tens of MiB at 10 000 volumes).
    """
    return {key: value for key, value in record.items() if value is not None}


def apply_changes(record: Record, changes: Record) -> None:
    """Update a record in place; a change to None removes the field."""
    for key, value in changes.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value


def check_kind(kind: str) -> None:
    """Refuse a kind that is not one of KINDS."""
    if kind not in KINDS:
        raise InvalidArgument(f"unknown record kind {kind!r}; expected one of {KINDS}")


def check_removals(
    remove: Iterable[tuple[str, str]], written: set[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The (kind, id) pairs a ``write`` removes, each once; refused when malformed or
    also among the ``written`` (kind, id) pairs (which of the two would win?)."""
    removals: dict[tuple[str, str], None] = {}
    for item in remove:
        if not isinstance(item, tuple) or len(item) != 2:
            raise InvalidArgument(f"write's remove takes (kind, id) pairs, got {item!r}")
        kind, record_id = item
        check_kind(kind)
        if not isinstance(record_id, str):
            raise InvalidArgument(f"a {kind} id to remove must be a string, got {record_id!r}")
        if item in written:
            raise InvalidArgument(f"write would both store and remove {kind} {record_id!r}")
        removals[item] = None
    return list(removals)


def check_filters(**filters: str | None) -> None:
    """Refuse a non-str filter: stores would otherwise disagree on what it matches."""
    for key, value in filters.items():
        if value is not None and not isinstance(value, str):
            raise InvalidArgument(f"filter {key!r} must be a string or None, got {value!r}")


def check_page_request(kind: str, limit: int, token: str, filters: dict[str, Any]) -> None:
    """Refuse a listing request every store would have to refuse."""
    check_kind(kind)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument(f"page limit must be an integer >= 1, got {limit!r}")
    if not isinstance(token, str):
        raise InvalidArgument(f"page token must be a string, got {type(token).__name__}")
    allowed = PAGE_FILTERS[kind]
    unknown = sorted(k for k, v in filters.items() if v is not None and k not in allowed)
    if unknown:
        raise InvalidArgument(f"{kind} listing has no filter {', '.join(unknown)}; "
                              f"its filters are: {', '.join(allowed)}")  # fmt: skip
    check_filters(**filters)


def check_unique_create(kind: str, record: Record) -> str:
    """The name a unique create keeps unique, once kind and name are checked."""
    if kind not in NAMED_KINDS:
        raise InvalidArgument(f"create_unique takes a volume or snapshot record, not {kind!r}")
    name = record.get("name") if isinstance(record, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"create_unique needs a {kind} record with a non-empty name")
    return name


_TOKEN_VERSION = "p1"  # noqa: S105 - a format tag, not a secret


def issue_token(kind: str, position: str) -> str:
    """An opaque continuation: the kind and the last position (an id, or a store's
    own cursor) a page returned."""
    payload = json.dumps([_TOKEN_VERSION, kind, position], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def read_token(kind: str, token: str) -> str:
    """The position ``issue_token`` put in ``token``; BadPageToken for anything else."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, token_kind, position = json.loads(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
        raise BadPageToken(f"page token {token[:64]!r} was not issued by this store") from None
    if version != _TOKEN_VERSION or token_kind != kind or not isinstance(position, str):
        raise BadPageToken(f"page token {token[:64]!r} was not issued for a {kind} listing")
    return position


def check_key(key: str) -> None:
    """Refuse a key of the key/value pairs that is not a str."""
    if not isinstance(key, str):
        raise InvalidArgument(f"key must be a string, got {type(key).__name__}")


def check_value(key: str, value: str) -> None:
    """Refuse a key/value pair that is not made of two strings."""
    check_key(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"value of key {key!r} must be a string, got {type(value).__name__}")


def _string_fields(kind: str) -> tuple[str, ...]:
    return ("id", "backend") if kind == VOLUME else ("id", "backend", "volume_id")


_CONTAINERS = (dict, list, tuple)  # a tuple, not a union: isinstance is faster with it


def _check_keys(kind: str, record: Record) -> None:
    """Refuse a dict key that is not a str, anywhere in the record.

    ``json.dumps`` silently turns 1, True or None keys into strings, so such a
    record would not come back "exactly as it was written" (and {1: .., '1': ..}
    would collide). Call after ``json.dumps`` succeeded: no cycles are left.
    """
    stack: list[Any] = [record]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidArgument(
                        f"{kind} record {record['id']!r} is not JSON-serializable: "
                        f"key {key!r} is a {type(key).__name__}, not a string"
                    )
                if isinstance(child, _CONTAINERS):
                    stack.append(child)
        else:
            stack.extend(child for child in item if isinstance(child, _CONTAINERS))


def encode_record(kind: str, record: Record) -> str:
    """Validate a record's indexed keys and return it as compact JSON text.

    Shared by the stores so that they accept and refuse exactly the same input.
    """
    check_kind(kind)
    if not isinstance(record, dict):
        raise InvalidArgument(f"{kind} record must be a dict, not {type(record).__name__}")
    for key in _string_fields(kind):
        value = record.get(key)
        if not isinstance(value, str):
            raise InvalidArgument(f"{kind} record field {key!r} must be a string, got {value!r}")
    if not record["id"]:
        raise InvalidArgument(f"{kind} record field 'id' must be a non-empty string")
    name = record.get("name")
    if kind != CONNECTION and name is not None and not isinstance(name, str):
        raise InvalidArgument(
            f"{kind} record {record['id']!r}: field 'name' must be a string or None, "
            f"got {type(name).__name__}"
        )
    try:
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(
            f"{kind} record {record['id']!r} is not JSON-serializable: {exc}"
        ) from exc
    _check_keys(kind, record)
    return text


_DECODE_BATCH = 512
# Record fields with few distinct values: one string object each, shared by all records.
_SHARED_FIELDS = ("backend", "status", "pool", "user_id", "project_id", "availability_zone",
                  "attach_mode", "attached_host")  # fmt: skip
_MAX_SHARED_TYPES = 1024
_shared_types: dict[str, dict[str, Any]] = {}


def shared_volume_type(vtype: dict[str, Any]) -> dict[str, Any]:
    """One in-memory copy of each distinct volume type record.

    Volumes of one type carry equal ``volume_type`` dicts; sharing them saves
    about half a KiB per volume. Type records are never changed in place.
    """
    key = vtype.get("id")
    if not isinstance(key, str):
        return vtype
    seen = _shared_types.get(key)
    if seen is None:
        if len(_shared_types) < _MAX_SHARED_TYPES:
            _shared_types[key] = vtype
        return vtype
    return seen if seen == vtype else vtype


def share_values(obj: dict[str, Any]) -> dict[str, Any]:
    """``json.loads`` object hook that makes records of one backend share memory.

    Tens of thousands of records repeat the same few strings and volume types;
    sharing them while parsing is what keeps a 10 000-volume load small (see
    benchmarks/serialization.py).
    """
    if "extra_specs" in obj and "id" in obj:
        return shared_volume_type(obj)
    for key in _SHARED_FIELDS:
        value = obj.get(key)
        if type(value) is str:
            obj[key] = sys.intern(value)
    return obj


def decode_records(texts: Iterable[str]) -> list[Record]:
    """Parse stored JSON texts, a batch per ``json.loads`` call.

    One call shares its dict keys between the records it parses, where a call
    per record makes a fresh copy of every key: for a bulk read of 10 000
    volumes that is tens of MiB. Raises ``ValueError`` on a malformed text.
    """
    records: list[Record] = []
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _DECODE_BATCH:
            records.extend(json.loads("[" + ",".join(batch) + "]", object_hook=share_values))
            batch.clear()
    if batch:
        records.extend(json.loads("[" + ",".join(batch) + "]", object_hook=share_values))
    return records
