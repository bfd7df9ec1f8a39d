"""The etcd store itself: ``EtcdStore``, the ``MetadataStore`` on an etcd v3 cluster.

Why a module: this is what the store's callers see (its options, reads, writes,
unique names and key/value pairs); the key layout, the requests and the
connection it builds on are in the sibling modules. The design is in the package doc.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from etcd3 import etcdrpc as rpc

from csi_driver.storage.exceptions import InvalidArgument, NameInUse, StoreError, StoreUnavailable
from csi_driver.storage.persistence.base import (
    CONNECTION,
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
from csi_driver.storage.persistence.etcd.client import (
    LOG,
    Client,
    Compacted,
    parse_endpoint,
    tls_credentials,
)
from csi_driver.storage.persistence.etcd.keys import (
    INDEXED,
    Keys,
    escape,
    indexed_fields,
    key_after,
    prefix_end,
    unescape,
)
from csi_driver.storage.persistence.etcd.transactions import (
    CAS_ATTEMPTS,
    Change,
    Stored,
    absent,
    backoff,
    change_ops,
    get_op,
    group_changes,
    nested_op,
    put_op,
    unchanged,
)

#: Keys per range request of a bulk read.
_RANGE_CHUNK = 1000
#: A filtered read that finds more index keys than this reads all records instead.
_SCAN_INSTEAD = 2000
#: Record states remembered for the compare of the next write.
_CACHE_SIZE = 4096
_READ_RETRIES = 5  # a read pinned to a revision that got compacted starts again
T = TypeVar("T")


class EtcdStore(MetadataStore):
    """Records in an etcd v3 cluster under one key prefix (see the package doc)."""

    name = "etcd"

    def __init__(
        self,
        endpoints: Sequence[str] | str = ("http://127.0.0.1:2379",),
        prefix: str = "/csi-driver/",
        timeout: float = 5,
        user: str | None = None,
        password: str | None = None,
        ca_cert: str | None = None,
        cert_cert: str | None = None,
        cert_key: str | None = None,
        max_txn_ops: int = 128,
    ) -> None:
        """Connect to the etcd cluster at ``endpoints`` (URLs, tried in order).

        ``timeout`` is how long, in seconds, one request may wait for an answer
        (retrying unreachable endpoints) before StoreUnavailable. ``user`` and
        ``password`` authenticate; ``ca_cert`` (the CA that signed the servers'
        certificates) and ``cert_cert``/``cert_key`` (a client certificate) are
        PEM file paths for https endpoints. ``max_txn_ops`` is the server's
        ``--max-txn-ops`` (how big one write may be). An unreachable server is not
        an error here: the calls that need it will be.
        """
        if isinstance(endpoints, str):
            endpoints = [part for part in endpoints.split(",") if part.strip()]
        if not isinstance(endpoints, list | tuple) or not endpoints:
            raise InvalidArgument(
                f"etcd store option 'endpoints' must be a non-empty list of URLs, got {endpoints!r}"
            )
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise InvalidArgument(
                f"etcd store option 'prefix' must be a string starting with '/', got {prefix!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise InvalidArgument(
                f"etcd store option 'timeout' must be a number of seconds > 0, got {timeout!r}"
            )
        if isinstance(max_txn_ops, bool) or not isinstance(max_txn_ops, int) or max_txn_ops < 16:
            raise InvalidArgument(
                f"etcd store option 'max_txn_ops' must be an integer >= 16 (the server's "
                f"--max-txn-ops), got {max_txn_ops!r}"
            )
        if (user is None) != (password is None):
            raise InvalidArgument("etcd store options 'user' and 'password' go together")
        if user is not None and (not isinstance(user, str) or not user):
            raise InvalidArgument(
                f"etcd store option 'user' must be a non-empty string, got {user!r}"
            )
        if password is not None and not isinstance(password, str):
            raise InvalidArgument("etcd store option 'password' must be a string")
        if (cert_cert is None) != (cert_key is None):
            raise InvalidArgument("etcd store options 'cert_cert' and 'cert_key' go together")
        tls = ca_cert is not None or cert_cert is not None
        parsed = [parse_endpoint(url, tls) for url in endpoints]
        plain = [url for url, _, secure in parsed if not secure]
        if tls and plain:
            raise InvalidArgument(
                f"etcd store: TLS options are set but endpoint {plain[0]} is http; use https"
            )
        credentials = None
        if any(secure for _, _, secure in parsed):
            credentials = tls_credentials(ca_cert, cert_cert, cert_key)
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.endpoints = [url for url, _, _ in parsed]
        self.timeout = float(timeout)
        self._max_ops = max_txn_ops
        self._reads = min(100, max_txn_ops)
        self.user = user
        self._keys = Keys(prefix.encode("utf-8", "surrogatepass"))
        self._where = f"etcd metadata store at {', '.join(self.endpoints)} (prefix {prefix!r})"
        if user is not None and plain:
            LOG.warning("%s: the password of user %r goes over plain http", self._where, user)
        self._lock = threading.Lock()  # guards _cache
        self._cache: dict[bytes, Stored] = {}
        self._client = Client(
            parsed,
            credentials,
            timeout=self.timeout,
            user=user,
            password=password,
            prefix=prefix,
            meta=self._keys.meta,
            where=self._where,
        )
        try:
            self._client.setup()
        except StoreUnavailable as exc:
            LOG.warning("%s: not reachable yet (%s); will retry on first use", self._where, exc)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<EtcdStore {self.endpoints!r} prefix {self.prefix!r}>"

    def close(self) -> None:
        """Close the channels; later calls raise StoreError."""
        self._client.close()

    # -- reading helpers -------------------------------------------------------------------
    def _range_all(
        self, key: bytes, end: bytes, doing: str, *, revision: int = 0, keys_only: bool = False
    ) -> tuple[list[Any], int]:
        """Every key in [key, end) at one revision, a chunk at a time; and that revision."""
        out: list[Any] = []
        while True:
            resp = self._client.range(
                key, end, doing, limit=_RANGE_CHUNK, revision=revision, keys_only=keys_only
            )
            revision = revision or resp.header.revision
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return out, revision
            key = key_after(resp.kvs[-1].key)

    def _get_many(self, keys: list[bytes], revision: int, doing: str) -> tuple[list[Any], int]:
        """The kvs of the keys that exist, all at one revision (0: the current one)."""
        out: list[Any] = []
        for start in range(0, len(keys), self._reads):
            ops = [get_op(key, revision=revision) for key in keys[start : start + self._reads]]
            resp = self._client.txn([], ops, [], doing)
            revision = revision or resp.header.revision
            for item in resp.responses:
                out.extend(item.response_range.kvs)
        return out, revision

    def _decode(self, kind: str, kvs: list[Any]) -> list[tuple[tuple[int, int, bytes], Record]]:
        """(sort key, record) of stored record kvs."""
        places = []
        texts = []
        for kv in kvs:
            pos, text = self._split(kind, kv)
            places.append((kv.create_revision, pos, kv.key))
            texts.append(text)
        try:
            records = decode_records(texts)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{self._where}: a {kind} record is not valid JSON: {exc}") from exc
        return list(zip(places, records, strict=True))

    def _split(self, kind: str, kv: Any) -> tuple[int, str]:
        head, sep, body = kv.value.partition(b"\n")
        if not sep or not head.isdigit():
            raise StoreError(
                f"{self._where}: key {kv.key.decode(errors='replace')!r} does not hold a "
                f"{kind} record written by this store"
            )
        try:
            return int(head), body.decode()
        except UnicodeDecodeError as exc:
            raise StoreError(f"{self._where}: a {kind} record is not valid UTF-8: {exc}") from exc

    def _stored(self, kind: str, kv: Any) -> Stored:
        pos, text = self._split(kind, kv)
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self._where}: a {kind} record is not valid JSON: {exc}") from exc
        return Stored(kv.mod_revision, pos, indexed_fields(kind, record))

    def _id_of(self, index_prefix: bytes, key: bytes) -> str:
        return unescape(key[len(index_prefix) :])

    def _remember(self, key: bytes, state: Stored | None) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if state is not None:
                if len(self._cache) >= _CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = state

    # -- reads -----------------------------------------------------------------------------
    def _consistent_read(self, doing: str, read: Callable[[], T]) -> T:
        """``read()``, started again when the revision it pinned got compacted meanwhile."""
        for _ in range(_READ_RETRIES):
            try:
                return read()
            except Compacted:
                continue
        raise StoreError(f"{self._where}: cannot {doing}: etcd kept compacting")

    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        check_filters(id=record_id, **filters)
        wanted = {field: value for field, value in filters.items() if value is not None}
        doing = f"read {kind} records"
        kvs = self._consistent_read(doing, lambda: self._select_kvs(kind, record_id, wanted, doing))
        rows = self._decode(kind, kvs)
        if record_id is not None:  # likely to be written next: remember what the compare needs
            for kv, ((_, pos, _), record) in zip(kvs, rows, strict=True):
                self._remember(kv.key, Stored(kv.mod_revision, pos, indexed_fields(kind, record)))
        rows = [
            row
            for row in rows
            if all(row[1].get(field) == value for field, value in wanted.items())
        ]
        rows.sort(key=lambda row: row[0])
        return [record for _, record in rows]

    def _select_kvs(
        self, kind: str, record_id: str | None, wanted: dict[str, str], doing: str
    ) -> list[Any]:
        keys = self._keys
        if record_id is not None:
            return list(self._client.range(keys.record(kind, record_id), b"", doing).kvs)
        field = next((f for f in INDEXED[kind] if f in wanted), None)
        if field is None:
            return self._range_all(keys.rec[kind], prefix_end(keys.rec[kind]), doing)[0]
        prefix = keys.index_prefix(kind, field, wanted[field])
        found, revision = self._range_all(prefix, prefix_end(prefix), doing, keys_only=True)
        if len(found) > _SCAN_INSTEAD:
            rec = keys.rec[kind]
            return self._range_all(rec, prefix_end(rec), doing, revision=revision)[0]
        wanted_keys = [keys.record(kind, self._id_of(prefix, kv.key)) for kv in found]
        return self._get_many(wanted_keys, revision, doing)[0]

    def _list_page(self, kind: str, limit: int, token: str, filters: dict[str, str]) -> Page:
        after = read_token(kind, token) if token else None
        doing = f"list {kind} records"
        records, more = self._consistent_read(
            doing, lambda: self._page(kind, limit, after, filters, doing)
        )
        next_token = issue_token(kind, records[-1]["id"]) if more and records else ""
        return Page(records, next_token)

    def _page(
        self, kind: str, limit: int, after: str | None, wanted: dict[str, str], doing: str
    ) -> tuple[list[Record], bool]:
        keys = self._keys
        field = "volume_id" if "volume_id" in wanted else "backend" if wanted else None
        base = keys.rec[kind] if field is None else keys.index_prefix(kind, field, wanted[field])
        start = base if after is None else key_after(base + escape(after))
        end = prefix_end(base)
        if field is None:
            resp = self._client.range(start, end, doing, limit=limit)
            return [record for _, record in self._decode(kind, list(resp.kvs))], resp.more
        # Index keys, then their records at the same revision; filters the index does
        # not cover are checked on the records, reading on until the page is full.
        found: list[Record] = []
        revision = 0
        while True:
            resp = self._client.range(
                start, end, doing, limit=limit + 1 - len(found), keys_only=True, revision=revision
            )
            revision = revision or resp.header.revision
            if not resp.kvs:
                return found, False
            record_keys = [keys.record(kind, self._id_of(base, kv.key)) for kv in resp.kvs]
            kvs, _ = self._get_many(record_keys, revision, doing)
            for _, record in self._decode(kind, kvs):
                if all(record.get(f) == v for f, v in wanted.items()):
                    found.append(record)
            if len(found) > limit:
                return found[:limit], True
            if not resp.more:
                return found, False
            start = key_after(resp.kvs[-1].key)

    def _read_connections(self, wanted: list[str]) -> list[Record]:
        doing = "read connection records"
        return self._consistent_read(doing, lambda: self._connections_of(wanted, doing))

    def _connections_of(self, wanted: list[str], doing: str) -> list[Record]:
        keys = self._keys
        prefixes = [keys.index_prefix(CONNECTION, "volume_id", v) for v in wanted]
        revision = 0
        record_keys: list[bytes] = []
        for start in range(0, len(prefixes), self._reads):
            chunk = prefixes[start : start + self._reads]
            ops = [get_op(p, prefix_end(p), keys_only=True, revision=revision) for p in chunk]
            resp = self._client.txn([], ops, [], doing)
            revision = revision or resp.header.revision
            for prefix, item in zip(chunk, resp.responses, strict=True):
                for kv in item.response_range.kvs:
                    record_keys.append(keys.record(CONNECTION, self._id_of(prefix, kv.key)))
        kvs, _ = self._get_many(record_keys, revision, doing)
        rows = self._decode(CONNECTION, kvs)
        order = {volume_id: n for n, volume_id in enumerate(wanted)}
        rows = [row for row in rows if row[1]["volume_id"] in order]
        rows.sort(key=lambda row: (order[row[1]["volume_id"]], row[0]))
        return [record for _, record in rows]

    # -- writes ----------------------------------------------------------------------------
    def write(
        self,
        *,
        volumes: Iterable[Record] = (),
        snapshots: Iterable[Record] = (),
        connections: Iterable[Record] = (),
        remove: Iterable[tuple[str, str]] = (),
        durable: bool = True,  # every etcd write is durable (raft) once answered
    ) -> None:
        # Encode (and so validate) everything before any request: atomicity.
        changes: dict[bytes, Change] = {}
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            for record in records:
                text = encode_record(kind, record)
                key = self._keys.record(kind, record["id"])
                # The same id twice: the last record wins, in the place of the first.
                changes[key] = Change(kind, record["id"], key, text, indexed_fields(kind, record))
        written = {(change.kind, change.record_id) for change in changes.values()}
        for kind, record_id in check_removals(remove, written):
            key = self._keys.record(kind, record_id)
            changes[key] = Change(kind, record_id, key, None, {})
        if changes:
            self._apply(list(changes.values()), f"write {len(changes)} record(s)")

    def delete(self, kind: str, record_id: str, *, durable: bool = True) -> None:
        check_kind(kind)
        check_filters(id=record_id)
        key = self._keys.record(kind, record_id)
        self._apply([Change(kind, record_id, key, None, {})], f"delete a {kind} record")

    def _apply(self, changes: list[Change], doing: str) -> None:
        """Put or delete records with their index keys in one compare-and-swap txn.

        Small batches compare each record key with the revision last seen of it
        (the cache, or 0 for absent): one round trip for a new record or a
        record read or written lately. A batch too big for one flat transaction
        is cut into groups of adjacent keys of one kind, each a nested
        transaction under one compare ("no key of the group's key range changed
        since revision R", R being the revision of the read the batch is built
        on), so that the whole write still is one transaction. Such a write puts
        every index key of its records, not only the changed ones: a record
        deleted meanwhile comes back whole.
        """
        with self._lock:
            known = {change.key: self._cache.get(change.key) for change in changes}
        revision = 0  # the revision ``known`` was read at; 0: from the cache or assumed
        for attempt in range(CAS_ATTEMPTS):
            grouped = len(changes) > self._max_ops
            ops, places = change_ops(self._keys, changes, known, full_index=False)
            if not grouped and sum(map(len, ops.values())) > self._max_ops:
                grouped = True
            if grouped:
                groups = group_changes(changes, ops, self._max_ops, self._where)
                if any(len(group) > 1 for group in groups):
                    if not revision:  # range compares need every record read at one revision
                        known, revision = self._read_states(changes, doing)
                        continue
                    ops, places = change_ops(self._keys, changes, known, full_index=True)
                    groups = group_changes(changes, ops, self._max_ops, self._where)
                compare = [unchanged(group, known, revision) for group in groups]
                success = [nested_op([op for c in group for op in ops[c.key]]) for group in groups]
                failure = [nested_op([get_op(c.key) for c in group]) for group in groups]
                order = [change for group in groups for change in group]
            else:
                compare = [unchanged([change], known, revision) for change in changes]
                success = [op for change in changes for op in ops[change.key]]
                failure = [get_op(change.key) for change in changes]
                order = changes
            resp = self._client.txn(compare, success, failure, doing)
            if resp.succeeded:
                for change in changes:
                    state = None
                    if change.text is not None:
                        state = Stored(resp.header.revision, places[change.key], change.fields)
                    self._remember(change.key, state)
                return
            items = resp.responses
            if grouped:
                items = [inner for item in items for inner in item.response_txn.responses]
            for change, item in zip(order, items, strict=True):
                kvs = item.response_range.kvs
                known[change.key] = self._stored(change.kind, kvs[0]) if kvs else None
            revision = resp.header.revision
            backoff(attempt)
        raise StoreError(
            f"{self._where}: cannot {doing}: the records kept changing under "
            f"{CAS_ATTEMPTS} attempts"
        )

    def _read_states(
        self, changes: list[Change], doing: str
    ) -> tuple[dict[bytes, Stored | None], int]:
        """The stored state of each change's record, all at one revision."""
        kinds = {change.key: change.kind for change in changes}
        kvs, revision = self._consistent_read(doing, lambda: self._get_many(list(kinds), 0, doing))
        known: dict[bytes, Stored | None] = dict.fromkeys(kinds)
        for kv in kvs:
            known[kv.key] = self._stored(kinds[kv.key], kv)
        return known, revision

    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        record_id = record["id"]
        keys = self._keys
        key = keys.record(kind, record_id)
        fields = indexed_fields(kind, record)
        value = b"0\n" + text.encode()
        names = keys.index_prefix(kind, "name", name)
        compare = [absent(names, prefix_end(names)), absent(key)]
        success = [
            put_op(key, value),
            *(put_op(k, b"") for k in sorted(keys.index_keys(kind, record_id, fields))),
        ]
        failure = [get_op(names, prefix_end(names), keys_only=True), get_op(key)]
        notes: list[str] = []
        for attempt in range(CAS_ATTEMPTS):
            resp = self._client.txn(compare, success, failure, f"create a {kind} record", notes)
            if resp.succeeded:
                self._remember(key, Stored(resp.header.revision, 0, fields))
                return
            holders = sorted(
                resp.responses[0].response_range.kvs, key=lambda kv: kv.create_revision
            )
            stored = resp.responses[1].response_range.kvs
            if holders:
                holder = self._id_of(names, holders[0].key)
                if holder == record_id and notes and stored and stored[0].value == value:
                    return  # an earlier attempt of this call was applied before its answer was lost
                raise NameInUse(kind, name, holder)
            if stored:
                raise InvalidArgument(f"a {kind} with id {record_id!r} already exists")
            backoff(attempt)
        raise StoreError(f"{self._where}: cannot create a {kind} record: the name kept changing")

    # -- key/value -------------------------------------------------------------------------
    def get_value(self, key: str) -> str | None:
        check_key(key)
        resp = self._client.range(self._keys.kv + escape(key), b"", "read a value")
        if not resp.kvs:
            return None
        try:
            return resp.kvs[0].value.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise StoreError(f"{self._where}: the value of key {key!r} is not UTF-8") from exc

    def set_value(self, key: str, value: str) -> None:
        check_value(key, value)
        request = rpc.PutRequest(
            key=self._keys.kv + escape(key), value=value.encode("utf-8", "surrogatepass")
        )
        self._client.call("KV", "Put", request, "write a value")

    def get_values(self) -> dict[str, str]:
        prefix = self._keys.kv
        kvs, _ = self._range_all(prefix, prefix_end(prefix), "read the values")
        try:
            return {
                unescape(kv.key[len(prefix) :]): kv.value.decode("utf-8", "surrogatepass")
                for kv in kvs
            }
        except UnicodeDecodeError as exc:
            raise StoreError(f"{self._where}: a value is not UTF-8: {exc}") from exc

    def delete_value(self, key: str) -> None:
        check_key(key)
        request = rpc.DeleteRangeRequest(key=self._keys.kv + escape(key))
        self._client.call("KV", "DeleteRange", request, "delete a value")
