"""Every capability the plugin advertises, computed in one place from its config.

Each RPC that depends on a capability checks it through these sets, so what is
advertised and what is served cannot drift apart.
"""

from __future__ import annotations

from csi_driver.config import PluginConfig
from csi_driver.csi_pb import csi_pb2

Ctrl = csi_pb2.ControllerServiceCapability.RPC
NodeRpc = csi_pb2.NodeServiceCapability.RPC
Mode = csi_pb2.VolumeCapability.AccessMode.Mode

CONTROLLER_RPCS = (
    Ctrl.CREATE_DELETE_VOLUME,
    Ctrl.PUBLISH_UNPUBLISH_VOLUME,
    Ctrl.LIST_VOLUMES,
    Ctrl.GET_CAPACITY,
    Ctrl.CREATE_DELETE_SNAPSHOT,
    Ctrl.LIST_SNAPSHOTS,
    Ctrl.CLONE_VOLUME,
    Ctrl.PUBLISH_READONLY,
    Ctrl.EXPAND_VOLUME,
    Ctrl.LIST_VOLUMES_PUBLISHED_NODES,
    Ctrl.GET_VOLUME,
    Ctrl.SINGLE_NODE_MULTI_WRITER,
    Ctrl.GET_SNAPSHOT,
)

NODE_RPCS = (
    NodeRpc.STAGE_UNSTAGE_VOLUME,
    NodeRpc.GET_VOLUME_STATS,
    NodeRpc.EXPAND_VOLUME,
    NodeRpc.SINGLE_NODE_MULTI_WRITER,
    NodeRpc.GET_VOLUME_HEALTH,
)

#: Access modes a volume of any backend can serve (one node at a time).
SINGLE_NODE_MODES = frozenset(
    {
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_READER_ONLY,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
    }
)
#: Modes that need a multiattach volume; several writers only on raw block, since
#: the filesystems made here (ext4, xfs) are not cluster filesystems.
MULTI_NODE_MODES = frozenset(
    {Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER, Mode.MULTI_NODE_MULTI_WRITER}
)
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
#: Filesystems the node creates on a blank device; "" means the default.
FILESYSTEMS = ("ext4", "ext3", "xfs")
DEFAULT_FILESYSTEM = "ext4"


def plugin_capabilities(config: PluginConfig) -> list[csi_pb2.PluginCapability]:
    """GetPluginCapabilities: the controller service, topology when configured, and
    online expansion. These describe the plugin as a whole, so a node-mode process
    reports the controller service too (its controller runs elsewhere), as COs and
    csi-sanity expect."""
    caps = [
        csi_pb2.PluginCapability(
            service=csi_pb2.PluginCapability.Service(
                type=csi_pb2.PluginCapability.Service.CONTROLLER_SERVICE
            )
        )
    ]
    if config.has_topology:
        caps.append(
            csi_pb2.PluginCapability(
                service=csi_pb2.PluginCapability.Service(
                    type=csi_pb2.PluginCapability.Service.VOLUME_ACCESSIBILITY_CONSTRAINTS
                )
            )
        )
    caps.append(
        csi_pb2.PluginCapability(
            volume_expansion=csi_pb2.PluginCapability.VolumeExpansion(
                type=csi_pb2.PluginCapability.VolumeExpansion.ONLINE
            )
        )
    )
    return caps


def controller_capabilities() -> list[csi_pb2.ControllerServiceCapability]:
    return [
        csi_pb2.ControllerServiceCapability(rpc=csi_pb2.ControllerServiceCapability.RPC(type=rpc))
        for rpc in CONTROLLER_RPCS
    ]


def node_capabilities() -> list[csi_pb2.NodeServiceCapability]:
    return [
        csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=rpc))
        for rpc in NODE_RPCS
    ]
