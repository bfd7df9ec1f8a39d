"""The gRPC server: set the storage library up for the mode, register the services,
listen, and stop on SIGTERM/SIGINT within a bounded grace. No CSI logic lives here.

Modes: ``controller`` (Identity + Controller: configures the backends and the
metadata store), ``node`` (Identity + Node: attach-only, no store, no backend
credentials), ``all`` (the three, one process).

Start-up: the server listens as soon as the metadata store is open; then this thread
imports Cinder and the backends start on a thread of their own (``startup.py``), Probe
answering not ready until they are up. A node imports neither Cinder nor the
controller's modules, and os-brick only when a call first needs it
(``storage/connector.py``). The garbage collector is paused while the backends start
(``_resume_gc``): importing Cinder leaves ~160 000 objects the collector tracks, nearly
all living as long as the process, and its passes over that growing heap made the
imports ~10% slower (measured here, the plugin's and Cinder's: 0.78-0.92 s with them,
0.67-0.73 s without).

Shutdown: the first SIGTERM/SIGINT stops new calls at once (they get UNAVAILABLE) and
waits for the calls in flight up to ``shutdown_grace_seconds`` from the signal; a
second signal stops the wait. When they all finished, the backends are closed and
``serve`` returns. When some still run (a driver call cannot be interrupted), the
process logs them and exits 0 at the bound anyway, before Kubernetes' SIGKILL: each
operation's stored record says what was in flight, so the CO's retry heals it.
Companion servers (kubelet registration, /healthz) start after the CSI server and stop
first, before it refuses new calls.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import grpc

from csi_driver import rpc, storage
from csi_driver.config import PluginConfig
from csi_driver.csi_pb import csi_pb2_grpc
from csi_driver.identity import IdentityService
from csi_driver.startup import BackendStartup

if TYPE_CHECKING:
    from csi_driver.reconciler import Reconciler

LOG = logging.getLogger(__name__)
MODES = ("controller", "node", "all")
#: Seconds a forced exit gives gRPC to end the abandoned calls (clients see UNAVAILABLE).
CANCEL_SECONDS = 0.5
#: Seconds the clean path may wait for idle workers even when the grace is spent.
JOIN_FLOOR_SECONDS = 0.5
#: Seconds past the grace at which a watchdog ends the process whatever still runs, so
#: the exit stays within grace + 2 s of the signal even if a shutdown step hangs.
WATCHDOG_SECONDS = 1.5


class EndpointError(ValueError):
    """The endpoint is malformed or cannot be listened on."""


class Companion(Protocol):
    """A server run beside the CSI one (kubelet registration, /healthz): started once
    the CSI server is up, stopped in reverse order as soon as shutdown begins, before
    the CSI server refuses new calls (kubelet deregisters the plugin when its
    registration socket goes). ``stop`` may be called more than once."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Endpoint:
    """A parsed ``unix:///path`` or ``tcp://host:port`` endpoint."""

    scheme: str
    address: str

    @property
    def grpc_address(self) -> str:
        return f"unix:{self.address}" if self.scheme == "unix" else self.address

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"


def parse_endpoint(text: str) -> Endpoint:
    if text.startswith("unix://"):
        path = text[len("unix://") :]
    elif text.startswith("unix:"):
        path = text[len("unix:") :]
    elif text.startswith("tcp://"):
        address = text[len("tcp://") :]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise EndpointError(f"endpoint {text!r}: expected tcp://HOST:PORT")
        return Endpoint("tcp", address)
    else:
        raise EndpointError(f"endpoint {text!r}: expected unix:///PATH or tcp://HOST:PORT")
    if not path.startswith("/"):
        raise EndpointError(f"endpoint {text!r}: the socket path must be absolute")
    return Endpoint("unix", path)


def clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a plugin that died; refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise EndpointError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise EndpointError(f"another process is already serving on {path}")


