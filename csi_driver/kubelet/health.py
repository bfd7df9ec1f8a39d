"""HTTP ``/healthz`` for kubelet's liveness probe (as the livenessprobe sidecar serves
it) and ``/readyz`` for its readiness probe.

Each GET /healthz calls the plugin's own Identity.Probe through its real gRPC endpoint
(a fresh channel, a short deadline), so a 200 proves the CSI server answers, not just
that the interpreter runs. 200 ``ok`` when ready; 503 with a one-line reason when the
Probe says not ready, fails or times out, or when another check (kubelet refused the
registration) reports a problem. ``/readyz`` asks the same and, before the probe, the
readiness checks (the node plugin: kubelet has not confirmed its registration yet), so a
pod turns Ready only once the cluster can use it. Other paths: 404. Requests are served
on daemon threads, a few at a time (more are dropped), each bounded by a socket timeout; single
hits are logged at DEBUG only, changes of the outcome at WARNING/INFO.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import grpc

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.server import EndpointError

LOG = logging.getLogger(__name__)
LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
#: kubelet's httpGet probe targets the pod's IP, so every interface by default.
DEFAULT_ADDRESS = "0.0.0.0"  # noqa: S104
#: Seconds a Probe may take by default; keep the liveness probe's timeoutSeconds above.
PROBE_TIMEOUT = 2.0
#: Requests served at once; more are dropped (kubelet sends one per period).
MAX_CONCURRENT = 4
#: Seconds a client may take to send its request.
REQUEST_TIMEOUT = 5.0

Check = Callable[[], "str | None"]


class HealthServer:
    """Serves ``/healthz`` on ``address:port`` (port 0: any free one, see ``port``) for
    the CSI server at ``target`` (a gRPC address: ``unix:/path`` or ``host:port``)."""

    def __init__(
        self,
        address: str,
        port: int,
        target: str,
        probe_timeout: float = PROBE_TIMEOUT,
        checks: Sequence[Check] = (),
        readiness_checks: Sequence[Check] = (),
    ) -> None:
        self.address = address
        self.requested_port = port
        self.target = target
        self.probe_timeout = probe_timeout
        self.checks = tuple(checks)
        self.readiness_checks = tuple(readiness_checks)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._outcome_lock = threading.Lock()
        self._last_reasons: dict[str, str | None] = {}

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when 0 was asked for)."""
        return self._httpd.server_address[1] if self._httpd else self.requested_port

    def start(self) -> None:
        try:
            self._httpd = _HTTPServer(self, (self.address, self.requested_port))
        except OSError as exc:
            raise EndpointError(
                f"cannot serve {LIVENESS_PATH} on {self.address}:{self.requested_port}: "
                f"{exc.strerror or exc}"
            ) from None
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
            name="healthz", daemon=True,
        )  # fmt: skip
        self._thread.start()
        LOG.info("serving %s and %s on %s:%d (Probe of %s)", LIVENESS_PATH, READINESS_PATH,
                 self.address, self.port, self.target)  # fmt: skip

    def stop(self) -> None:
        if self._httpd is None or self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=REQUEST_TIMEOUT)
        self._httpd = self._thread = None

    def check(self) -> str | None:
        """None when alive (/healthz), else why not (one line)."""
        return self._outcome(LIVENESS_PATH, self.checks)

    def ready(self) -> str | None:
        """None when ready for work (/readyz), else why not (one line)."""
        return self._outcome(READINESS_PATH, self.checks + self.readiness_checks)

    def _outcome(self, path: str, checks: tuple[Check, ...]) -> str | None:
        reason = next((r for r in (check() for check in checks) if r), None)
        if reason is None:
            reason = self._probe()
        reason = None if reason is None else " ".join(reason.split())
        self._log_change(path, reason)
        return reason

    def _probe(self) -> str | None:
        with grpc.insecure_channel(self.target) as channel:
            try:
                reply = csi_pb2_grpc.IdentityStub(channel).Probe(
                    csi_pb2.ProbeRequest(), timeout=self.probe_timeout
                )
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return f"Probe timed out after {self.probe_timeout:g}s"
                details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
                return f"Probe failed: {code.name if code else 'error'}: {details}"
        # CSI: a reply without `ready` means ready.
        if reply.HasField("ready") and not reply.ready.value:
            return "Probe: the plugin is not ready"
        return None

    def _log_change(self, path: str, reason: str | None) -> None:
        """Changes only; not ready yet is INFO (every start passes through it)."""
        with self._outcome_lock:
            changed = reason != self._last_reasons.get(path)
            self._last_reasons[path] = reason
        if changed and reason is not None:
            LOG.log(logging.WARNING if path == LIVENESS_PATH else logging.INFO,
                    "%s fails: %s", path, reason)  # fmt: skip
        elif changed:
            LOG.info("%s ok again", path)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, health: HealthServer, address: tuple[str, int]) -> None:
        self.health = health
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = REQUEST_TIMEOUT

    def version_string(self) -> str:
        return "csi-driver"

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == LIVENESS_PATH:
            reason = self.server.health.check()
        elif path == READINESS_PATH:
            reason = self.server.health.ready()
        else:
            self._answer(HTTPStatus.NOT_FOUND, "not found")
            return
        if reason is None:
            self._answer(HTTPStatus.OK, "ok")
        else:
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, reason)

    def _answer(self, status: HTTPStatus, text: str) -> None:
        body = f"{text}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)
