"""The API server's side of the store: requests, their errors, reads and the cache.

Every HTTP call goes through ``KubeApi._request`` and the ``kubernetes``
client's ApiClient, imported (with urllib3) only when a store is built or
makes a request. It maps failures: an unreachable server or 429/5xx to
``StoreUnavailable``, a write whose answer was lost to ``_Maybe``, 403 and
missing CRDs or namespace to ``StoreError``. ``_client`` loads the kubeconfig
(or the pod's service account).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from typing import Any

from csi_driver.storage.exceptions import StoreError, StoreUnavailable
from csi_driver.storage.persistence.kubernetes.names import GROUP, KIND_NAMES, VERSION, _labels

#: Objects per request when a read lists everything that matches.
_LIST_CHUNK = 500
_OK = (200, 201, 202)
_VERB = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}


class _Obj:
    """The parts of an object the store uses: resourceVersion, uid, name and spec."""

    __slots__ = ("name", "rv", "spec", "uid")

    def __init__(self, raw: dict[str, Any]) -> None:
        meta = raw.get("metadata") or {}
        self.name: str = meta.get("name", "")
        self.rv: str = meta.get("resourceVersion", "")
        self.uid: str = meta.get("uid", "")
        self.spec: dict[str, Any] = raw.get("spec") or {}


def _seq_key(obj: _Obj) -> tuple[int, str]:
    seq = obj.spec.get("seq")
    return (seq if type(seq) is int else 0, obj.name)


class _Maybe(Exception):
    """A write whose answer was lost: it may or may not have been applied."""

    def __init__(self, cause: StoreUnavailable) -> None:
        super().__init__(str(cause))
        self.cause = cause


class KubeApi:
    """Requests to one namespace of the API server, and what this process saw of it.

    The attributes are set by ``KubernetesStore.__init__``.
    """

    namespace: str
    server: str
    timeout: float
    _api: Any
    _base: str
    _lock: threading.Lock
    _cache: OrderedDict[str, _Obj]
    _cache_size: int
    _seen: dict[str, int]
    _unsure: dict[str, int]
    _last_seq: int

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
        if method == "GET":
            return self._send(method, path, query, body, passthrough)
        resource = self._resource_of(path)
        with self._lock:
            deletes_before = self._unsure.get(resource, 0)
        try:
            status, data = self._send(method, path, query, body, passthrough)
        finally:
            if method == "DELETE":
                # A delete answers with a Status, not the resourceVersion it made (nor
                # anything when its answer is lost), so the watch cache cannot be asked
                # for a version that holds it: filtered reads of the kind go to etcd
                # until this process writes an object of the kind again.
                with self._lock:
                    self._unsure[resource] = self._unsure.get(resource, 0) + 1
        if method != "DELETE" and status in _OK:
            with self._lock:
                # Sent after every delete counted then: its version is newer than theirs.
                if self._unsure.get(resource) == deletes_before and deletes_before:
                    del self._unsure[resource]
        return status, data

    def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, Any]] | None,
        body: dict[str, Any] | None,
        passthrough: tuple[int, ...],
    ) -> tuple[int, dict[str, Any]]:
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
                f"kubernetes store: forbidden to {verb} {self._resource_of(path)}."
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

    def _resource_of(self, path: str) -> str:
        """The resource (plural) a path of this store names."""
        return path[len(self._base) :].split("/", 1)[0]

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
        resource = self._resource_of(path)
        with self._lock:
            if rv > self._seen.get(resource, 0):
                self._seen[resource] = rv

    def _list_all(self, resource: str, selector: str) -> list[_Obj]:
        """Every object of ``resource`` the selector matches.

        Read from the API server's watch cache, once it has caught up with the
        newest version of an object of that kind this process wrote or read (right
        after a delete of this process, from etcd: see ``_request``): a
        filtered read then costs what it returns, where a quorum read makes the
        API server read and decode every object of the kind from etcd (unless
        etcd >= 3.5.13 lets it serve consistent lists from the cache itself).
        So a process reads its own writes; a write by another process shows up
        once the watch cache has it (milliseconds later, as every controller
        built on informers sees the cluster).
        """
        with self._lock:
            seen = self._seen.get(resource, 0)
            after_delete = resource in self._unsure
        if not after_delete:
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
        # After a delete of this process (see _request); 504: the cache did not catch
        # up in time; 429: it is still being filled (a new CRD, a restarted API
        # server). Read etcd instead.
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

    # -- object bodies -----------------------------------------------------------
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
