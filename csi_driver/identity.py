"""The CSI Identity service: who this plugin is, what it offers, whether it is ready."""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from google.protobuf import wrappers_pb2

import csi_driver
from csi_driver import capabilities, rpc
from csi_driver.config import PluginConfig
from csi_driver.csi_pb import SPEC_VERSION, csi_pb2, csi_pb2_grpc

LOG = logging.getLogger(__name__)


@rpc.answer_unimplemented
class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(
        self, config: PluginConfig, not_ready: Callable[[], str | None] = lambda: None
    ) -> None:
        self.config = config
        #: Why the plugin cannot serve yet (e.g. its backends are starting), or None.
        self.not_ready = not_ready
        self.inflight = rpc.InFlightLocks()

    @rpc.handler()
    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(
            name=self.config.driver_name,
            vendor_version=csi_driver.__version__,
            manifest={"csi-spec": SPEC_VERSION,
                      "backends": ",".join(b.name for b in self.config.backends)},
        )  # fmt: skip

    @rpc.handler()
    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        return csi_pb2.GetPluginCapabilitiesResponse(
            capabilities=capabilities.plugin_capabilities(self.config)
        )

    @rpc.handler()
    def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        reason = self.not_ready()
        if reason is not None:
            LOG.info("Probe: not ready: %s", reason)
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=reason is None))
