"""The etcd store's connection to the cluster: one request at a time, made to arrive.

Why a module: the endpoints (tried in order, a failing one hands over to the next),
their gRPC channels and TLS, the auth token and its renewal, the resending of a
write that may have reached a server that went away, and the mapping of gRPC
errors to ``StoreUnavailable``/``StoreError`` are the same for every store call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import grpc
from etcd3 import etcdrpc as rpc

from csi_driver.storage.exceptions import InvalidArgument, StoreError, StoreUnavailable
from csi_driver.storage.persistence.etcd.keys import LAYOUT_VERSION
from csi_driver.storage.persistence.etcd.transactions import absent, get_op, put_op, range_request

#: The package's logger: every module of the etcd store logs under one name.
LOG = logging.getLogger("csi_driver.storage.persistence.etcd")

#: How long a write that may have reached a server that went away is sent again.
_RESOLVE_SECONDS = 60
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


class Compacted(Exception):
    """A read pinned to a revision that etcd compacted meanwhile: read again."""


# -- options -------------------------------------------------------------------------------
def parse_endpoint(url: str, tls: bool) -> tuple[str, str, bool]:
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


def read_file(option: str, path: Any) -> bytes:
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"etcd store option {option!r} must be a file path, got {path!r}")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise StoreError(
            f"etcd store option {option!r}: cannot read {path}: {exc.strerror}"
        ) from exc


def tls_credentials(ca_cert: str | None, cert_cert: str | None, cert_key: str | None) -> Any:
    """gRPC channel credentials from the PEM files of the TLS options that are set."""
    return grpc.ssl_channel_credentials(
        root_certificates=read_file("ca_cert", ca_cert) if ca_cert is not None else None,
        private_key=read_file("cert_key", cert_key) if cert_key is not None else None,
        certificate_chain=read_file("cert_cert", cert_cert) if cert_cert is not None else None,
    )


class _Endpoint:
    def __init__(self, url: str, target: str, credentials: Any) -> None:
        self.url = url
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        else:
            self.channel = grpc.secure_channel(target, credentials, options=_CHANNEL_OPTIONS)
        self.stubs = {"KV": rpc.KVStub(self.channel), "Auth": rpc.AuthStub(self.channel)}


# -- the client ----------------------------------------------------------------------------
class Client:
    """Requests to an etcd cluster on behalf of one store (its prefix, user and timeout)."""

    def __init__(
        self,
        parsed: list[tuple[str, str, bool]],
        credentials: Any,
        *,
        timeout: float,
        user: str | None,
        password: str | None,
        prefix: str,
        meta: bytes,
        where: str,
    ) -> None:
        """Open a channel to each endpoint of ``parsed`` (``parse_endpoint``'s answers).

        ``meta`` is the store's layout key, ``where`` names the store in errors.
        """
        self.timeout = timeout
        self.user = user
        self._password = password
        self._prefix = prefix
        self._meta = meta
        self._where = where
        self._lock = threading.Lock()  # guards _current, _token, _closed
        self._setup_lock = threading.Lock()
        self._conns = [_Endpoint(url, target, credentials) for url, target, _ in parsed]
        self._current = 0
        self._token: str | None = None
        self._ready = False
        self._closed = False

    def close(self) -> None:
        """Close the channels; later calls raise StoreError."""
        with self._lock:
            self._closed = True
        for conn in self._conns:
            conn.channel.close()

    def setup(self) -> None:
        """Authenticate and check (or write) the layout version, once."""
        with self._setup_lock:
            if self._ready:
                return
            if self.user is not None and self._token is None:
                self._authenticate()
            meta = self._meta
            resp = self._send(
                "KV",
                "Txn",
                rpc.TxnRequest(
                    compare=[absent(meta)],
                    success=[put_op(meta, LAYOUT_VERSION)],
                    failure=[get_op(meta)],
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

    def call(self, service: str, method: str, request: Any, doing: str,
             notes: list[str] | None = None) -> Any:  # fmt: skip
        """One request on behalf of a store method (set up first if needed)."""
        if not self._ready:
            self.setup()
        return self._send(service, method, request, doing, notes=notes)

    def txn(self, compare: list[Any], success: list[Any], failure: list[Any], doing: str,
            notes: list[str] | None = None) -> Any:  # fmt: skip
        request = rpc.TxnRequest(compare=compare, success=success, failure=failure)
        return self.call("KV", "Txn", request, doing, notes)

    def range(self, key: bytes, end: bytes, doing: str, **options: Any) -> Any:
        return self.call("KV", "Range", range_request(key, end, **options), doing)

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
            return Compacted(details)
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
                f"the key prefix {self._prefix!r}"
            )
        return StoreError(f"{text}: {code.name}: {details}")
