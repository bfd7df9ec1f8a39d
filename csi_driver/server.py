"""The gRPC server: set the storage library up for the mode, register the services,
listen, and stop gracefully on SIGTERM/SIGINT. No CSI logic lives here.

Modes: ``controller`` (Identity + Controller: configures the backends and the
metadata store), ``node`` (Identity + Node: attach-only, no store, no backend
credentials), ``all`` (the three, one process).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc

from csi_driver import storage
from csi_driver.config import PluginConfig
from csi_driver.controller import ControllerService
from csi_driver.csi_pb import csi_pb2_grpc
from csi_driver.identity import IdentityService
from csi_driver.node import NodeService
from csi_driver.storage import connector

LOG = logging.getLogger(__name__)
MODES = ("controller", "node", "all")
#: Seconds in-flight calls get to finish after SIGTERM before they are cancelled.
GRACE_SECONDS = 30.0


class EndpointError(ValueError):
    """The endpoint is malformed or cannot be listened on."""


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


def _clear_stale_socket(path: str) -> None:
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


def setup_storage(config: PluginConfig, mode: str) -> list[storage.Backend]:
    """Configure the storage library for the mode; returns the backends started."""
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
    if mode in ("node", "all"):
        connector.prepare()  # on the main thread, before gRPC starts its workers
    if mode == "node":
        return []
    started: list[storage.Backend] = []
    try:
        for backend in config.backends:
            started.append(
                storage.Backend(
                    volume_backend_name=backend.name,
                    volume_driver=backend.driver,
                    **dict(backend.options),
                )
            )
    except Exception:
        for backend in started:
            backend.close()
        raise
    return started


def build_server(
    config: PluginConfig, mode: str, max_workers: int = 10
) -> tuple[grpc.Server, futures.ThreadPoolExecutor]:
    """A gRPC server with the services of the mode registered (not started), and its
    worker pool, which gRPC does not shut down itself."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    executor = futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="csi")
    server = grpc.server(executor)
    controller = mode in ("controller", "all")
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityService(config), server)
    if controller:
        csi_pb2_grpc.add_ControllerServicer_to_server(ControllerService(config), server)
    if mode in ("node", "all"):
        csi_pb2_grpc.add_NodeServicer_to_server(NodeService(config), server)
    return server, executor


def listen(server: grpc.Server, endpoint: Endpoint) -> None:
    if endpoint.scheme == "unix":
        os.makedirs(os.path.dirname(endpoint.address), exist_ok=True)
        _clear_stale_socket(endpoint.address)
    try:
        server.add_insecure_port(endpoint.grpc_address)
    except RuntimeError as exc:
        raise EndpointError(f"cannot listen on {endpoint}: {exc}") from None


def serve(
    config: PluginConfig,
    endpoint: Endpoint,
    mode: str,
    on_ready: Callable[[Endpoint], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then let in-flight calls finish and clean up."""
    backends = setup_storage(config, mode)
    server, executor = build_server(config, mode)
    stop = threading.Event()
    try:
        listen(server, endpoint)
        server.start()
        LOG.info("serving CSI %s mode on %s (driver %s, backends: %s)", mode, endpoint,
                 config.driver_name, ", ".join(b.name for b in backends) or "none")  # fmt: skip
        if on_ready is not None:
            on_ready(endpoint)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        stop.wait()
        LOG.info("stopping: letting in-flight calls finish (up to %.0fs)", GRACE_SECONDS)
        server.stop(GRACE_SECONDS).wait()
    finally:
        server.stop(0)
        executor.shutdown(wait=True, cancel_futures=True)
        for backend in backends:
            backend.close()
        if endpoint.scheme == "unix" and os.path.exists(endpoint.address):
            os.unlink(endpoint.address)
        LOG.info("stopped")
