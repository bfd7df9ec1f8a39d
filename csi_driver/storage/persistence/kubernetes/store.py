"""``KubernetesStore``: the metadata store's calls on Kubernetes custom resources.

Its options and checks, reads (by id, filtered, paged), ``write`` and ``delete``
of records, and the key/value pairs. The requests, undo and name claims it is
built on are in the ``api``, ``undo`` and ``claims`` modules; the design is in
the package docstring.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from csi_driver.storage.exceptions import BadPageToken, InvalidArgument, StoreError
from csi_driver.storage.persistence.base import (
    CONNECTION,
    NAMED_KINDS,
    SNAPSHOT,
    VOLUME,
    MetadataStore,
    Page,
    Record,
    check_filters,
    check_key,
    check_kind,
    check_removals,
    check_value,
    decode_records,
    encode_record,
    issue_token,
    read_token,
)
from csi_driver.storage.persistence.kubernetes.api import _client, _Obj, _seq_key
from csi_driver.storage.persistence.kubernetes.claims import NameClaims
from csi_driver.storage.persistence.kubernetes.names import (
    _DNS_LABEL,
    GROUP,
    KEYVALUES,
    KIND_NAMES,
    RESOURCES,
    ROLE_LABEL,
    VERSION,
    VOLUME_LABEL,
    _continue_token,
    _digest,
    _matches,
    _record_spec,
    _selector,
    label_value,
    object_name,
)
from csi_driver.storage.persistence.kubernetes.undo import _Undo

#: Record ids per label selector of ``connections_of`` (keeps the URL short).
_SELECTOR_CHUNK = 50


class KubernetesStore(NameClaims, MetadataStore):
    """Records as custom resources in one namespace of a Kubernetes cluster."""

    name = "kubernetes"

    def __init__(
        self,
        namespace: str,
        kubeconfig: str | None = None,
        context: str | None = None,
        timeout: float = 5.0,
        conflict_retries: int = 10,
        claim_timeout: float = 10.0,
        cache_size: int = 4096,
    ) -> None:
        """Connect to the API server of ``kubeconfig`` (or the pod's own cluster).

        ``timeout``: seconds a request may take before the server counts as
        unavailable. ``conflict_retries``: re-reads on a resourceVersion
        conflict before giving up. ``claim_timeout``: seconds an unbound name
        claim may stay unchanged before it counts as abandoned. ``cache_size``:
        objects whose last version is remembered (saves a read per replace).
        """
        if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace):
            raise InvalidArgument(
                f"kubernetes store option 'namespace' must be a namespace name, got {namespace!r}"
            )
        for option, value in (("timeout", timeout), ("claim_timeout", claim_timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidArgument(
                    f"kubernetes store option {option!r} must be a number of seconds > 0, "
                    f"got {value!r}"
                )
        for option, value in (("conflict_retries", conflict_retries), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(
                    f"kubernetes store option {option!r} must be an integer >= 1, got {value!r}"
                )
        if kubeconfig is not None and not isinstance(kubeconfig, str):
            raise InvalidArgument(
                f"kubernetes store option 'kubeconfig' must be a file path, got {kubeconfig!r}"
            )
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.timeout = float(timeout)
        self.conflict_retries = conflict_retries
        self.claim_timeout = float(claim_timeout)
        self._cache_size = cache_size
        self._api, self.server = _client(kubeconfig, context)
        self._base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/"
        self._lock = threading.Lock()  # guards _cache, _last_seq, _pending
        self._cache: OrderedDict[str, _Obj] = OrderedDict()
        self._last_seq = 0
        self._seen: dict[str, int] = {}  # resource -> newest resourceVersion seen
        self._unsure: dict[str, int] = {}  # resource -> deletes since its last write
        self._pending: list[_Undo] = []
        self._heal_lock = threading.Lock()
        self._object_locks = [threading.Lock() for _ in range(64)]

    def __repr__(self) -> str:
        return f"<KubernetesStore {self.server} namespace={self.namespace}>"

    def close(self) -> None:
        self._api.close()

    # -- reads -----------------------------------------------------------------
    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        check_filters(id=record_id, **filters)
        self._heal()
        resource = RESOURCES[kind]
        if record_id is not None:
            obj = self._get(self._path(resource, object_name(record_id)))
            objs = [] if obj is None else [obj]
            filters = {"id": record_id, **filters}
        else:
            objs = self._list_all(resource, _selector(filters))
            objs.sort(key=_seq_key)
        return self._decode(kind, [o for o in objs if _matches(o.spec, filters)])

    def _decode(self, kind: str, objs: Iterable[_Obj]) -> list[Record]:
        try:
            return decode_records(obj.spec["record"] for obj in objs)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"kubernetes store: a {KIND_NAMES[RESOURCES[kind]]} in namespace "
                f"{self.namespace} holds no valid record: {exc}"
            ) from exc

    def _list_page(self, kind: str, limit: int, token: str, filters: dict[str, str]) -> Page:
        after = read_token(kind, token) if token else ""
        if after and not _DNS_LABEL.fullmatch(after):
            raise BadPageToken(f"page token {token[:64]!r} was not issued by this store")
        self._heal()
        resource = RESOURCES[kind]
        selector = _selector(filters)
        found: list[_Obj] = []
        cont = _continue_token(after) if after else None
        while True:
            items, cont = self._list(resource, selector, limit=limit - len(found), continue_=cont)
            # (checked again: a label value may be a hash that another value shares)
            found.extend(item for item in items if _matches(item.spec, filters))
            if len(found) >= limit or not cont:
                break
        next_token = issue_token(kind, found[-1].name) if cont and found else ""
        return Page(self._decode(kind, found), next_token)

    def _read_connections(self, wanted: list[str]) -> list[Record]:
        self._heal()
        objs: list[_Obj] = []
        for start in range(0, len(wanted), _SELECTOR_CHUNK):
            chunk = wanted[start : start + _SELECTOR_CHUNK]
            values = sorted({label_value(v) for v in chunk})
            objs.extend(
                self._list_all(RESOURCES[CONNECTION], f"{VOLUME_LABEL} in ({','.join(values)})")
            )
        keep = set(wanted)
        objs = sorted((o for o in objs if o.spec.get("volumeId") in keep), key=_seq_key)
        return self._decode(CONNECTION, objs)

    # -- writes ----------------------------------------------------------------
    def write(
        self,
        *,
        volumes: Iterable[Record] = (),
        snapshots: Iterable[Record] = (),
        connections: Iterable[Record] = (),
        remove: Iterable[tuple[str, str]] = (),
        durable: bool = True,  # every API server write is durable (etcd) once answered
    ) -> None:
        # Validate everything before the first request; a record given twice is
        # written once, with its last content, at its first place.
        batch: dict[tuple[str, str], tuple[Record, str]] = {}
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            for record in records:
                text = encode_record(kind, record)
                batch[(kind, record["id"])] = (record, text)
        removals = check_removals(remove, set(batch))
        if not batch and not removals:
            return
        self._heal()
        write_id = uuid.uuid4().hex
        released: list[tuple[str, str, str]] = []  # (kind, name, id) whose claim goes

        def run(done: list[_Undo]) -> None:
            for (kind, record_id), (record, text) in batch.items():

                def make_spec(
                    old: dict[str, Any] | None, kind=kind, record=record, text=text
                ) -> dict[str, Any]:
                    seq = old["seq"] if old and type(old.get("seq")) is int else self._next_seq()
                    return _record_spec(kind, record, text, seq, write_id)

                _, undo = self._upsert(RESOURCES[kind], object_name(record_id), write_id, make_spec)
                done.append(undo)
                old_name = undo.before.get("name") if undo.before else None
                if kind in NAMED_KINDS and old_name is not None and old_name != record.get("name"):
                    released.append((kind, old_name, record_id))
            # Removals last: a process dying in between leaves the records to remove
            # still there (disconnect's connection: 'disconnecting', which recovery heals).
            for kind, record_id in removals:
                if (name := self._remove_record(kind, record_id, write_id, done)) is not None:
                    released.append((kind, name, record_id))

        self._undoable(run)
        for kind, name, record_id in released:
            self._release_claim(kind, name, record_id)

    def delete(self, kind: str, record_id: str, *, durable: bool = True) -> None:
        check_kind(kind)
        check_filters(id=record_id)
        self._heal()
        write_id = uuid.uuid4().hex
        name = self._undoable(lambda done: self._remove_record(kind, record_id, write_id, done))
        if name is not None:
            self._release_claim(kind, name, record_id)

    def _remove_record(
        self, kind: str, record_id: str, write_id: str, done: list[_Undo]
    ) -> str | None:
        """Delete one record (if there), its undo appended to ``done``; the name whose
        claim it held (a named kind's record that was deleted), else None."""
        path = self._path(RESOURCES[kind], object_name(record_id))
        current = self._cached(path) or self._get(path)
        if current is not None and current.spec.get("id") != record_id:
            return None  # another id with the same hash: not this record
        deleted, undo = self._remove(path, write_id, current)
        if undo is not None:
            done.append(undo)
        if deleted is None or kind not in NAMED_KINDS:
            return None
        name = deleted.spec.get("name")
        return name if isinstance(name, str) else None

    # -- key/value -----------------------------------------------------------
    def _kv_path(self, key: str) -> str:
        return self._path(KEYVALUES, "kv-" + _digest(key))

    def get_value(self, key: str) -> str | None:
        check_key(key)
        self._heal()
        obj = self._get(self._kv_path(key))
        if obj is None or obj.spec.get("key") != key:
            return None
        value = obj.spec.get("value")
        if not isinstance(value, str):
            raise StoreError(
                f"kubernetes store: the value of a key in {self.namespace} is not a string"
            )
        return value

    def get_values(self) -> dict[str, str]:
        self._heal()
        values: dict[str, str] = {}
        for obj in self._list_all(KEYVALUES, f"{ROLE_LABEL}=value"):
            key, value = obj.spec.get("key"), obj.spec.get("value")
            if isinstance(key, str) and isinstance(value, str) and obj.name == "kv-" + _digest(key):
                values[key] = value
        return values

    def set_value(self, key: str, value: str) -> None:
        check_value(key, value)
        self._heal()
        write_id = uuid.uuid4().hex
        name = self._kv_path(key).rsplit("/", 1)[1]

        def run(done: list[_Undo]) -> None:
            _, undo = self._upsert(
                KEYVALUES, name, write_id,
                lambda old: {"key": key, "value": value, "writeId": write_id}, "value",
            )  # fmt: skip
            done.append(undo)

        self._undoable(run)

    def delete_value(self, key: str) -> None:
        check_key(key)
        self._heal()
        path = self._kv_path(key)
        write_id = uuid.uuid4().hex

        def run(done: list[_Undo]) -> None:
            current = self._cached(path) or self._get(path)
            if current is None or current.spec.get("key") != key:
                return
            _, undo = self._remove(path, write_id, current)
            if undo is not None:
                done.append(undo)

        self._undoable(run)
