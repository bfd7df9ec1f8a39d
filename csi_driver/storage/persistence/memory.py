"""A metadata store that lives in the process and dies with it.

For tests, benchmarks and throw-away hosts. Records are kept as JSON text, like
SQLite keeps them, so both stores copy in and out and accept the same input;
indexes on the filter columns keep lookups from scanning every record.
"""

from __future__ import annotations

import bisect
import operator
import threading
from collections.abc import Iterable
from typing import NamedTuple

from csi_driver.storage.exceptions import InvalidArgument, NameInUse
from csi_driver.storage.persistence.base import (
    CONNECTION,
    KINDS,
    SNAPSHOT,
    VOLUME,
    MetadataStore,
    Page,
    Record,
    check_filters,
    check_key,
    check_kind,
    check_removals,
    check_unique_create,
    check_value,
    decode_records,
    encode_record,
    issue_token,
    read_token,
)

#: Filter columns indexed per kind (``id`` is the dict key itself).
_INDEXED: dict[str, tuple[str, ...]] = {
    VOLUME: ("backend", "name"),
    SNAPSHOT: ("backend", "volume_id", "name"),
    CONNECTION: ("backend", "volume_id"),
}


class _Row(NamedTuple):
    """One stored record: its first-stored position, filter columns and JSON text."""

    seq: int
    columns: dict[str, str | None]
    text: str


_by_seq = operator.attrgetter("seq")


class _Table:
    """The records of one kind, in first-stored order, with one index per column.

    Not thread-safe on its own: MemoryStore holds its lock around every call.
    """

    def __init__(self, columns: tuple[str, ...]) -> None:
        self.rows: dict[str, _Row] = {}
        # column -> value -> ids (a dict used as an ordered set)
        self.indexes: dict[str, dict[str, dict[str, None]]] = {col: {} for col in columns}
        self.next_seq = 0
        self.sorted_ids: list[str] = []  # for paging in id order

    def put(self, record_id: str, columns: dict[str, str | None], text: str) -> None:
        old = self.rows.get(record_id)
        if old is None:
            seq = self.next_seq
            self.next_seq += 1
            bisect.insort(self.sorted_ids, record_id)
        else:
            seq = old.seq
            self._unindex(record_id, old)
        self.rows[record_id] = _Row(seq, columns, text)
        for col, value in columns.items():
            if value is not None:
                self.indexes[col].setdefault(value, {})[record_id] = None

    def remove(self, record_id: str) -> None:
        old = self.rows.pop(record_id, None)
        if old is not None:
            self._unindex(record_id, old)
            del self.sorted_ids[bisect.bisect_left(self.sorted_ids, record_id)]

    def _unindex(self, record_id: str, row: _Row) -> None:
        for col, value in row.columns.items():
            if value is None:
                continue
            ids = self.indexes[col][value]
            del ids[record_id]
            if not ids:
                del self.indexes[col][value]

    def select(self, record_id: str | None, filters: dict[str, str | None]) -> list[str]:
        """JSON texts of the matching records, in first-stored order."""
        wanted = {col: value for col, value in filters.items() if value is not None}
        if record_id is not None:
            row = self.rows.get(record_id)
            rows = [] if row is None else [row]
        elif wanted:
            # Start from the smallest index bucket, check the other filters on it.
            buckets = [self.indexes[col].get(value, {}) for col, value in wanted.items()]
            ids = min(buckets, key=len)
            rows = [self.rows[i] for i in ids]
            # A record whose column changed on replace sits late in its new bucket.
            rows.sort(key=_by_seq)
        else:
            return [row.text for row in self.rows.values()]
        return [
            row.text
            for row in rows
            if all(row.columns[col] == value for col, value in wanted.items())
        ]

    def page(self, after: str, limit: int, filters: dict[str, str]) -> tuple[list[str], bool]:
        """Ids of up to ``limit`` matching records after ``after``, in id order, and
        whether more follow."""
        volume_id = filters.get("volume_id")
        if volume_id is not None:
            bucket = self.indexes["volume_id"].get(volume_id, {})
            candidates = sorted(i for i in bucket if i > after)
            start = 0
        else:
            candidates = self.sorted_ids
            start = bisect.bisect_right(candidates, after) if after else 0
        found: list[str] = []
        for index in range(start, len(candidates)):  # no slice: it would copy the rest
            record_id = candidates[index]
            columns = self.rows[record_id].columns
            if all(columns[col] == value for col, value in filters.items()):
                if len(found) == limit:
                    return found, True
                found.append(record_id)
        return found, False


class MemoryStore(MetadataStore):
    """Records in insertion-ordered dicts behind one lock; nothing survives the process."""

    name = "memory"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables = {kind: _Table(_INDEXED[kind]) for kind in KINDS}
        self._values: dict[str, str] = {}

    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        check_filters(id=record_id, **filters)
        with self._lock:
            texts = self._tables[kind].select(record_id, filters)
        return decode_records(texts)

    def _list_page(self, kind: str, limit: int, token: str, filters: dict[str, str]) -> Page:
        after = read_token(kind, token) if token else ""
        with self._lock:
            table = self._tables[kind]
            found, more = table.page(after, limit, filters)
            texts = [table.rows[i].text for i in found]
        next_token = issue_token(kind, found[-1]) if more and found else ""
        return Page(decode_records(texts), next_token)

    def _read_connections(self, volume_ids: list[str]) -> list[Record]:
        with self._lock:
            table = self._tables[CONNECTION]
            index = table.indexes["volume_id"]
            texts = [table.rows[i].text for v in volume_ids for i in index.get(v, {})]
        return decode_records(texts)

    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        columns = {col: record.get(col) for col in _INDEXED[kind]}
        with self._lock:
            table = self._tables[kind]
            holders = table.indexes["name"].get(name)
            if holders:
                raise NameInUse(kind, name, next(iter(holders)))
            if record["id"] in table.rows:
                raise InvalidArgument(f"a {kind} with id {record['id']!r} already exists")
            table.put(record["id"], columns, text)

    def write(
        self,
        *,
        volumes: Iterable[Record] = (),
        snapshots: Iterable[Record] = (),
        connections: Iterable[Record] = (),
        remove: Iterable[tuple[str, str]] = (),
        durable: bool = True,  # nothing here is durable: there is nothing to relax
    ) -> None:
        # Encode (and so validate) everything before touching the tables: atomicity.
        batch = []
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            for record in records:
                text = encode_record(kind, record)
                columns = {col: record.get(col) for col in _INDEXED[kind]}
                batch.append((kind, record["id"], columns, text))
        removals = check_removals(remove, {(kind, record_id) for kind, record_id, _, _ in batch})
        with self._lock:
            for kind, record_id, columns, text in batch:
                self._tables[kind].put(record_id, columns, text)
            for kind, record_id in removals:
                self._tables[kind].remove(record_id)

    def delete(self, kind: str, record_id: str, *, durable: bool = True) -> None:
        check_kind(kind)
        with self._lock:
            self._tables[kind].remove(record_id)

    def get_value(self, key: str) -> str | None:
        check_key(key)
        with self._lock:
            return self._values.get(key)

    def set_value(self, key: str, value: str) -> None:
        check_value(key, value)
        with self._lock:
            self._values[key] = value

    def delete_value(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._values.pop(key, None)

    def get_values(self) -> dict[str, str]:
        with self._lock:
            return dict(self._values)
