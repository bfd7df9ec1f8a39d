"""A metadata store on an etcd v3 cluster, shared by every replica of the plugin.

Selected by ``persistence_config={'storage': 'etcd', 'endpoints': [...],
'prefix': '/csi-driver/', 'timeout': 5, 'user': ..., 'password': ...,
'ca_cert': ..., 'cert_cert': ..., 'cert_key': ...}``.

Client: the gRPC stubs and protobuf messages of ``cslab-etcd3`` (``etcd3.etcdrpc``;
the original ``etcd3`` 0.12 does not import with current protobuf). Its client
class is not used: it locks a failed endpoint out for 300 s, never renews an
expired auth token and cannot put a revision, limit or sort on the reads of a
transaction. This module builds the requests itself and keeps one gRPC channel
per endpoint.

Key layout under the prefix P (``/csi-driver/`` by default; every key the store
touches starts with it, so stores with different prefixes never see each other):

- ``P{kind}/rec/{id}``: the record, as ``b"{pos}\\n"`` + its JSON text;
- ``P{kind}/by-backend/{backend}/{id}``, ``P{kind}/by-volume/{volume_id}/{id}``
  (snapshots, connections) and ``P{kind}/by-name/{name}/{id}`` (volumes and
  snapshots whose name is not None): index keys with an empty value, present
  exactly while the record holds that value;
- ``Pkv/{key}``: the key/value pairs; ``Pmeta/layout``: the layout version (1).

``{kind}`` is ``volume``, ``snapshot`` or ``connection``. Ids, names, backends
and keys are arbitrary strings (``/``, NUL, lone surrogates): they are written
as UTF-8 (surrogatepass) with ``.`` escaped as ``.2E`` and ``/`` as ``.2F``.
So no escaped value holds a ``/`` (``by-backend/a/`` never matches backend
``a/b``), decoding is unambiguous, and the escape keeps order: ``.`` and ``/``
are the adjacent code points 0x2E and 0x2F and both escapes start with ``.``,
so for any strings a < b (Python's code point order, which UTF-8 byte order
equals) the escaped bytes compare the same way. ``list_page`` can therefore
page in id order by ranging over keys: records ``P{kind}/rec/`` (or an index
prefix) from just after the last id, ``limit`` keys, which etcd answers without
reading the rest of the range.

Order of ``get_*`` results ("first stored", replacing keeps the place): etcd
keeps a key's ``create_revision`` across puts and gives a new one after a
delete. Keys created in one transaction share a revision, so ``{pos}`` (the
record's place in the write that created it, kept on replace) breaks the tie:
results are sorted by (create_revision, pos, key). A filtered read uses one
index (name, else volume, else backend) and checks the other filters on the
records.

Writes are etcd transactions, one per call, so a failed call (including a lost
server) leaves nothing half-written:

- ``write``/``delete`` compare each record key's ``mod_revision`` with what the
  store last saw of it (0: absent) and, in the same transaction, put the
  records, delete the index keys of values that changed and put the new ones
  (all of them in a grouped write, see below).
  When a compare fails, the failure branch returns the current records and
  the transaction is built again from them (bounded retries): a concurrent
  writer can never make the store drop or leave a stale index key. The last
  seen revision of recently written or read records is cached, so an update
  usually takes one round trip.
- ``create_unique`` compares ``version == 0`` over the whole range
  ``P{kind}/by-name/{name}/`` (no record holds the name, however it was
  written) and over the record key, and creates the record with its index
  keys in the same transaction; the failure branch names the holder.

Limits of the etcd server apply to one call: a transaction holds at most
``--max-txn-ops`` operations (128 by default; give the server's value as the
store option ``max_txn_ops`` if it differs) and a request at most
``--max-request-bytes`` (1.5 MiB). A record costs 2 to 4 operations (record,
backend, volume and name index keys), a replaced one whose indexed values
changed up to 7. A write too big for one flat transaction is cut into nested
transactions (etcd checks the limit per level): up to ``max_txn_ops/4`` groups
of adjacent keys of one kind, each a nested transaction of up to 3/4 of
``max_txn_ops`` operations under one compare of its key range ("nothing in it
changed since the revision the batch was read at"). That is still one
transaction, applied at one revision: several hundred records per ``write()``
with the defaults. Past the limits a write fails with ``StoreError`` naming
the flag, having written nothing.

Multi-key reads (a filtered ``get_*``, a filtered page, ``connections_of``) read
the index and then the records at the same revision, so they see one
consistent state. Every write leaves a revision behind: run etcd with
``--auto-compaction-retention`` (e.g. ``1h``) or its database grows until the
space quota stops all writes.

Connections: the endpoints are tried in order, a failing one makes the next one
current. A request that reaches no endpoint is retried for ``timeout`` seconds,
then fails with ``StoreUnavailable``, nothing applied. A write whose request may
have reached the server before the connection broke (etcd stopped while it was
applying it: etcd applies such a committed write when it starts again) is sent
again until the server answers, for up to 60 s: the transaction's compare makes
the resend safe, and its answer is the truth (a resend finds the first copy
applied and succeeds). Only past those 60 s does ``StoreUnavailable`` say the
outcome is unknown. With ``user`` and
``password`` the store authenticates and renews an expired token. Neither the
password nor record contents (CHAP secrets) are ever logged or put in an
error.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import grpc

from csi_driver.storage.exceptions import InvalidArgument, NameInUse, StoreError, StoreUnavailable
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
    check_page_request,
    check_unique_create,
    check_value,
    decode_records,
    encode_record,
    issue_token,
    read_token,
)

try:
    from etcd3 import etcdrpc as rpc
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(f"the etcd metadata store needs the cslab-etcd3 package: {exc}") from exc

LOG = logging.getLogger(__name__)

LAYOUT_VERSION = b"1"
#: Filter fields with an index, per kind, in the order a lookup prefers them.
_INDEXED: dict[str, tuple[str, ...]] = {
    VOLUME: ("name", "backend"),
    SNAPSHOT: ("name", "volume_id", "backend"),
    CONNECTION: ("volume_id", "backend"),
}
_INDEX_PART = {"backend": b"by-backend/", "volume_id": b"by-volume/", "name": b"by-name/"}
#: Keys per range request of a bulk read.
_RANGE_CHUNK = 1000
#: A filtered read that finds more index keys than this reads all records instead.
_SCAN_INSTEAD = 2000
#: Transactions tried by one write before it gives up on a record that keeps changing.
_CAS_ATTEMPTS = 64
#: Record states remembered for the compare of the next write.
_CACHE_SIZE = 4096
#: How long a write that may have reached a server that went away is sent again.
_RESOLVE_SECONDS = 60
_READ_RETRIES = 5  # a read pinned to a revision that got compacted starts again
_NOT_SENT = ("failed to connect", "connection refused", "dns resolution failed",
             "name resolution", "no route to host")  # fmt: skip
#: gRPC's words for a TLS failure: wrong CA or certificate, not a server away.
_TLS_FAILED = ("handshake", "ssl", "tsi_", "certificate")
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_http_proxy", 0),
    # Reconnect soon after a restart of the server (gRPC's default backoff reaches 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# -- keys ----------------------------------------------------------------------------------
def escape(value: str) -> bytes:
    """A key component for ``value``: no ``/``, order kept, decodable (see module doc)."""
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


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (ends in ``/``)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _after(key: bytes) -> bytes:
    """The smallest key greater than ``key``."""
    return key + b"\x00"


class _Keys:
    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.meta = prefix + b"meta/layout"
        self.kv = prefix + b"kv/"
        self.rec = {kind: prefix + kind.encode() + b"/rec/" for kind in KINDS}
        self.index = {
            kind: {field: prefix + kind.encode() + b"/" + _INDEX_PART[field] for field in fields}
            for kind, fields in _INDEXED.items()
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


def _fields(kind: str, record: Record) -> dict[str, str | None]:
    """The indexed fields of a record (``encode_record`` checked their types)."""
    return {field: record.get(field) for field in _INDEXED[kind]}


# -- requests ------------------------------------------------------------------------------
def _range_request(
    key: bytes,
    end: bytes = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
) -> Any:
    return rpc.RangeRequest(
        key=key, range_end=end, limit=limit, revision=revision, keys_only=keys_only
    )


def _get(key: bytes, end: bytes = b"", **options: Any) -> Any:
    return rpc.RequestOp(request_range=_range_request(key, end, **options))


def _put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def _nested(ops: list[Any]) -> Any:
    """A transaction inside a transaction: applied with it, at the same revision."""
    return rpc.RequestOp(request_txn=rpc.TxnRequest(success=ops))


def _delete(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def _mod_is(key: bytes, revision: int) -> Any:
    """Compare: the key was last changed at ``revision`` (0: the key is absent)."""
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def _absent(key: bytes, end: bytes = b"") -> Any:
    """Compare: no key in [key, end) exists (just ``key`` without ``end``)."""
    return rpc.Compare(
        key=key, range_end=end, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
    )


def _backoff(attempt: int) -> None:
    """Pause before compare-and-swap attempt ``attempt + 1``: none for the first few (the
    failed one brought the fresh state), then a growing random one against a crowd."""
    if attempt >= 3:
        time.sleep(random.uniform(0, min(0.1, 0.001 * 2**attempt)))  # noqa: S311


class _Stored(NamedTuple):
    """What a write must know of a stored record: its revision, place and index values."""

    mod_revision: int
    pos: int
    fields: dict[str, str | None]


class _Change(NamedTuple):
    """One record to put (``text`` set: its JSON) or delete (``text`` None)."""

    kind: str
    record_id: str
    key: bytes
    text: str | None
    fields: dict[str, str | None]


class _Compacted(Exception):
    """A read pinned to a revision that etcd compacted meanwhile: read again."""


class _Endpoint:
    def __init__(self, url: str, target: str, credentials: Any) -> None:
        self.url = url
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self.stubs = {"KV": rpc.KVStub(self.channel), "Auth": rpc.AuthStub(self.channel)}


def _parse_endpoint(url: str, tls: bool) -> tuple[str, str, bool]:
    """(url, gRPC target, secure) of one endpoint URL (``host:port`` means http)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidArgument(f"etcd store: an endpoint must be a URL string, got {url!r}")
    url = url.strip()
    text = url if "://" in url else f"{'https' if tls else 'http'}://{url}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument(f"etcd store: endpoint {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(
            f"etcd store: endpoint {url!r} must look like http://HOST:PORT or https://HOST:PORT"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidArgument(f"etcd store: endpoint {url!r} must not have a path, query or user")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    return text, f"{host}:{port or 2379}", parts.scheme == "https"


def _read_file(option: str, path: Any) -> bytes:
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"etcd store option {option!r} must be a file path, got {path!r}")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise StoreError(
            f"etcd store option {option!r}: cannot read {path}: {exc.strerror}"
        ) from exc


# -- the store -----------------------------------------------------------------------------
class EtcdStore(MetadataStore):
    """Records in an etcd v3 cluster under one key prefix (see the module doc)."""

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
        parsed = [_parse_endpoint(url, tls) for url in endpoints]
        plain = [url for url, _, secure in parsed if not secure]
        if tls and plain:
            raise InvalidArgument(
                f"etcd store: TLS options are set but endpoint {plain[0]} is http; use https"
            )
        credentials = None
        if any(secure for _, _, secure in parsed):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_file("ca_cert", ca_cert) if ca_cert is not None else None,
                private_key=_read_file("cert_key", cert_key) if cert_key is not None else None,
                certificate_chain=(
                    _read_file("cert_cert", cert_cert) if cert_cert is not None else None
                ),
            )
        if not prefix.endswith("/"):
            prefix += "/"
        self.prefix = prefix
        self.endpoints = [url for url, _, _ in parsed]
        self.timeout = float(timeout)
        self._max_ops = max_txn_ops
        self._reads = min(100, max_txn_ops)
        self.user = user
        self._password = password
        self._keys = _Keys(prefix.encode("utf-8", "surrogatepass"))
        self._where = f"etcd metadata store at {', '.join(self.endpoints)} (prefix {prefix!r})"
        if user is not None and plain:
            LOG.warning("%s: the password of user %r goes over plain http", self._where, user)
        self._lock = threading.Lock()  # guards _current, _token, _cache, _closed
        self._setup_lock = threading.Lock()
        self._conns = [_Endpoint(url, target, credentials) for url, target, _ in parsed]
        self._current = 0
        self._token: str | None = None
        self._ready = False
        self._closed = False
        self._cache: dict[bytes, _Stored] = {}
        try:
            self._setup()
        except StoreUnavailable as exc:
            LOG.warning("%s: not reachable yet (%s); will retry on first use", self._where, exc)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<EtcdStore {self.endpoints!r} prefix {self.prefix!r}>"

    def close(self) -> None:
        """Close the channels; later calls raise StoreError."""
        with self._lock:
            self._closed = True
        for conn in self._conns:
            conn.channel.close()

    # -- transport -------------------------------------------------------------------------
    def _setup(self) -> None:
        """Authenticate and check (or write) the layout version, once."""
        with self._setup_lock:
            if self._ready:
                return
            if self.user is not None and self._token is None:
                self._authenticate()
            meta = self._keys.meta
            resp = self._send(
                "KV",
                "Txn",
                rpc.TxnRequest(
                    compare=[_absent(meta)],
                    success=[_put(meta, LAYOUT_VERSION)],
                    failure=[_get(meta)],
                ),
                "check the layout version",
            )
            if not resp.succeeded:
                kvs = resp.responses[0].response_range.kvs
                found = kvs[0].value if kvs else b""
                if found != LAYOUT_VERSION:
                    version = found.decode(errors="replace")
                    raise StoreError(
                        f"{self._where}: the keys use layout version {version!r}, "
                        f"this plugin knows {LAYOUT_VERSION.decode()}; was it written by a newer "
                        "release, or is the prefix used by something else?"
                    )
            self._ready = True

    def _authenticate(self) -> None:
        request = rpc.AuthenticateRequest(name=self.user, password=self._password)
        try:
            resp = self._send("Auth", "Authenticate", request, "authenticate", auth=False)
        except StoreError as exc:
            if "authentication is not enabled" in str(exc):
                LOG.warning("%s: user %r given but the server has authentication off",
                            self._where, self.user)  # fmt: skip
                self._token = ""
                return
            raise
        with self._lock:
            self._token = resp.token

    def _call(self, service: str, method: str, request: Any, doing: str,
              notes: list[str] | None = None) -> Any:  # fmt: skip
        """One request on behalf of a store method (set up first if needed)."""
        if not self._ready:
            self._setup()
        return self._send(service, method, request, doing, notes=notes)

    def _send(
        self,
        service: str,
        method: str,
        request: Any,
        doing: str,
        *,
        auth: bool = True,
        notes: list[str] | None = None,
    ) -> Any:
        """Send one request, trying the endpoints in turn for ``timeout`` seconds.

        A write whose attempt broke after it may have reached the server (the
        server stopped while applying it, the answer was lost) is sent again
        until the server answers, for up to ``_RESOLVE_SECONDS``: the compare of
        a transaction (or a put's idempotence) makes the resend safe, and its
        answer tells the caller the truth, where giving up would report a write
        that the server applies once it is back as failed. ``notes`` gets
        "maybe-applied" for such an attempt.
        """
        started = time.monotonic()
        deadline = started + self.timeout
        # Read-only transactions have no compares; every write has (or is a Put/DeleteRange).
        writes = method in ("Put", "DeleteRange") or bool(getattr(request, "compare", None))
        renewed = False
        pause = 0.05
        last = "no attempt"
        maybe_applied = False
        while True:
            with self._lock:
                if self._closed:
                    raise StoreError(f"{self._where} is closed")
                start = self._current
                token = self._token
            metadata = (("token", token),) if auth and token else None
            renew = False
            for step in range(len(self._conns)):
                index = (start + step) % len(self._conns)
                conn = self._conns[index]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    resp = getattr(conn.stubs[service], method)(
                        request, timeout=min(remaining, self.timeout), metadata=metadata
                    )
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    if any(sign in details.lower() for sign in _TLS_FAILED):
                        raise StoreError(
                            f"{self._where}: cannot {doing}: the TLS handshake with {conn.url} "
                            f"failed (check the options ca_cert, cert_cert and cert_key): "
                            f"{details}"
                        ) from None
                    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        last = f"{conn.url}: {code.name}: {details}"
                        lowered = details.lower()
                        if code == grpc.StatusCode.DEADLINE_EXCEEDED or not any(
                            sign in lowered for sign in _NOT_SENT
                        ):
                            maybe_applied = True
                            if notes is not None:
                                notes.append("maybe-applied")
                        with self._lock:
                            if self._current == index:
                                self._current = (index + 1) % len(self._conns)
                        continue
                    expired = code == grpc.StatusCode.UNAUTHENTICATED or (
                        "invalid auth token" in details
                    )
                    if auth and expired and self.user is not None and not renewed:
                        renew = renewed = True
                        break
                    raise self._translate(code, details, doing) from None
                with self._lock:
                    self._current = index
                return resp
            if renew:
                self._authenticate()
                continue
            remaining = deadline - time.monotonic()
            if (
                remaining <= 0
                and writes
                and maybe_applied
                and deadline < started + _RESOLVE_SECONDS
            ):
                LOG.warning("%s: %s: the server went away while it may have been applying the "
                            "request; sending it again until it answers (up to %ds)",
                            self._where, doing, _RESOLVE_SECONDS)  # fmt: skip
                deadline = started + _RESOLVE_SECONDS
                remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome = (
                    "; the request may have reached the server before its connection broke, "
                    "so it may have been applied"
                    if maybe_applied and writes
                    else ""
                )
                raise StoreUnavailable(
                    f"{self._where}: cannot {doing}: no answer within "
                    f"{time.monotonic() - started:.3g}s (last error: {last}){outcome}"
                )
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.5)

    def _translate(self, code: grpc.StatusCode, details: str, doing: str) -> Exception:
        text = f"{self._where}: cannot {doing}"
        if "compacted" in details:
            return _Compacted(details)
        if "too many operations in txn request" in details:
            return StoreError(
                f"{text}: the transaction has more operations than the etcd server allows "
                "(its --max-txn-ops flag, 128 by default); write fewer records per call "
                "or raise --max-txn-ops. Nothing was written."
            )
        if "request is too large" in details or "larger than max" in details:
            return StoreError(
                f"{text}: the request is larger than the etcd server allows (its "
                "--max-request-bytes flag, 1.5 MiB by default). Nothing was written."
            )
        if "database space exceeded" in details or code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return StoreError(
                f"{text}: {details} (etcd's --quota-backend-bytes is reached: compact and "
                "defragment etcd, then disarm its NOSPACE alarm)"
            )
        if "authentication failed" in details:
            return StoreError(
                f"{text}: authentication as user {self.user!r} failed: wrong user name or password"
            )
        if "user name is empty" in details or code == grpc.StatusCode.UNAUTHENTICATED:
            return StoreError(
                f"{text}: the etcd server requires authentication: set the store options "
                "'user' and 'password'"
            )
        if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in details:
            return StoreError(
                f"{text}: user {self.user!r} lacks permission: grant it read and write on "
                f"the key prefix {self.prefix!r}"
            )
        return StoreError(f"{text}: {code.name}: {details}")

    def _txn(self, compare: list[Any], success: list[Any], failure: list[Any], doing: str,
             notes: list[str] | None = None) -> Any:  # fmt: skip
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return self._call("KV", "Txn", request, doing, notes)

    def _range(self, key: bytes, end: bytes, doing: str, **options: Any) -> Any:
        return self._call("KV", "Range", _range_request(key, end, **options), doing)

    # -- reading helpers -------------------------------------------------------------------
    def _range_all(
        self, key: bytes, end: bytes, doing: str, *, revision: int = 0, keys_only: bool = False
    ) -> tuple[list[Any], int]:
        """Every key in [key, end) at one revision, a chunk at a time; and that revision."""
        out: list[Any] = []
        while True:
            resp = self._range(
                key, end, doing, limit=_RANGE_CHUNK, revision=revision, keys_only=keys_only
            )
            revision = revision or resp.header.revision
            out.extend(resp.kvs)
            if not resp.more or not resp.kvs:
                return out, revision
            key = _after(resp.kvs[-1].key)

    def _get_many(self, keys: list[bytes], revision: int, doing: str) -> tuple[list[Any], int]:
        """The kvs of the keys that exist, all at one revision (0: the current one)."""
        out: list[Any] = []
        for start in range(0, len(keys), self._reads):
            ops = [_get(key, revision=revision) for key in keys[start : start + self._reads]]
            resp = self._txn([], ops, [], doing)
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

    def _stored(self, kind: str, kv: Any) -> _Stored:
        pos, text = self._split(kind, kv)
        try:
            record = json.loads(text)
        except ValueError as exc:
            raise StoreError(f"{self._where}: a {kind} record is not valid JSON: {exc}") from exc
        return _Stored(kv.mod_revision, pos, _fields(kind, record))

    def _id_of(self, index_prefix: bytes, key: bytes) -> str:
        return unescape(key[len(index_prefix) :])

    def _remember(self, key: bytes, state: _Stored | None) -> None:
        with self._lock:
            self._cache.pop(key, None)
            if state is not None:
                if len(self._cache) >= _CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = state

    # -- reads -----------------------------------------------------------------------------
    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        check_filters(id=record_id, **filters)
        wanted = {field: value for field, value in filters.items() if value is not None}
        doing = f"read {kind} records"
        for attempt in range(_READ_RETRIES):
            try:
                kvs = self._select_kvs(kind, record_id, wanted, doing)
                break
            except _Compacted:
                if attempt == _READ_RETRIES - 1:
                    raise StoreError(
                        f"{self._where}: cannot {doing}: etcd kept compacting"
                    ) from None
        rows = self._decode(kind, kvs)
        if record_id is not None:  # likely to be written next: remember what the compare needs
            for kv, ((_, pos, _), record) in zip(kvs, rows, strict=True):
                self._remember(kv.key, _Stored(kv.mod_revision, pos, _fields(kind, record)))
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
            return list(self._range(keys.record(kind, record_id), b"", doing).kvs)
        field = next((f for f in _INDEXED[kind] if f in wanted), None)
        if field is None:
            return self._range_all(keys.rec[kind], _prefix_end(keys.rec[kind]), doing)[0]
        prefix = keys.index_prefix(kind, field, wanted[field])
        found, revision = self._range_all(prefix, _prefix_end(prefix), doing, keys_only=True)
        if len(found) > _SCAN_INSTEAD:
            rec = keys.rec[kind]
            return self._range_all(rec, _prefix_end(rec), doing, revision=revision)[0]
        wanted_keys = [keys.record(kind, self._id_of(prefix, kv.key)) for kv in found]
        return self._get_many(wanted_keys, revision, doing)[0]

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
        after = read_token(kind, token) if token else None
        wanted = {field: value for field, value in filters.items() if value is not None}
        doing = f"list {kind} records"
        for attempt in range(_READ_RETRIES):
            try:
                records, more = self._page(kind, limit, after, wanted, doing)
                break
            except _Compacted:
                if attempt == _READ_RETRIES - 1:
                    raise StoreError(
                        f"{self._where}: cannot {doing}: etcd kept compacting"
                    ) from None
        next_token = issue_token(kind, records[-1]["id"]) if more and records else ""
        return Page(records, next_token)

    def _page(
        self, kind: str, limit: int, after: str | None, wanted: dict[str, str], doing: str
    ) -> tuple[list[Record], bool]:
        keys = self._keys
        field = "volume_id" if "volume_id" in wanted else "backend" if wanted else None
        base = keys.rec[kind] if field is None else keys.index_prefix(kind, field, wanted[field])
        start = base if after is None else _after(base + escape(after))
        end = _prefix_end(base)
        if field is None:
            resp = self._range(start, end, doing, limit=limit)
            return [record for _, record in self._decode(kind, list(resp.kvs))], resp.more
        # Index keys, then their records at the same revision; filters the index does
        # not cover are checked on the records, reading on until the page is full.
        found: list[Record] = []
        revision = 0
        while True:
            resp = self._range(start, end, doing, limit=limit + 1 - len(found), keys_only=True,
                               revision=revision)  # fmt: skip
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
            start = _after(resp.kvs[-1].key)

    def connections_of(self, volume_ids: Sequence[str]) -> list[Record]:
        wanted = list(dict.fromkeys(volume_ids))
        for volume_id in wanted:
            check_filters(volume_id=volume_id)
        if not wanted:
            return []
        doing = "read connection records"
        for attempt in range(_READ_RETRIES):
            try:
                rows = self._connections_of(wanted, doing)
                break
            except _Compacted:
                if attempt == _READ_RETRIES - 1:
                    raise StoreError(
                        f"{self._where}: cannot {doing}: etcd kept compacting"
                    ) from None
        return rows

    def _connections_of(self, wanted: list[str], doing: str) -> list[Record]:
        keys = self._keys
        prefixes = [keys.index_prefix(CONNECTION, "volume_id", v) for v in wanted]
        revision = 0
        record_keys: list[bytes] = []
        for start in range(0, len(prefixes), self._reads):
            chunk = prefixes[start : start + self._reads]
            ops = [_get(p, _prefix_end(p), keys_only=True, revision=revision) for p in chunk]
            resp = self._txn([], ops, [], doing)
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
    ) -> None:
        # Encode (and so validate) everything before any request: atomicity.
        changes: dict[bytes, _Change] = {}
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            for record in records:
                text = encode_record(kind, record)
                key = self._keys.record(kind, record["id"])
                # The same id twice: the last record wins, in the place of the first.
                changes[key] = _Change(kind, record["id"], key, text, _fields(kind, record))
        if changes:
            self._apply(list(changes.values()), f"write {len(changes)} record(s)")

    def delete(self, kind: str, record_id: str) -> None:
        check_kind(kind)
        check_filters(id=record_id)
        key = self._keys.record(kind, record_id)
        self._apply([_Change(kind, record_id, key, None, {})], f"delete a {kind} record")

    def _apply(self, changes: list[_Change], doing: str) -> None:
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
        for attempt in range(_CAS_ATTEMPTS):
            grouped = len(changes) > self._max_ops
            ops, places = self._change_ops(changes, known, full_index=False)
            if not grouped and sum(map(len, ops.values())) > self._max_ops:
                grouped = True
            if grouped:
                groups = self._groups(changes, known, ops)
                if any(len(group) > 1 for group in groups):
                    if not revision:  # range compares need every record read at one revision
                        known, revision = self._read_states(changes, doing)
                        continue
                    ops, places = self._change_ops(changes, known, full_index=True)
                    groups = self._groups(changes, known, ops)
                compare = [self._unchanged(group, known, revision) for group in groups]
                success = [_nested([op for c in group for op in ops[c.key]]) for group in groups]
                failure = [_nested([_get(c.key) for c in group]) for group in groups]
                order = [change for group in groups for change in group]
            else:
                compare = [self._unchanged([change], known, revision) for change in changes]
                success = [op for change in changes for op in ops[change.key]]
                failure = [_get(change.key) for change in changes]
                order = changes
            resp = self._txn(compare, success, failure, doing)
            if resp.succeeded:
                for change in changes:
                    state = None
                    if change.text is not None:
                        state = _Stored(resp.header.revision, places[change.key], change.fields)
                    self._remember(change.key, state)
                return
            items = resp.responses
            if grouped:
                items = [inner for item in items for inner in item.response_txn.responses]
            for change, item in zip(order, items, strict=True):
                kvs = item.response_range.kvs
                known[change.key] = self._stored(change.kind, kvs[0]) if kvs else None
            revision = resp.header.revision
            _backoff(attempt)
        raise StoreError(
            f"{self._where}: cannot {doing}: the records kept changing under "
            f"{_CAS_ATTEMPTS} attempts"
        )

    def _change_ops(
        self, changes: list[_Change], known: dict[bytes, _Stored | None], *, full_index: bool
    ) -> tuple[dict[bytes, list[Any]], dict[bytes, int]]:
        """The operations of each change, and the place of each record put."""
        ops: dict[bytes, list[Any]] = {}
        places: dict[bytes, int] = {}
        new_place = 0
        for change in changes:
            old = known[change.key]
            old_index = (
                self._keys.index_keys(change.kind, change.record_id, old.fields) if old else set()
            )
            mine = ops[change.key] = []
            if change.text is None:
                if old is not None:
                    mine.append(_delete(change.key))
                    mine.extend(_delete(k) for k in sorted(old_index))
                continue
            if old is None:  # its place among the records this transaction creates
                pos, new_place = new_place, new_place + 1
            else:
                pos = old.pos
            places[change.key] = pos
            mine.append(_put(change.key, b"%d\n" % pos + change.text.encode()))
            new_index = self._keys.index_keys(change.kind, change.record_id, change.fields)
            mine.extend(_delete(k) for k in sorted(old_index - new_index))
            mine.extend(
                _put(k, b"") for k in sorted(new_index if full_index else new_index - old_index)
            )
        return ops, places

    def _groups(
        self,
        changes: list[_Change],
        known: dict[bytes, _Stored | None],
        ops: dict[bytes, list[Any]],
    ) -> list[list[_Change]]:
        """Changes in key order, cut into at most max_txn_ops/4 runs of one kind."""
        ordered = sorted(changes, key=lambda change: change.key)
        max_groups = max(1, self._max_ops // 4)
        if len(ordered) <= max_groups:
            return [[change] for change in ordered]
        budget = self._max_ops - max_groups
        groups: list[list[_Change]] = []
        size = 0
        for change in ordered:
            count = max(len(ops[change.key]), 1)
            if groups and groups[-1][-1].kind == change.kind and size + count <= budget:
                groups[-1].append(change)
                size += count
            else:
                groups.append([change])
                size = count
        if len(groups) > max_groups:
            raise StoreError(
                f"{self._where}: cannot write {len(changes)} records in one etcd transaction: "
                f"they need {sum(map(len, ops.values()))} operations, more than "
                f"{max_groups} nested transactions of {budget} fit in --max-txn-ops "
                f"{self._max_ops} (the store option max_txn_ops); write fewer records at once. "
                "Nothing was written."
            )
        return groups

    def _unchanged(
        self, group: list[_Change], known: dict[bytes, _Stored | None], revision: int
    ) -> Any:
        """Compare: the group's records are as ``known`` says."""
        if len(group) == 1:
            old = known[group[0].key]
            return _mod_is(group[0].key, old.mod_revision if old else 0)
        return rpc.Compare(
            key=group[0].key,
            range_end=_after(group[-1].key),
            target=rpc.Compare.MOD,
            result=rpc.Compare.LESS,
            mod_revision=revision + 1,
        )

    def _read_states(
        self, changes: list[_Change], doing: str
    ) -> tuple[dict[bytes, _Stored | None], int]:
        """The stored state of each change's record, all at one revision."""
        kinds = {change.key: change.kind for change in changes}
        for attempt in range(_READ_RETRIES):
            try:
                kvs, revision = self._get_many(list(kinds), 0, doing)
                break
            except _Compacted:
                if attempt == _READ_RETRIES - 1:
                    raise StoreError(
                        f"{self._where}: cannot {doing}: etcd kept compacting"
                    ) from None
        known: dict[bytes, _Stored | None] = dict.fromkeys(kinds)
        for kv in kvs:
            known[kv.key] = self._stored(kinds[kv.key], kv)
        return known, revision

    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        record_id = record["id"]
        keys = self._keys
        key = keys.record(kind, record_id)
        fields = _fields(kind, record)
        value = b"0\n" + text.encode()
        names = keys.index_prefix(kind, "name", name)
        compare = [_absent(names, _prefix_end(names)), _absent(key)]
        success = [
            _put(key, value),
            *(_put(k, b"") for k in sorted(keys.index_keys(kind, record_id, fields))),
        ]
        failure = [_get(names, _prefix_end(names), keys_only=True), _get(key)]
        notes: list[str] = []
        for attempt in range(_CAS_ATTEMPTS):
            resp = self._txn(compare, success, failure, f"create a {kind} record", notes)
            if resp.succeeded:
                self._remember(key, _Stored(resp.header.revision, 0, fields))
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
            _backoff(attempt)
        raise StoreError(f"{self._where}: cannot create a {kind} record: the name kept changing")

    # -- key/value -------------------------------------------------------------------------
    def get_value(self, key: str) -> str | None:
        check_key(key)
        resp = self._range(self._keys.kv + escape(key), b"", "read a value")
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
        self._call("KV", "Put", request, "write a value")

    def get_values(self) -> dict[str, str]:
        prefix = self._keys.kv
        kvs, _ = self._range_all(prefix, _prefix_end(prefix), "read the values")
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
        self._call("KV", "DeleteRange", request, "delete a value")
