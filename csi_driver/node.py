"""The CSI Node service: attach what the controller exported, format only blank
devices, mount, bind-publish, expand and report.

Everything the node needs arrives in ``publish_context``: the serialized Connection
(``connection.jsons`` from the storage library). It is rebuilt with
``storage.Connection.load`` and attached with os-brick; the node never reads the
metadata store and holds no backend credentials. What it staged is recorded in a
node-local ``NodeState`` so unstage can detach after a restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import grpc

from csi_driver import capabilities, errors, host_fs, node_identity, rpc, storage
from csi_driver import volume_requests as req
from csi_driver.config import PluginConfig
from csi_driver.controller import CONNECTION_KEY
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.node_state import NodeState
from csi_driver.storage import connector, runtime

LOG = logging.getLogger(__name__)


def _volume_lock(request: Any) -> list[str]:
    return [f"volume:{request.volume_id}"] if request.volume_id else []


class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, config: PluginConfig) -> None:
        self.config = config
        self.state = NodeState(config.node.state_dir)
        self.inflight = rpc.InFlightLocks()
        self._node_id: str | None = None

    # -- identity of this node ---------------------------------------------------------
    def node_id(self) -> str:
        """This node's id: its host name and the connector properties drivers need."""
        if self._node_id is None:
            props = connector.local_properties(
                runtime.settings(), multipath=self.config.node.multipath
            )
            node_id, dropped = node_identity.encode(
                self.config.host, props, self.config.node.max_volumes
            )
            if dropped:
                LOG.warning("node id would exceed %d bytes; left out: %s",
                            node_identity.MAX_BYTES, ", ".join(dropped))  # fmt: skip
            self._node_id = node_id
        return self._node_id

    @rpc.handler()
    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        topology = self.config.node.topology
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.node_id(),
            max_volumes_per_node=self.config.node.max_volumes,
            accessible_topology=csi_pb2.Topology(segments=dict(topology)) if topology else None,
        )

    @rpc.handler()
    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=capabilities.node_capabilities())

    # -- stage ------------------------------------------------------------------------------
    @rpc.handler(lock=_volume_lock)
    def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeStageVolumeResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.staging_target_path, "staging_target_path")
        access = req.single_capability(request)
        data = request.publish_context.get(CONNECTION_KEY)
        if not data:
            raise errors.InvalidRequest(
                f"publish_context has no {CONNECTION_KEY!r}: ControllerPublishVolume of this "
                "plugin must run first"
            )
        staging = request.staging_target_path
        record = self._record(request.volume_id)
        if record is not None and self._still_staged(record):
            return self._already_staged(record, staging, access)
        if record is not None:
            LOG.warning("volume %s: its stage record survives but its device or mount is gone "
                        "(node restarted?); staging it again", request.volume_id)  # fmt: skip
            self._drop_stale(record)
        if not os.path.isdir(staging):
            raise errors.InvalidRequest(f"staging_target_path {staging} is not a directory")
        try:
            connection = storage.Connection.load(data)
        except storage.SerializationError as exc:
            raise errors.InvalidRequest(f"publish_context[{CONNECTION_KEY!r}]: {exc}") from None
        if connection.volume_id != request.volume_id:
            raise errors.InvalidRequest(
                f"publish_context is for volume {connection.volume_id}, not {request.volume_id}"
            )

        undo: list[Callable[[], None]] = []
        try:
            path = connection.attach()
            undo.append(lambda: connection.detach(force=True))
            loop = None
            if path and host_fs.is_regular_file(path):
                loop = host_fs.loop_attach(path)  # file-backed volume (FileDriver)
                undo.append(lambda: host_fs.loop_detach(loop))
                device = loop
            elif path and host_fs.is_block_device(path):
                device = path
            else:
                raise errors.FailedPrecondition(
                    f"attach of volume {request.volume_id} gave {path!r}, which is neither a "
                    "block device nor a file"
                )
            fs_type = None
            if not access.block:
                fs_type = self._mount_staging(device, staging, request, access)
                undo.append(lambda: host_fs.unmount(staging))
            self.state.put(
                request.volume_id,
                {
                    "volume_id": request.volume_id,
                    "connection": connection.jsons,
                    "path": path,
                    "device": device,
                    "loop": loop,
                    "staging_path": os.path.realpath(staging),
                    "block": access.block,
                    "fs_type": fs_type,
                    "targets": {},
                },
            )
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    LOG.exception("undoing a failed stage of volume %s", request.volume_id)
            raise
        return csi_pb2.NodeStageVolumeResponse()

    def _still_staged(self, record: dict[str, Any]) -> bool:
        """Whether what a stage record describes still exists (a reboot clears mounts,
        loop devices and attachments, but not the record)."""
        if not host_fs.is_block_device(record["device"]):
            return False
        if record["loop"] and not _owns_loop(record):
            return False
        return record["block"] or host_fs.is_mounted(record["staging_path"])

    def _drop_stale(self, record: dict[str, Any]) -> None:
        """Forget a stage that no longer exists, releasing only what is still ours."""
        _release_on_host(record)
        self.state.delete(record["volume_id"])

    def _already_staged(
        self, record: dict[str, Any], staging: str, access: req.Access
    ) -> csi_pb2.NodeStageVolumeResponse:
        volume_id = record["volume_id"]
        if record["staging_path"] != os.path.realpath(staging):
            raise errors.FailedPrecondition(
                f"volume {volume_id} is already staged at {record['staging_path']} on this node"
            )
        if record["block"] != access.block or (
            access.fs_type and record["fs_type"] != access.fs_type
        ):
            raise errors.AlreadyExists(
                f"volume {volume_id} is already staged here as "
                f"{'a block device' if record['block'] else record['fs_type']}"
            )
        return csi_pb2.NodeStageVolumeResponse()

    def _mount_staging(
        self,
        device: str,
        staging: str,
        request: csi_pb2.NodeStageVolumeRequest,
        access: req.Access,
    ) -> str:
        """Mount the device at the staging path, making a filesystem only on a blank
        device; returns the filesystem type. A filesystem already there is used when
        none was requested (e.g. a volume restored from an XFS snapshot)."""
        requested = access.fs_type
        found = host_fs.probe_filesystem(device)
        if found is None:
            if access.read_only:
                raise errors.FailedPrecondition(
                    f"volume {request.volume_id} is blank and requested read-only: there is no "
                    "filesystem to mount and none can be made"
                )
            fs_type = requested or capabilities.DEFAULT_FILESYSTEM
            LOG.info("volume %s is blank; creating %s on %s", request.volume_id, fs_type, device)
            host_fs.make_filesystem(device, fs_type)
        elif found in capabilities.FILESYSTEMS and requested in ("", found):
            fs_type = found
        else:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} holds {found}, not "
                f"{requested or 'a supported filesystem'}; it is never reformatted"
            )
        options = list(request.volume_capability.mount.mount_flags)
        if access.read_only:
            options.append("ro")
        host_fs.mount(device, staging, fs_type, options)
        return fs_type

    @rpc.handler(lock=_volume_lock)
    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.staging_target_path, "staging_target_path")
        record = self._record(request.volume_id)
        if record is None or record["staging_path"] != os.path.realpath(
            request.staging_target_path
        ):
            return csi_pb2.NodeUnstageVolumeResponse()  # not staged there: nothing to do
        if published := [t for t in record["targets"] if host_fs.is_mounted(t)]:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is still published at {', '.join(published)}; "
                "NodeUnpublishVolume it first"
            )
        _release_on_host(record)
        storage.Connection.load(record["connection"]).detach()
        self.state.delete(request.volume_id)
        return csi_pb2.NodeUnstageVolumeResponse()

    # -- publish ----------------------------------------------------------------------------
    @rpc.handler(lock=_volume_lock)
    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.staging_target_path, "staging_target_path")
        req.require(request.target_path, "target_path")
        access = req.single_capability(request)
        record = self._record(request.volume_id)
        if record is None or record["staging_path"] != os.path.realpath(
            request.staging_target_path
        ):
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is not staged at {request.staging_target_path}; "
                "NodeStageVolume it first"
            )
        if access.block != record["block"]:
            raise errors.InvalidRequest(
                f"volume {request.volume_id} is staged as "
                f"{'a block device' if record['block'] else 'a filesystem'}"
            )
        target = os.path.abspath(request.target_path)
        read_only = request.readonly or access.read_only
        known = record["targets"].get(target)
        if known is not None and host_fs.is_mounted(target):
            if known["read_only"] != read_only:
                raise errors.AlreadyExists(
                    f"volume {request.volume_id} is already published at {target} "
                    f"{'read-only' if known['read_only'] else 'read-write'}"
                )
            return csi_pb2.NodePublishVolumeResponse()
        mode = request.volume_capability.access_mode.mode
        others = [t for t in record["targets"] if t != target and host_fs.is_mounted(t)]
        if mode == capabilities.Mode.SINGLE_NODE_SINGLE_WRITER and others:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is SINGLE_NODE_SINGLE_WRITER and already "
                f"published at {others[0]}"
            )
        if not os.path.isdir(os.path.dirname(target)):
            raise errors.InvalidRequest(f"the parent directory of target_path {target} is missing")
        if record["block"]:
            host_fs.ensure_file(target)
            source = record["device"]
        else:
            host_fs.ensure_dir(target)
            source = record["staging_path"]
        try:
            host_fs.bind_mount(source, target, read_only=read_only)
        except BaseException:
            with contextlib.suppress(Exception):
                host_fs.remove_path(target)
            raise
        record["targets"][target] = {"read_only": read_only}
        self.state.put(request.volume_id, record)
        return csi_pb2.NodePublishVolumeResponse()

    @rpc.handler(lock=_volume_lock)
    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.target_path, "target_path")
        target = os.path.abspath(request.target_path)
        record = self._record(request.volume_id)
        if record is None and not host_fs.is_mounted(target):
            raise errors.ObjectNotFound(
                f"volume {request.volume_id} is not staged or published on this node"
            )
        host_fs.unmount(target)
        host_fs.remove_path(target)
        if record is not None and target in record["targets"]:
            del record["targets"][target]
            self.state.put(request.volume_id, record)
        return csi_pb2.NodeUnpublishVolumeResponse()

    # -- stats and expansion -----------------------------------------------------------
    @rpc.handler()
    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.volume_path, "volume_path")
        record, path = self._located(request.volume_id, request.volume_path)
        Unit = csi_pb2.VolumeUsage
        if not os.path.exists(path) or not (record["block"] or host_fs.is_mounted(path)):
            raise errors.FailedPrecondition(f"volume {request.volume_id}: {path} is not mounted")
        if not host_fs.is_block_device(record["device"]):
            raise errors.FailedPrecondition(
                f"volume {request.volume_id}: device {record['device']} has gone away"
            )
        if record["block"]:
            size = host_fs.block_device_size(record["device"])
            return csi_pb2.NodeGetVolumeStatsResponse(usage=[Unit(unit=Unit.BYTES, total=size)])
        stats = host_fs.filesystem_stats(path)
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                Unit(
                    unit=Unit.BYTES,
                    total=stats["bytes_total"],
                    available=stats["bytes_available"],
                    used=stats["bytes_used"],
                ),
                Unit(
                    unit=Unit.INODES,
                    total=stats["inodes_total"],
                    available=stats["inodes_free"],
                    used=stats["inodes_used"],
                ),
            ],
        )

    @rpc.handler()
    def NodeGetVolumeHealth(
        self, request: csi_pb2.NodeGetVolumeHealthRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeHealthResponse:
        """Problems this node can see: the stage mount or a publish target gone, or
        the device detached under it. No entries means healthy."""
        req.require(request.volume_id, "volume_id")
        record = self._record(request.volume_id)
        if record is None:
            raise errors.ObjectNotFound(f"volume {request.volume_id} is not staged on this node")
        Entry = csi_pb2.VolumeHealth.VolumeHealthEntry
        problems = []
        if not host_fs.is_block_device(record["device"]):
            problems.append(Entry(status=csi_pb2.INACCESSIBLE, reason="DeviceMissing",
                                  message=f"device {record['device']} is gone"))  # fmt: skip
        paths = [] if record["block"] else [record["staging_path"]]
        paths += list(record["targets"])
        for path in paths:
            if not host_fs.is_mounted(path):
                problems.append(Entry(status=csi_pb2.INACCESSIBLE, reason="NotMounted",
                                      message=f"{path} is no longer mounted"))  # fmt: skip
        return csi_pb2.NodeGetVolumeHealthResponse(
            volume_health=csi_pb2.VolumeHealth(
                volume_id=request.volume_id, health_statuses=problems
            )
        )

    @rpc.handler(lock=_volume_lock)
    def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        req.require(request.volume_id, "volume_id")
        req.require(request.volume_path, "volume_path")
        record, _ = self._located(request.volume_id, request.volume_path)
        if request.HasField("volume_capability"):
            req.check_capabilities([request.volume_capability], "volume_capability")
        if record["loop"]:
            host_fs.loop_refresh(record["loop"])  # the backing file grew
        else:
            storage.Connection.load(record["connection"]).extend()
        size = host_fs.block_device_size(record["device"])
        wanted = request.capacity_range.required_bytes if request.HasField("capacity_range") else 0
        if wanted and size < wanted:
            raise errors.FailedPrecondition(
                f"device {record['device']} shows {size} bytes, less than the {wanted} requested; "
                "was ControllerExpandVolume done?"
            )
        if not record["block"]:
            host_fs.resize_filesystem(record["device"], record["staging_path"], record["fs_type"])
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    # -- helpers ------------------------------------------------------------------------------
    def _record(self, volume_id: str) -> dict[str, Any] | None:
        try:
            return self.state.get(volume_id)
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc)) from None

    def _located(self, volume_id: str, volume_path: str) -> tuple[dict[str, Any], str]:
        """The stage record of a volume and the path asked about, which must be its
        staging path or one of its published targets."""
        record = self._record(volume_id)
        if record is None:
            raise errors.ObjectNotFound(f"volume {volume_id} is not staged on this node")
        path = os.path.abspath(volume_path)
        real = os.path.realpath(volume_path)
        targets = {os.path.realpath(t) for t in record["targets"]} | set(record["targets"])
        if record["staging_path"] not in (path, real) and not {path, real} & targets:
            raise errors.ObjectNotFound(f"volume {volume_id} is not staged or published at {path}")
        return record, path


def _owns_loop(record: dict[str, Any]) -> bool:
    """Whether the recorded loop device still maps this volume's file (after a reboot
    the same /dev/loopN may back another volume)."""
    return host_fs.loop_backing_file(record["loop"]) == record.get("path")


def _release_on_host(record: dict[str, Any]) -> None:
    """Undo the host side of a stage: the staging mount, then the loop device while it
    is still this volume's (the os-brick detach is the caller's)."""
    if not record["block"]:
        host_fs.unmount(record["staging_path"])
    if record["loop"] and _owns_loop(record):
        host_fs.loop_detach(record["loop"])
