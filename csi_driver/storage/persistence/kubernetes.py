"""A metadata store in Kubernetes custom resources, for controllers run in a cluster.

Selected by ``{'storage': 'kubernetes', 'namespace': NS, 'kubeconfig': PATH}``
(no ``kubeconfig``: the pod's service account). The ``kubernetes`` client is
imported only here, so the other stores do not pay for it. The CRDs are in
``deploy/crds/`` and the RBAC the controller needs in ``deploy/crds/README.md``.

Objects. API group ``metadata.csi-driver.dev``, version ``v1alpha1``, namespaced:
``CsiVolume``, ``CsiSnapshot``, ``CsiConnection`` (one object per record) and
``CsiKeyValue`` (one per key of the key/value pairs, and the name claims below).
The record is ``spec.record``, its exact JSON text; ``spec`` also has typed
copies of what the store filters and ``kubectl get`` prints (``id``,
``backend``, ``volumeId``, ``name``, ``size``, ``status``, ``host``), the
first-stored position ``seq`` and ``writeId``, the id of the store call that
wrote this version. Nothing is kept in annotations.

Object names. An id that is a DNS label (<= 63 of ``[a-z0-9-]``, alphanumeric at
both ends: every UUID) is the object's name, unless it starts with ``h-``;
any other id is named ``h-`` and 40 hex digits of its SHA-256. The real id is
``spec.id``, and every read checks it. Key/value objects are named ``kv-`` and
the hash of the key, name claims ``nc-v-``/``nc-s-`` and the hash of the name.

Labels (``metadata.csi-driver.dev/backend``, ``.../volume``, ``.../name``) make
the API server do the filtering. A value that is a valid label value (and does
not start with ``h.``) is used as is, so ``kubectl get csivolumes -l
metadata.csi-driver.dev/backend=lvm`` works; any other value is ``h.`` and 40
hex digits of its SHA-256. Records are checked against the filter after
listing, so a collision of hashes cannot give a wrong answer.

Order. Results of ``get_*`` come in ``spec.seq`` order: the creation time in
nanoseconds, made strictly increasing within a process and kept when a record is
replaced (a replace is a read-modify-write under ``resourceVersion``). Records
created by different processes are ordered by their hosts' clocks.

Paging. ``list_page`` is keyset paging over object names, which etcd keeps in
order: the store's token holds the last object name, and the next page is a
``limit``-ed list with a continue token the store builds to start just after
that name at the newest resource version (the form of continue token the API
server itself hands out when an old one has expired: ``rv`` -1). Each page is
therefore fresh, costs O(page) in what crosses the wire, and a record present
throughout is listed once. Pages are in id order for ids that are object names
(every id the library makes); ids named by their hash come in hash order.
Filters are label selectors, applied by the API server as it reads.

Reads. ``get_*`` by id is a GET of one object (a quorum read). Filtered reads
(and ``get_values``, ``connections_of``) are label-selected lists served from
the API server's watch cache once it holds the newest version of an object of
that kind this process wrote or read: each process reads its own writes, and
another process's writes show up once the watch cache has them (milliseconds; a
controller built on informers sees the cluster the same way). A quorum list
would make the API server read and decode every object of the kind from etcd
(1.5 s at 10 000 volumes with etcd 3.4; etcd >= 3.5.13 lets it use the cache).
While the cache is being filled (new CRD, restarted API server) reads go to etcd.

Writes. A record write is a create (``POST``), or a replace (``PUT``) with the
``resourceVersion`` of the version read; on 409 the store re-reads and tries
again, at most ``conflict_retries`` times, then raises ``StoreError``. The last
version this process wrote or read of an object is cached, so a replace is
usually one request. Each call writes its own ``writeId``: when the answer to a
write is lost (a connection cut after the request left, a timeout, a 5xx), the
store reads the object back, and the ``writeId`` says whether it was applied.

Atomicity. Kubernetes has no transaction over several objects. ``write`` stores
its records one at a time (validated first, duplicates merged); when one fails,
the records it already changed are put back as they were (deleted if new),
each only if it still carries this call's ``writeId``. When the server is
unreachable, the undo waits in the store and runs at its next call that reaches
the server, before anything else; until then other readers can see the
half-applied batch. A process that dies with undo pending, or in the middle of a
batch, leaves the batch half-applied (the library's one two-record write, at the
end of connect, then leaves the connection ``connecting``, which its recovery
finishes or undoes). A single-record write (most of them) is one
object write and is all-or-nothing. ``delete`` of a record whose deletion is in
doubt is undone the same way (the record is re-created, position kept).

Unique names. ``create_unique`` takes a claim: a ``CsiKeyValue`` named from the
(kind, name) hash, created with ``POST`` (the API server's 409 makes one creator
win), holding the winner's id. The winner then creates the record and marks the
claim bound (``PUT`` with the claim's resourceVersion). A loser reads the claim:
bound to a record that holds the name, it raises ``NameInUse`` with that id.
A claim that stays unbound and unchanged for ``claim_timeout`` seconds (its
creator died between the two writes) or that is bound to a record that is gone
or renamed is deleted (precondition: its resourceVersion) and the loser starts
again; a winner whose claim was so taken over deletes its record and starts
again, so one record remains. Records written with ``write`` that hold the
name count too (a list by the name label comes first; such a record written by
another process in the last milliseconds can be missed, see Reads: names stay
unique among ``create_unique`` callers whatever the timing). Deleting or
renaming a record releases its claim.

Errors. An unreachable server (refused connection, timeout after ``timeout``
seconds, 429, 5xx) raises ``StoreUnavailable``; the client makes no retries of
its own. A 403 raises ``StoreError`` naming the verb and resource the Role
lacks; missing CRDs or namespace raise ``StoreError`` saying so. Record contents
are never logged: connection records can hold CHAP secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import random
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from csi_driver.storage.exceptions import (
    BadPageToken,
    InvalidArgument,
    NameInUse,
    StoreError,
    StoreUnavailable,
)
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
    check_page_request,
    check_unique_create,
    check_value,
    decode_records,
    encode_record,
    issue_token,
    read_token,
)

LOG = logging.getLogger(__name__)

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
#: Record ids per label selector of ``connections_of`` (keeps the URL short).
_SELECTOR_CHUNK = 50
#: Objects per request when a read lists everything that matches.
_LIST_CHUNK = 500
_OK = (200, 201, 202)


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


@dataclass
class _Undo:
    """How to put one object back the way it was before a call of this store.

    Applied only while the object still carries one of ``write_ids`` (or, for a
    delete, while it is still absent): what others wrote since is left alone.
    """

    path: str
    write_ids: frozenset[str]
    #: The object's spec before the call; None: it did not exist.
    before: dict[str, Any] | None
    #: The call deleted the object (else it created or replaced it).
    deleted: bool = False


class _Maybe(Exception):
    """A write whose answer was lost: it may or may not have been applied."""

    def __init__(self, cause: StoreUnavailable) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _InDoubt(StoreUnavailable):
    """StoreUnavailable for a call that may have changed objects; ``undos`` put them back."""

    def __init__(self, message: str, undos: list[_Undo]) -> None:
        super().__init__(message)
        self.undos = undos


class _Obj:
    """The parts of an object the store uses: resourceVersion, uid, name and spec."""

    __slots__ = ("name", "rv", "spec", "uid")

    def __init__(self, raw: dict[str, Any]) -> None:
        meta = raw.get("metadata") or {}
        self.name: str = meta.get("name", "")
        self.rv: str = meta.get("resourceVersion", "")
        self.uid: str = meta.get("uid", "")
        self.spec: dict[str, Any] = raw.get("spec") or {}


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


def _seq_key(obj: _Obj) -> tuple[int, str]:
    seq = obj.spec.get("seq")
    return (seq if type(seq) is int else 0, obj.name)


class KubernetesStore(MetadataStore):
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
        self._pending: list[_Undo] = []
        self._heal_lock = threading.Lock()
        self._object_locks = [threading.Lock() for _ in range(64)]

    def __repr__(self) -> str:
        return f"<KubernetesStore {self.server} namespace={self.namespace}>"

    def close(self) -> None:
        self._api.close()

    # -- HTTP ------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: dict[str, Any] | None = None,
        passthrough: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any]]:
        """One request; (status, parsed body) for a 2xx, 404, 409, 410 or ``passthrough``.

        Raises StoreUnavailable when the server cannot be reached, or ``_Maybe``
        when a write's answer was lost; StoreError for the other refusals.
        """
        import urllib3
        from kubernetes.client.exceptions import ApiException

        writing = method != "GET"
        try:
            params = self._api.param_serialize(
                method=method,
                resource_path=path,
                query_params=query,
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*params, _request_timeout=self.timeout)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, OSError, ApiException) as exc:
            cause: BaseException = exc
            if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
                cause = exc.reason
            unavailable = StoreUnavailable(
                f"kubernetes store: API server {self.server} unreachable "
                f"({method} {self._describe(path)}): {type(cause).__name__}: {cause}"
            )
            # A connection that was never made carried no request.
            unsent = isinstance(
                cause, urllib3.exceptions.ConnectTimeoutError | ConnectionRefusedError
            )
            if writing and not unsent:
                raise _Maybe(unavailable) from exc
            raise unavailable from exc
        status = response.status
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw[:200].decode("utf-8", "replace")}
        if status in _OK and isinstance(data, dict) and data.get("kind") in KIND_NAMES.values():
            self._saw(path, data)
        if status in _OK or status in (404, 409, 410) or status in passthrough:
            if status == 404 and _missing_type(data, path, self._base):
                raise StoreError(
                    f"kubernetes store: {self._describe(path)} does not exist on {self.server}: "
                    f"{data.get('message', '')}; apply deploy/crds/ and create namespace "
                    f"{self.namespace}"
                )
            return status, data
        message = data.get("message", "") if isinstance(data, dict) else ""
        if status == 429 or status >= 500:
            unavailable = StoreUnavailable(
                f"kubernetes store: API server {self.server} unavailable ({status}): {message}"
            )
            if writing and status >= 500:
                raise _Maybe(unavailable)
            raise unavailable
        if status == 403:
            verb = _VERB[method] if method != "GET" or "/" in path[len(self._base) :] else "list"
            raise StoreError(
                f"kubernetes store: forbidden to {verb} {path[len(self._base) :].split('/')[0]}."
                f"{GROUP} in namespace {self.namespace}: the controller's Role needs verb "
                f"{verb!r} on that resource (see deploy/crds/README.md): {message}"
            )
        raise StoreError(f"kubernetes store: {method} {self._describe(path)} failed ({status}): "
                         f"{message}")  # fmt: skip

    def _describe(self, path: str) -> str:
        rest = path[len(self._base) :] if path.startswith(self._base) else path
        resource, _, name = rest.partition("/")
        kind = KIND_NAMES.get(resource, resource)
        return f"{kind} {name} in namespace {self.namespace}" if name else f"{kind} list"

    def _path(self, resource: str, name: str = "") -> str:
        return self._base + resource + ("/" + name if name else "")

    def _get(self, path: str) -> _Obj | None:
        status, data = self._request("GET", path)
        if status == 404:
            self._forget(path)
            return None
        obj = _Obj(data)
        self._remember(path, obj)
        return obj

    def _list(
        self, resource: str, selector: str, *, limit: int, continue_: str | None
    ) -> tuple[list[_Obj], str]:
        query: list[tuple[str, Any]] = [("limit", limit)]
        if selector:
            query.append(("labelSelector", selector))
        if continue_:
            query.append(("continue", continue_))
        status, data = self._request("GET", self._path(resource), query=query)
        if status == 410:
            # An expired continuation: the server offers one at its newest version.
            token = (data.get("metadata") or {}).get("continue") or ""
            if not token:
                raise StoreError(f"kubernetes store: listing {resource} expired: "
                                 f"{data.get('message', '')}")  # fmt: skip
            return [], token
        if status == 404:
            return [], ""
        items = [_Obj(item) for item in data.get("items") or ()]
        return items, (data.get("metadata") or {}).get("continue") or ""

    def _saw(self, path: str, obj: dict[str, Any]) -> None:
        """Note the resourceVersion of an object this process read or wrote."""
        try:
            rv = int((obj.get("metadata") or {}).get("resourceVersion") or 0)
        except (TypeError, ValueError):
            return
        resource = path[len(self._base) :].split("/", 1)[0]
        with self._lock:
            if rv > self._seen.get(resource, 0):
                self._seen[resource] = rv

    def _list_all(self, resource: str, selector: str) -> list[_Obj]:
        """Every object of ``resource`` the selector matches.

        Read from the API server's watch cache, once it has caught up with the
        newest version of an object of that kind this process wrote or read: a
        filtered read then costs what it returns, where a quorum read makes the
        API server read and decode every object of the kind from etcd (unless
        etcd >= 3.5.13 lets it serve consistent lists from the cache itself).
        So a process reads its own writes; a write by another process shows up
        once the watch cache has it (milliseconds later, as every controller
        built on informers sees the cluster).
        """
        with self._lock:
            seen = self._seen.get(resource, 0)
        query: list[tuple[str, Any]] = [
            ("resourceVersion", str(seen)),
            ("resourceVersionMatch", "NotOlderThan"),
        ]
        if selector:
            query.append(("labelSelector", selector))
        status, data = self._request(
            "GET", self._path(resource), query=query, passthrough=(429, 504)
        )
        if status == 200:
            return [_Obj(item) for item in data.get("items") or ()]
        # 504: the cache did not catch up in time; 429: it is still being filled
        # (a new CRD, a restarted API server). Read etcd instead.
        found: list[_Obj] = []
        token: str | None = None
        while True:
            items, token = self._list(resource, selector, limit=_LIST_CHUNK, continue_=token)
            found.extend(items)
            if not token:
                return found

    # -- cache -----------------------------------------------------------------
    def _remember(self, path: str, obj: _Obj) -> None:
        with self._lock:
            self._cache[path] = obj
            self._cache.move_to_end(path)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _forget(self, path: str) -> None:
        with self._lock:
            self._cache.pop(path, None)

    def _cached(self, path: str) -> _Obj | None:
        with self._lock:
            return self._cache.get(path)

    def _next_seq(self) -> int:
        with self._lock:
            self._last_seq = max(time.time_ns(), self._last_seq + 1)
            return self._last_seq

    # -- writing one object ------------------------------------------------------
    def _body(self, resource: str, name: str, spec: dict[str, Any], rv: str = "",
              role: str | None = None) -> dict[str, Any]:  # fmt: skip
        metadata: dict[str, Any] = {"name": name, "labels": _labels(resource, spec, role)}
        if rv:
            metadata["resourceVersion"] = rv
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND_NAMES[resource],
            "metadata": metadata,
            "spec": spec,
        }

    def _settle(self, path: str, write_id: str, maybe: _Maybe, undo: _Undo) -> _Obj | None:
        """After a write whose answer was lost: the object if the write was applied,
        else None (the caller tries again). Unreachable: ``_InDoubt``."""
        try:
            obj = self._get(path)
        except StoreUnavailable as exc:
            raise _InDoubt(str(maybe.cause), [undo]) from exc
        if obj is not None and obj.spec.get("writeId") == write_id:
            return obj
        return None

    def _upsert(
        self,
        resource: str,
        name: str,
        write_id: str,
        make_spec: Callable[[dict[str, Any] | None], dict[str, Any]],
        role: str | None = None,
    ) -> tuple[_Obj, _Undo]:
        """Create or replace one object; its new version and how to undo the write.

        ``make_spec(old_spec)`` builds the new spec (old_spec None: a create).
        """
        path = self._path(resource, name)
        # Threads of this process take turns on an object rather than race for it;
        # other processes race, and lose to a 409.
        with self._object_locks[hash(path) % len(self._object_locks)]:
            return self._upsert_locked(path, resource, name, write_id, make_spec, role)

    def _upsert_locked(
        self,
        path: str,
        resource: str,
        name: str,
        write_id: str,
        make_spec: Callable[[dict[str, Any] | None], dict[str, Any]],
        role: str | None,
    ) -> tuple[_Obj, _Undo]:
        current = self._cached(path)
        lost: _Maybe | None = None
        for attempt in range(self.conflict_retries + 1):
            before = None if current is None else current.spec
            undo = _Undo(path, frozenset({write_id}), before)
            spec = make_spec(before)
            try:
                if current is None:
                    status, data = self._request(
                        "POST",
                        self._path(resource),
                        body=self._body(resource, name, spec, "", role),
                    )
                else:
                    status, data = self._request(
                        "PUT", path, body=self._body(resource, name, spec, current.rv, role)
                    )
            except _Maybe as maybe:
                applied = self._settle(path, write_id, maybe, undo)
                if applied is not None:
                    return applied, undo
                current, lost = self._cached(path), maybe
                continue
            lost = None
            if status in _OK:
                obj = _Obj(data)
                self._remember(path, obj)
                return obj, undo
            # 409 (exists, or another version) or 404 (deleted meanwhile): read again.
            if attempt:  # back off, with jitter, from whoever else writes it
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # noqa: S311
            current = self._get(path)
        if lost is not None:  # the server kept failing (5xx): not applied, it said
            raise lost.cause
        raise StoreError(
            f"kubernetes store: {self._describe(path)} kept changing: gave up after "
            f"{self.conflict_retries} resourceVersion conflicts"
        )

    def _create(
        self, resource: str, name: str, spec: dict[str, Any], write_id: str, role: str | None = None
    ) -> _Obj | None:
        """Create one object: its first version, or None when the name is taken."""
        path = self._path(resource, name)
        undo = _Undo(path, frozenset({write_id}), None)
        for _ in range(self.conflict_retries + 1):
            try:
                status, data = self._request(
                    "POST", self._path(resource), body=self._body(resource, name, spec, "", role)
                )
            except _Maybe as maybe:
                try:
                    obj = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), [undo]) from exc
                if obj is None:
                    continue  # not applied: again
                return obj if obj.spec.get("writeId") == write_id else None
            if status in _OK:
                obj = _Obj(data)
                self._remember(path, obj)
                return obj
            return None
        raise StoreUnavailable(f"kubernetes store: could not create {self._describe(path)}")

    def _remove(
        self, path: str, write_id: str, current: _Obj | None = None, exact: bool = False
    ) -> tuple[_Obj | None, _Undo | None]:
        """Delete one object (if there); the deleted version and how to undo it.

        ``exact``: delete only the version ``current`` (else whatever is there).
        """
        if current is None:
            current = self._cached(path) or self._get(path)
        for _ in range(self.conflict_retries + 1):
            if current is None:
                return None, None
            undo = _Undo(path, frozenset({write_id}), current.spec, deleted=True)
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": current.rv},
            }
            try:
                status, _ = self._request("DELETE", path, body=body)
            except _Maybe as maybe:
                try:
                    now = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), [undo]) from exc
                if now is None:
                    return current, undo
                if exact and now.rv != current.rv:
                    return None, None
                current = now
                continue
            if status in _OK:
                self._forget(path)
                return current, undo
            if status == 404:
                self._forget(path)
                return None, None
            if exact:
                self._forget(path)
                return None, None  # 409: it changed, and that version is not ours to delete
            current = self._get(path)  # 409: another version; delete that one
        raise StoreError(
            f"kubernetes store: {self._describe(path)} kept changing: gave up deleting after "
            f"{self.conflict_retries} resourceVersion conflicts"
        )

    # -- undo ------------------------------------------------------------------
    def _undo_one(self, undo: _Undo) -> None:
        resource, name = undo.path[len(self._base) :].split("/", 1)
        for _ in range(self.conflict_retries + 1):
            current = self._get(undo.path)
            if undo.deleted:
                if current is not None or undo.before is None:
                    return  # the delete was not applied, or the name was taken again
                spec = undo.before
                status, data = self._request(
                    "POST", self._path(resource), body=self._body(resource, name, spec, "",
                                                                  _role_of(resource, spec))
                )  # fmt: skip
            else:
                if current is None or current.spec.get("writeId") not in undo.write_ids:
                    return  # not applied, or changed since by someone else: leave it
                if undo.before is None:
                    body = {"apiVersion": "v1", "kind": "DeleteOptions",
                            "preconditions": {"resourceVersion": current.rv}}  # fmt: skip
                    status, data = self._request("DELETE", undo.path, body=body)
                    if status == 404 or status in _OK:
                        self._forget(undo.path)
                        return
                    continue
                spec = undo.before
                status, data = self._request(
                    "PUT", undo.path, body=self._body(resource, name, spec, current.rv,
                                                      _role_of(resource, spec))
                )  # fmt: skip
            if status in _OK:
                self._remember(undo.path, _Obj(data))
                return
            if undo.deleted and status == 409:
                return  # re-created meanwhile by someone else
        LOG.warning("kubernetes store: could not undo a write of %s: it kept changing",
                    self._describe(undo.path))  # fmt: skip

    def _heal(self) -> None:
        """Run the undo left by calls that failed while the server was unreachable.

        Raises StoreUnavailable while it still is: the caller's call then fails
        without doing anything.
        """
        if not self._pending:
            return
        with self._heal_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    undo = self._pending[-1]
                try:
                    self._undo_one(undo)
                except _Maybe as maybe:
                    raise maybe.cause from None
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    LOG.warning("kubernetes store: dropped the undo of a write of %s: %s",
                                self._describe(undo.path), exc)  # fmt: skip
                with self._lock:
                    if self._pending and self._pending[-1] is undo:
                        self._pending.pop()

    def _undo(self, undos: list[_Undo]) -> None:
        """Queue the undo of a failed call and run it now if the server answers."""
        if not undos:
            return
        with self._lock:
            self._pending.extend(undos)
        try:
            self._heal()
        except StoreError as exc:
            LOG.warning("kubernetes store: a failed write is undone later, when the API "
                        "server answers again: %s", exc)  # fmt: skip

    def _undoable(self, call: Callable[[list[_Undo]], Any]) -> Any:
        """Run ``call(done)``: it appends an undo per object written; a failure undoes them."""
        done: list[_Undo] = []
        try:
            return call(done)
        except _InDoubt as exc:
            self._undo([*done, *exc.undos])
            raise StoreUnavailable(str(exc)) from None
        except _Maybe as maybe:  # a lost answer of an undo-free request
            self._undo(done)
            raise maybe.cause from None
        except BaseException:
            self._undo(done)
            raise

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

    def get_volumes(
        self,
        *,
        volume_id: str | None = None,
        backend: str | None = None,
        name: str | None = None,
    ) -> list[Record]:
        return self._select(VOLUME, volume_id, {"backend": backend, "name": name})

    def get_snapshots(
        self,
        *,
        snapshot_id: str | None = None,
        backend: str | None = None,
        volume_id: str | None = None,
        name: str | None = None,
    ) -> list[Record]:
        filters = {"backend": backend, "volume_id": volume_id, "name": name}
        return self._select(SNAPSHOT, snapshot_id, filters)

    def get_connections(
        self,
        *,
        connection_id: str | None = None,
        backend: str | None = None,
        volume_id: str | None = None,
    ) -> list[Record]:
        return self._select(CONNECTION, connection_id, {"backend": backend, "volume_id": volume_id})

    def list_page(
        self,
        kind: str,
        *,
        limit: int,
        token: str = "",
        backend: str | None = None,
        volume_id: str | None = None,
    ) -> Page:
        filters = {"backend": backend, "volume_id": volume_id}
        check_page_request(kind, limit, token, filters)
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

    def connections_of(self, volume_ids: Sequence[str]) -> list[Record]:
        wanted = list(dict.fromkeys(volume_ids))
        for volume_id in wanted:
            check_filters(volume_id=volume_id)
        if not wanted:
            return []
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
    ) -> None:
        # Validate everything before the first request; a record given twice is
        # written once, with its last content, at its first place.
        batch: dict[tuple[str, str], tuple[Record, str]] = {}
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            for record in records:
                text = encode_record(kind, record)
                batch[(kind, record["id"])] = (record, text)
        if not batch:
            return
        self._heal()
        write_id = uuid.uuid4().hex
        renamed: list[tuple[str, str, str]] = []

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
                    renamed.append((kind, old_name, record_id))

        self._undoable(run)
        for kind, old_name, record_id in renamed:
            self._release_claim(kind, old_name, record_id)

    def delete(self, kind: str, record_id: str) -> None:
        check_kind(kind)
        check_filters(id=record_id)
        self._heal()
        write_id = uuid.uuid4().hex
        path = self._path(RESOURCES[kind], object_name(record_id))

        def run(done: list[_Undo]) -> _Obj | None:
            current = self._cached(path) or self._get(path)
            if current is not None and current.spec.get("id") != record_id:
                return None  # another id with the same hash: not this record
            deleted, undo = self._remove(path, write_id, current)
            if undo is not None:
                done.append(undo)
            return deleted

        deleted = self._undoable(run)
        if (
            deleted is not None
            and kind in NAMED_KINDS
            and isinstance(deleted.spec.get("name"), str)
        ):
            self._release_claim(kind, deleted.spec["name"], record_id)

    # -- unique names ------------------------------------------------------------
    def _claim_path(self, kind: str, name: str) -> str:
        return self._path(KEYVALUES, _CLAIM_PREFIX[kind] + _digest(name))

    @staticmethod
    def _claim_info(obj: _Obj) -> dict[str, Any]:
        try:
            info = json.loads(obj.spec.get("value", ""))
        except ValueError:
            info = None
        return info if isinstance(info, dict) else {}

    def _holder(self, kind: str, name: str) -> str | None:
        """The id of the first-stored record of ``kind`` named ``name``, if any."""
        objs = self._list_all(RESOURCES[kind], _selector({"name": name}))
        objs = sorted((o for o in objs if o.spec.get("name") == name), key=_seq_key)
        return objs[0].spec.get("id") if objs else None

    def _release_claim(self, kind: str, name: str, record_id: str) -> None:
        """Delete the claim on ``name`` if ``record_id`` holds it. Best effort: a claim
        left behind is found stale by the next unique create of that name."""
        path = self._claim_path(kind, name)
        try:
            claim = self._get(path)
            if claim is not None and self._claim_info(claim).get("id") == record_id:
                self._remove(path, uuid.uuid4().hex, claim, exact=True)
        except (StoreError, _Maybe) as exc:
            LOG.warning("kubernetes store: could not release the claim of a %s name: %s",
                        kind, exc)  # fmt: skip

    def _wait_for_claim(self, kind: str, name: str, path: str) -> str | None:
        """Another caller's claim holds ``name``: the id it names once bound (the
        caller raises NameInUse with it), or None when the claim was stale and is
        gone (the caller tries again)."""
        stale_after = time.monotonic() + self.claim_timeout
        last_rv = None
        delay = 0.005
        while True:
            claim = self._get(path)
            if claim is None:
                return None
            info = self._claim_info(claim)
            holder = info.get("id")
            if info.get("bound") and isinstance(holder, str):
                record = self._get(self._path(RESOURCES[kind], object_name(holder)))
                if (
                    record is not None
                    and record.spec.get("id") == holder
                    and record.spec.get("name") == name
                ):
                    return holder
                stale = True  # bound to a record that is gone or renamed
            else:
                if claim.rv != last_rv:
                    last_rv = claim.rv
                    stale_after = time.monotonic() + self.claim_timeout
                stale = time.monotonic() >= stale_after
            if stale:
                LOG.warning("kubernetes store: removing a stale claim on a %s name (held for "
                            "%s)", kind, holder)  # fmt: skip
                self._remove(path, uuid.uuid4().hex, claim, exact=True)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _bind(self, claim: _Obj, spec: dict[str, Any], write_id: str) -> bool:
        """Mark our claim bound: False when it was taken over (deleted as stale)."""
        path = self._path(KEYVALUES, claim.name)
        current = claim
        for _ in range(self.conflict_retries + 1):
            body = self._body(KEYVALUES, claim.name, spec, current.rv, "name-claim")
            try:
                status, data = self._request("PUT", path, body=body)
            except _Maybe as maybe:
                try:
                    now = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), []) from exc
                if now is None or now.spec.get("writeId") != write_id:
                    return False
                if self._claim_info(now).get("bound"):
                    return True
                current = now
                continue
            if status in _OK:
                self._remember(path, _Obj(data))
                return True
            return False  # 404 or 409: deleted (and maybe claimed again) by another
        raise StoreUnavailable(f"kubernetes store: could not bind {self._describe(path)}")

    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        record_id = record["id"]
        self._heal()
        resource = RESOURCES[kind]
        claim_path = self._claim_path(kind, name)
        claim_name = claim_path.rsplit("/", 1)[1]
        record_name = object_name(record_id)
        write_id = uuid.uuid4().hex

        def claim_spec(bound: bool) -> dict[str, Any]:
            value = json.dumps({"id": record_id, "bound": bound}, separators=(",", ":"))
            return {"key": f"name-claim/{kind}/{name}", "value": value, "writeId": write_id}

        def attempt(done: list[_Undo]) -> str | None:
            """One round: "" once the record is stored, the id of the record that holds
            the name, or None when the round must run again."""
            holder = self._holder(kind, name)
            if holder is not None:
                return holder
            claim = self._create(KEYVALUES, claim_name, claim_spec(False), write_id, "name-claim")
            if claim is None:
                return self._wait_for_claim(kind, name, claim_path)
            done.append(_Undo(claim_path, frozenset({write_id}), None))
            spec = _record_spec(kind, record, text, self._next_seq(), write_id)
            if self._create(resource, record_name, spec, write_id) is None:
                raise InvalidArgument(f"a {kind} with id {record_id!r} already exists")
            done.append(_Undo(self._path(resource, record_name), frozenset({write_id}), None))
            if self._bind(claim, claim_spec(True), write_id):
                done.clear()
                return ""
            # Our claim was taken over as stale while we were slow: take our record
            # back, and start again.
            undos = done[:]
            done.clear()
            self._undo(undos)
            return None

        for _ in range(self.conflict_retries + 1):
            outcome = self._undoable(attempt)
            if outcome == "":
                return
            if outcome is not None:
                raise NameInUse(kind, name, outcome)
        raise StoreError(f"kubernetes store: could not settle who holds {kind} name {name!r}")

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


_VERB = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


def _role_of(resource: str, spec: dict[str, Any]) -> str | None:
    if resource != KEYVALUES:
        return None
    return "name-claim" if str(spec.get("key", "")).startswith("name-claim/") else "value"


def _missing_type(data: dict[str, Any], path: str, base: str) -> bool:
    """A 404 that means the CRD or the namespace is missing, not the object."""
    details = data.get("details") if isinstance(data, dict) else None
    if not isinstance(details, dict) or not details.get("name"):
        return True  # "the server could not find the requested resource"
    return details.get("kind") == "namespaces"


def _client(kubeconfig: str | None, context: str | None) -> tuple[Any, str]:
    """An ApiClient for the kubeconfig (or the pod's service account), and its server."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    try:
        if kubeconfig is None:
            config.load_incluster_config(client_configuration=configuration)
        else:
            config.load_kube_config(
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "the pod's service account"
        raise StoreError(f"kubernetes store: cannot load {where}: {exc}") from exc
    configuration.retries = False  # the store decides what to retry
    configuration.connection_pool_maxsize = 32
    return client.ApiClient(configuration), configuration.host