def setup_storage(config: PluginConfig, mode: str) -> None:
    """Configure the storage library for the mode and open its store (the backends
    start later: ``startup.BackendStartup``)."""
    options: dict[str, Any] = dict(config.storage)
    options.update(host=config.host)
    if config.node.my_ip:
        options.setdefault("my_ip", config.node.my_ip)
    if mode == "node":
        # The node keeps nothing in a shared store and configures no driver.
        options.pop("persistence_config", None)
        storage.setup(attach_only=True, **options)
    else:
        storage.setup(**options)


@dataclass(frozen=True)
class Call:
    """A call being served, as the shutdown log names it."""

    method: str
    request_id: str
    started: float  # time.monotonic()

    def describe(self, now: float) -> str:
        return f"{self.method} [{self.request_id}] running {now - self.started:.1f}s"


class InFlightCalls(grpc.ServerInterceptor):
    """Tracks the unary calls being run, so shutdown knows whether to wait and can say
    which calls it abandons.

    A call without an ``x-request-id`` gets one here, put into the metadata its
    handler sees, so the handler's log lines and the shutdown warning name the same id.
    """

    def __init__(self, on_end: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._calls: dict[object, Call] = {}
        self._on_end = on_end

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # CSI has only unary calls; anything else passes untracked
        method = handler_call_details.method.rpartition("/")[2]
        return grpc.unary_unary_rpc_method_handler(
            self._tracked(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _tracked(self, method: str, behavior: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            metadata, request_id = _with_request_id(context.invocation_metadata() or ())
            key = object()
            with self._lock:
                self._calls[key] = Call(method, request_id, time.monotonic())
            try:
                return behavior(request, _ContextWithMetadata(context, metadata))
            finally:
                with self._lock:
                    del self._calls[key]
                self._on_end()

        return run

    def running(self) -> list[Call]:
        with self._lock:
            return sorted(self._calls.values(), key=lambda call: call.started)


def _with_request_id(metadata: Sequence[tuple[str, Any]]) -> tuple[tuple[Any, ...], str]:
    """The metadata with an ``x-request-id`` (added when missing), and that id as the
    handlers log it."""
    given = rpc.caller_request_id(metadata)
    if given is not None:
        return tuple(metadata), given
    request_id = rpc.new_request_id()
    return (*metadata, ("x-request-id", request_id)), request_id


class _ContextWithMetadata:
    """A servicer context whose ``invocation_metadata`` is the one given; everything
    else is the real context's."""

    def __init__(self, context: grpc.ServicerContext, metadata: tuple[Any, ...]) -> None:
        self._context = context
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[Any, ...]:
        return self._metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class _Shutdown:
    """SIGTERM/SIGINT: the first asks for a graceful stop and starts the grace; a
    second cuts the wait short (never lengthens it). ``wake`` is set on every signal
    and every call's end, so one wait in the main thread sees both."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.hurry = threading.Event()
        self.wake = threading.Event()
        self.signalled_at = 0.0
        self.signal_name = ""

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.requested.is_set():
            self.hurry.set()
        else:
            self.signalled_at = time.monotonic()
            self.signal_name = signal.Signals(signum).name
            self.requested.set()
        self.wake.set()


def build_server(
    config: PluginConfig,
    mode: str,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    startup: BackendStartup | None = None,
) -> tuple[grpc.Server, futures.ThreadPoolExecutor, Reconciler | None]:
    """A gRPC server with the services of the mode registered (not started), its worker
    pool, which gRPC does not shut down itself, and the controller's reconciler (not
    started; None without a controller). With ``startup``, Probe and the controller
    wait for its backends."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    executor = futures.ThreadPoolExecutor(config.grpc_workers, thread_name_prefix="csi")
    server = grpc.server(executor, interceptors=interceptors)
    reconciler = None
    identity = IdentityService(config, startup.not_ready) if startup else IdentityService(config)
    csi_pb2_grpc.add_IdentityServicer_to_server(identity, server)
    # Each service's module is imported only by the modes that serve it.
    node = None
    if mode in ("node", "all"):
        from csi_driver.node import NodeService

        node = NodeService(config, mode)
    if mode in ("controller", "all"):
        from csi_driver.controller import ControllerService

        controller = ControllerService(
            config, local_node=node.state if node else None,
            require_backends=startup.require if startup else lambda: None,
        )  # fmt: skip
        reconciler = controller.reconciler
        csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)
    if node is not None:
        csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    return server, executor, reconciler


def listen(server: grpc.Server, endpoint: Endpoint) -> None:
    if endpoint.scheme == "unix":
        os.makedirs(os.path.dirname(endpoint.address), exist_ok=True)
        clear_stale_socket(endpoint.address)
    try:
        server.add_insecure_port(endpoint.grpc_address)
    except RuntimeError as exc:
        raise EndpointError(f"cannot listen on {endpoint}: {exc}") from None


def serve(
    config: PluginConfig,
    endpoint: Endpoint,
    mode: str,
    on_ready: Callable[[Endpoint], None] | None = None,
    companions: Sequence[Companion] = (),
) -> None:
    """Run until SIGTERM or SIGINT, then let in-flight calls finish within the grace
    and clean up; exits the process itself (code 0) if calls outlive the grace. Raises
    what stopped the backends' start-up, once the server is stopped."""
    setup_storage(config, mode)
    shutdown = _Shutdown()
    startup = None if mode == "node" else BackendStartup(config, mode, on_end=shutdown.wake.set)
    if startup is not None:
        gc.disable()  # until the backends are up: _resume_gc
    calls = InFlightCalls(on_end=shutdown.wake.set)
    server, executor, reconciler = build_server(config, mode, interceptors=(calls,),
                                                startup=startup)  # fmt: skip
    listening = False
    running: list[Companion] = []
    try:
        listen(server, endpoint)
        listening = True
        shutdown.install()
        server.start()
        for companion in companions:
            companion.start()
            running.append(companion)
        LOG.info("serving CSI %s mode on %s (driver %s, backends: %s)", mode, endpoint,
                 config.driver_name, _names(config.backends if startup else ()))  # fmt: skip
        if on_ready is not None:
            on_ready(endpoint)
        if startup is not None:
            startup.start()  # imports Cinder here, then starts the backends' thread
        _run_until_signal(shutdown, startup, reconciler)
        grace = config.shutdown_grace_seconds
        deadline = shutdown.signalled_at + grace
        _start_watchdog(deadline + WATCHDOG_SECONDS)
        _stop_companions(running)
        if startup is not None:
            startup.cancel()
        if reconciler is not None:  # no new pass; one healing now is waited for below
            reconciler.stop(timeout=0)
        server.stop(max(0.0, deadline - time.monotonic()))  # returns at once
        LOG.info("stopping on %s: refusing new calls; %d in flight get up to %.1fs to finish",
                 shutdown.signal_name, len(calls.running()), grace)  # fmt: skip
        finished = _drain(calls, shutdown, deadline) and _join_workers(executor, deadline)
        if reconciler is not None:
            finished = reconciler.stop(timeout=max(0.0, deadline - time.monotonic())) and finished
        if startup is not None and not startup.wait(max(0.0, deadline - time.monotonic())):
            LOG.warning("a backend is still starting at the end of the grace: %s",
                        startup.not_ready())  # fmt: skip
            finished = False
        if not finished:
            _abandon(server, endpoint, calls, shutdown)
    finally:
        _stop_companions(running)
        server.stop(0)
        executor.shutdown(wait=True, cancel_futures=True)
        for backend in startup.backends if startup else ():
            backend.close()
        if listening:  # else the socket, if any, is another process's
            _remove_socket(endpoint)
        LOG.info("stopped; backends closed: %s", _names(startup.backends if startup else ()))


def _names(backends: Sequence[Any]) -> str:
    return ", ".join(b.name for b in backends) or "none"


def _run_until_signal(
    shutdown: _Shutdown, startup: BackendStartup | None, reconciler: Reconciler | None
) -> None:
    """Wait for SIGTERM/SIGINT; meanwhile, when the backends' start-up ends, start the
    reconciler, or raise what failed. Timed waits: the main thread wakes every second,
    so a signal's Python handler runs even if one untimed lock wait were never
    interrupted."""
    pending = startup is not None
    while True:
        shutdown.wake.clear()
        if shutdown.requested.is_set():
            return
        if pending and startup is not None and startup.done():
            pending = False
            _resume_gc()
            if startup.failure is not None:
                raise startup.failure
            if reconciler is not None:
                reconciler.start()
        shutdown.wake.wait(1.0)


def _resume_gc() -> None:
    """End the pause of the garbage collector while the backends start. What the start-up
    allocated (modules, classes, the drivers) lives as long as the process: it is frozen
    out of the collector's sight rather than swept by a full collection (~0.1 s holding
    the interpreter as the first calls come in, and again at each later full collection)
    for the few cycles it left (~1 400 objects after Cinder's import, measured)."""
    gc.freeze()
    gc.enable()


def _stop_companions(running: list[Companion]) -> None:
    """Stop the companions started, last first; a failing one does not keep the others
    (or the CSI server's shutdown) from running."""
    while running:
        companion = running.pop()
        try:
            companion.stop()
        except Exception:
            LOG.exception("stopping %s failed", type(companion).__name__)


def _drain(calls: InFlightCalls, shutdown: _Shutdown, deadline: float) -> bool:
    """Wait until no call runs, the deadline passes or a second signal comes; whether
    every call finished."""
    while True:
        shutdown.wake.clear()
        if not calls.running():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0 or shutdown.hurry.is_set():
            return False
        shutdown.wake.wait(remaining)


def _join_workers(executor: futures.ThreadPoolExecutor, deadline: float) -> bool:
    """Shut the worker pool down, waiting until the deadline at most: a call that
    reached a worker after the drain saw none running must not hold the exit up."""
    joiner = threading.Thread(
        target=executor.shutdown, kwargs={"wait": True, "cancel_futures": True},
        name="csi-shutdown", daemon=True,
    )  # fmt: skip
    joiner.start()
    joiner.join(max(JOIN_FLOOR_SECONDS, deadline - time.monotonic()))
    return not joiner.is_alive()


def _abandon(
    server: grpc.Server, endpoint: Endpoint, calls: InFlightCalls, shutdown: _Shutdown
) -> NoReturn:
    """Exit now although calls still run: their threads are inside driver calls that
    cannot be stopped or joined, and waiting longer gets the pod SIGKILLed. The backends
    are not closed (the running calls use them); each operation's stored record says
    what was in flight, so the CO's retry after the restart finishes or undoes it."""
    now = time.monotonic()
    running = calls.running()
    reason = "a second signal came" if shutdown.hurry.is_set() else "the grace is over"
    LOG.warning("exiting %.1fs after %s since %s, abandoning %d call(s) still running: %s",
                now - shutdown.signalled_at, shutdown.signal_name, reason, len(running),
                "; ".join(call.describe(now) for call in running) or "none tracked")  # fmt: skip
    server.stop(0).wait(CANCEL_SECONDS)  # a status for the clients, not a dropped socket
    _remove_socket(endpoint)
    logging.shutdown()  # flushes every handler
    os._exit(0)


def _start_watchdog(at: float) -> None:
    """End the process at ``at`` (monotonic time) with code 1 if it still runs: a step
    of the shutdown that hangs (a backend's close, a log handler on a full pipe) must
    not outlast the bound. It writes to fd 2 directly, as logging may be what hangs."""

    def expire() -> None:
        time.sleep(max(0.0, at - time.monotonic()))
        os.write(2, b"csi-driver: the shutdown did not finish in time; exiting now\n")
        os._exit(1)

    threading.Thread(target=expire, name="csi-shutdown-watchdog", daemon=True).start()


def _remove_socket(endpoint: Endpoint) -> None:
    if endpoint.scheme == "unix" and os.path.exists(endpoint.address):
        os.unlink(endpoint.address)
