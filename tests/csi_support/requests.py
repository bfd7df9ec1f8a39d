"""Builders for CSI requests the tests send, and a handle on a running plugin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csi_driver.csi_pb import csi_pb2
from csi_support import plugin

GiB = 1024**3
#: A password the test config sets on a backend; no log line may show it.
CONFIGURED_PASSWORD = "Configured-Chap-Pw-4711"
Mode = csi_pb2.VolumeCapability.AccessMode.Mode


class Plugin:
    """A running plugin process, its stubs and its directory."""

    def __init__(self, process: plugin.PluginProcess, stubs: plugin.Stubs, root: Path) -> None:
        self.process = process
        self.stubs = stubs
        self.controller = stubs.controller
        self.node = stubs.node
        self.identity = stubs.identity
        self.root = root

    def log(self) -> str:
        return self.process.log()


def capability(
    mode: int = Mode.SINGLE_NODE_WRITER, block: bool = False, fs_type: str = ""
) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode))
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.fs_type = fs_type
        cap.mount.SetInParent()
    return cap


def create_request(name: str, size: int = GiB, **fields: Any) -> csi_pb2.CreateVolumeRequest:
    fields.setdefault("volume_capabilities", [capability()])
    return csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=size), **fields
    )
