"""kubelet plugin registration (``pluginregistration.Registration``), in the plugin.

kubelet watches ``<kubelet root>/plugins_registry``: a socket appearing there asks to
register a plugin. kubelet calls GetInfo on it, then talks CSI to the endpoint it was
given (NodeGetInfo) and reports the outcome with NotifyRegistrationStatus. The socket
disappearing deregisters the plugin, so shutdown removes it before anything else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent import futures

import grpc

from csi_driver.kubelet.registration_pb import api_pb2, api_pb2_grpc
from csi_driver.server import EndpointError, clear_stale_socket

LOG = logging.getLogger(__name__)
#: ``PluginInfo.type`` of a CSI driver (kubelet's pluginregistration/v1 CSIPlugin).
PLUGIN_TYPE = "CSIPlugin"
#: Versions of kubelet's CSI plugin API served: kubelet accepts any 1.x.
SUPPORTED_VERSIONS = ("1.0.0",)
#: Seconds the registration server's calls get to end when it stops (they are instant).
STOP_SECONDS = 1.0


def socket_path(directory: str, driver_name: str) -> str:
    """Where kubelet looks for this driver's registration socket."""
    return os.path.join(directory, f"{driver_name}-reg.sock")


class RegistrationStatus:
    """What kubelet said last. While it refuses the plugin, ``problem`` says why and
    /healthz fails on it, so the liveness probe restarts the pod as the exit of
    node-driver-registrar would; a later successful registration clears it. Until kubelet
    first confirms the registration, ``pending`` says so and /readyz fails on it: kubelet
    confirms only after it has put the driver in CSINode and its topology labels on the
    Node, so a Ready node pod means the cluster already sees the driver on that node."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refusal: str | None = None
        self._confirmed = False

    def registered(self) -> None:
        with self._lock:
            self._refusal = None
            self._confirmed = True

    def refused(self, error: str) -> None:
        with self._lock:
            self._refusal = error or "no reason given"

    def problem(self) -> str | None:
        with self._lock:
            refusal = self._refusal
        return None if refusal is None else f"kubelet refused the registration: {refusal}"

    def pending(self) -> str | None:
        with self._lock:
            confirmed = self._confirmed
        return None if confirmed else "kubelet has not confirmed the registration yet"


class RegistrationService(api_pb2_grpc.RegistrationServicer):
    def __init__(self, driver_name: str, endpoint: str, status: RegistrationStatus) -> None:
        self.driver_name = driver_name
        #: The CSI socket as kubelet sees it (a host path, not the one in the pod).
        self.endpoint = endpoint
        self.status = status

    def GetInfo(
        self, request: api_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> api_pb2.PluginInfo:
        LOG.info("kubelet asked for the registration info of %s (CSI endpoint %s)",
                 self.driver_name, self.endpoint)  # fmt: skip
        return api_pb2.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.driver_name,
            endpoint=self.endpoint,
            supported_versions=SUPPORTED_VERSIONS,
        )

    def NotifyRegistrationStatus(
        self, request: api_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> api_pb2.RegistrationStatusResponse:
        if request.plugin_registered:
            LOG.info("kubelet registered the plugin %s", self.driver_name)
            self.status.registered()
        else:
            LOG.error("kubelet refused to register the plugin %s: %s; /healthz fails "
                      "until it registers", self.driver_name,
                      request.error or "no reason given")  # fmt: skip
            self.status.refused(request.error)
        return api_pb2.RegistrationStatusResponse()


class RegistrationServer:
    """The Registration service on ``<directory>/<driver_name>-reg.sock``, run beside
    the CSI server: ``start`` once the CSI endpoint answers (kubelet connects to it
    right after GetInfo), ``stop`` first at shutdown."""

    def __init__(
        self,
        directory: str,
        driver_name: str,
        kubelet_endpoint: str,
        status: RegistrationStatus | None = None,
    ) -> None:
        self.directory = directory
        self.path = socket_path(directory, driver_name)
        self.status = status or RegistrationStatus()
        self._service = RegistrationService(driver_name, kubelet_endpoint, self.status)
        self._server: grpc.Server | None = None
        self._executor: futures.ThreadPoolExecutor | None = None

    def start(self) -> None:
        # Not created when missing: kubelet only watches its own directory, so a
        # missing one means a wrong mount, which would otherwise go unnoticed.
        if not os.path.isdir(self.directory):
            raise EndpointError(f"registration directory {self.directory} does not "
                                "exist (kubelet's <root>/plugins_registry, mounted from "
                                "the host)")  # fmt: skip
        clear_stale_socket(self.path)
        executor = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="registration")
        server = grpc.server(executor)
        api_pb2_grpc.add_RegistrationServicer_to_server(self._service, server)
        try:
            server.add_insecure_port(f"unix:{self.path}")
        except RuntimeError as exc:
            executor.shutdown(wait=False)
            raise EndpointError(f"cannot listen on {self.path}: {exc}") from None
        server.start()
        self._server, self._executor = server, executor
        LOG.info("kubelet registration socket %s (CSI endpoint for kubelet: %s)",
                 self.path, self._service.endpoint)  # fmt: skip

    def stop(self) -> None:
        """Remove the socket (kubelet deregisters the plugin), then stop serving."""
        if self._server is None or self._executor is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        LOG.info("removed the kubelet registration socket %s", self.path)
        self._server.stop(0).wait(STOP_SECONDS)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._server = self._executor = None
