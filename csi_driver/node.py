"""The CSI Node service: attach what the controller exported, format only blank
devices, mount, bind-publish, expand and report.

Everything the node needs arrives in ``publish_context``: the serialized Connection
(``connection.jsons`` from the storage library), signed by the controller when a key
is configured (``node_trust`` checks it). It is attached with os-brick; the node never
reads the metadata store and holds no backend credentials.

The node acts only on what it can prove is its own. What it stages and publishes is
recorded in a node-local ``NodeState`` *before* it acts (state ``staging`` /
``publishing``) and marked done after, so that:

- a retry after a crash finds its own half-done work and finishes it (attach and loop
  set-up are idempotent; a mount is recognised by the device it shows);
- unstage and unpublish touch only mounts that show the recorded device, and remove
  only targets the record says this node created;
- a mount at a staging or target path that the node did not make is left alone and
  the request refused.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import grpc

from csi_driver import capabilities, errors, host_fs, node_identity, node_trust, rpc, storage
from csi_driver import publish_context as context_doc
from csi_driver import volume_requests as req
from csi_driver.config import PluginConfig
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.node_state import NodeState
from csi_driver.storage import connector, crash_points, runtime

LOG = logging.getLogger(__name__)

#: Stage record states: work begun (and maybe interrupted), and done.
STAGING, STAGED = "staging", "staged"
#: Publish target states, likewise.
PUBLISHING, PUBLISHED = "publishing", "published"


def _volume_lock(request: Any) -> list[str]:
    return [f"volume:{request.volume_id}"] if request.volume_id else []


#: Less than this between filesystem and device is mkfs rounding, not a grown volume.
_GROWTH_SLACK = 1 << 20


def _smaller_than_device(record: dict[str, Any], device: str, fs_size: int) -> bool:
    device_size = host_fs.block_device_size(device)
    if device_size - fs_size < _GROWTH_SLACK:
        return False
    LOG.info("volume %s: its %s filesystem spans %d of the device's %d bytes; growing it",
             record["volume_id"], record["fs_type"], fs_size, device_size)  # fmt: skip
    return True


@rpc.answer_unimplemented
class NodeService(csi_pb2_grpc.NodeServicer):
    def __init__(self, config: PluginConfig, mode: str = "node") -> None:
        self.config = config
        self.state = NodeState(config.node.state_dir)
        self.inflight = rpc.InFlightLocks()
        # Canonical once: every check compares canonical paths on both sides.
        self.local_roots = tuple(os.path.realpath(r) for r in config.local_roots(mode))
        self.mount_roots = tuple(os.path.realpath(r) for r in config.node.mount_roots)
        self.keys = context_doc.load(config.signing_key_file) if config.signing_key_file else None
        if self.keys is None:
            LOG.warning("no signing_key_file: this node trusts any publish_context it is "
                        "handed (see the README's security section)")  # fmt: skip
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
        staging = req.require_path(request.staging_target_path, "staging_target_path")
        access = req.single_capability(request)
        connection = node_trust.connection_from(
            request.volume_id, request.publish_context, self.keys
        )
        local = node_trust.local_device(connection, self.local_roots)
        real_staging = self._mountable(os.path.realpath(staging), "staging_target_path")
        record = self._record(request.volume_id)
        if record is not None and record.get("state", STAGED) == STAGED:
            if self._still_staged(record):
                return self._already_staged(record, staging, access)
            LOG.warning("volume %s: its stage record survives but its device or mount is gone "
                        "(node restarted?); staging it again", request.volume_id)  # fmt: skip
            self._release(record)
            self.state.delete(request.volume_id)
            record = None
        elif record is not None and (
            record["staging_path"] != real_staging or record["block"] != access.block
        ):
            LOG.warning("volume %s: an interrupted stage at %s is undone before staging it at "
                        "%s", request.volume_id, record["staging_path"], staging)  # fmt: skip
            self._release(record)
            self.state.delete(request.volume_id)
            record = None
        if not os.path.isdir(staging):
            raise errors.InvalidRequest(f"staging_target_path {staging} is not a directory")
        if record is None:
            _refuse_foreign_mount(real_staging, "staging_target_path")
            record = {
                "volume_id": request.volume_id,
                "state": STAGING,
                "connection": connection.jsons,
                "staging_path": real_staging,
                "block": access.block,
                "read_only": access.read_only,
                "fs_type": None,
                "targets": {},
            }
            self.state.put(request.volume_id, record)
        else:
            LOG.info("volume %s: finishing its interrupted stage", request.volume_id)
        crash_points.reach("node_stage.record-stored")
        self._stage(record, connection, local, request, access)
        return csi_pb2.NodeStageVolumeResponse()

    def _stage(
        self,
        record: dict[str, Any],
        connection: storage.Connection,
        local: str | None,
        request: csi_pb2.NodeStageVolumeRequest,
        access: req.Access,
    ) -> None:
        """Attach, format if blank, mount, and mark the record staged; every step is
        safe to run again after a crash (the record says what was begun)."""
        volume_id = record["volume_id"]
        try:
            path = connection.attach()
            if local is not None and (not path or os.path.realpath(path) != local):
                raise errors.FailedPrecondition(
                    f"local attach of volume {volume_id} gave {path!r}, not {local}"
                )
            backing = None
            if path and host_fs.is_regular_file(path):
                path = os.path.realpath(path)
                backing = host_fs.file_identity(path)
                device = _loop_attach(volume_id, path)  # file-backed volume (FileDriver)
                loop: str | None = device
            elif path and host_fs.is_block_device(path):
                device, loop = path, None
            else:
                raise errors.FailedPrecondition(
                    f"attach of volume {volume_id} gave {path!r}, which is neither a "
                    "block device nor a file"
                )
            crash_points.reach("node_stage.after-attach")
            record.update(connection=connection.jsons, path=path, device=device, loop=loop,
                          backing=backing)  # fmt: skip
            self.state.put(volume_id, record)
            if not access.block:
                staging = record["staging_path"]
                if host_fs.mounted_from(staging, device, block=False):
                    LOG.info("volume %s: %s is already mounted from %s (an interrupted stage)",
                             volume_id, staging, device)  # fmt: skip
                else:
                    _refuse_foreign_mount(staging, "staging_target_path")
                    record["fs_type"] = self._format_if_blank(record, device, request, access)
                    crash_points.reach("node_stage.after-mkfs")
                    made_here = "formatting" in record
                    if not made_here and not access.read_only:
                        self._grow_ext_to_device(record, device)
                    options = list(request.volume_capability.mount.mount_flags)
                    if access.read_only:
                        options.append("ro")
                    if record["fs_type"] == "xfs" and "nouuid" not in options:
                        # A clone or restored snapshot carries its source's XFS UUID, and
                        # XFS refuses a second mount of one UUID on a host.
                        options.append("nouuid")
                    host_fs.mount(device, staging, record["fs_type"], options)
                    crash_points.reach("node_stage.after-mount")
                    if not made_here and not access.read_only:
                        self._grow_xfs_to_device(record, device, staging)
                if not record.get("fs_type"):
                    record["fs_type"] = host_fs.mountinfo(staging)["fstype"]  # type: ignore[index]
            record["state"] = STAGED
            record.pop("formatting", None)
            self.state.put(volume_id, record)
        except Exception as exc:
            if errors.is_expected(exc):
                self._abandon(record)  # refused: leave nothing behind
            else:
                LOG.warning("volume %s: stage failed half-way; its record stays so that a "
                            "retry finishes it and NodeUnstageVolume releases it",
                            volume_id)  # fmt: skip
            raise

    def _format_if_blank(
        self,
        record: dict[str, Any],
        device: str,
        request: csi_pb2.NodeStageVolumeRequest,
        access: req.Access,
    ) -> str:
        """The filesystem to mount: the one on the device, or a new one on a blank device.
        A filesystem already there is used when none was requested (e.g. a volume restored
        from an XFS snapshot); a different one is never replaced."""
        volume_id = record["volume_id"]
        requested = access.fs_type
        own = record.get("formatting")  # our own mkfs, interrupted before anything mounted
        found = None if own else host_fs.probe_filesystem(device)
        if found is None:
            if access.read_only:
                raise errors.FailedPrecondition(
                    f"volume {volume_id} is blank and requested read-only: there is no "
                    "filesystem to mount and none can be made"
                )
            fs_type = own or requested or capabilities.DEFAULT_FILESYSTEM
            record["formatting"] = fs_type
            self.state.put(volume_id, record)
            crash_points.reach("node_stage.before-mkfs")
            LOG.info("volume %s is blank; creating %s on %s", volume_id, fs_type, device)
            host_fs.make_filesystem(device, fs_type, redo_own=bool(own))
            return fs_type
        if found in capabilities.FILESYSTEMS and requested in ("", found):
            return found
        raise errors.FailedPrecondition(
            f"volume {volume_id} holds {found}, not "
            f"{requested or 'a supported filesystem'}; it is never reformatted"
        )

    # A volume restored from a snapshot (or cloned) into a larger size has a grown device
    # but its source's filesystem size: it is grown when staged writable, as kubelet
    # expects of a driver (nothing calls NodeExpandVolume for it).
    def _grow_ext_to_device(self, record: dict[str, Any], device: str) -> None:
        """Before mounting: ext filesystems grow unmounted (see grow_unmounted_ext)."""
        if record["fs_type"] in ("ext3", "ext4") and _smaller_than_device(
            record, device, host_fs.filesystem_size(device, record["fs_type"])
        ):
            host_fs.grow_unmounted_ext(device)

    def _grow_xfs_to_device(self, record: dict[str, Any], device: str, staging: str) -> None:
        """After mounting: xfs grows only mounted."""
        if record["fs_type"] == "xfs" and _smaller_than_device(
            record, device, host_fs.filesystem_size(device, "xfs", staging)
        ):
            host_fs.resize_filesystem(device, staging, "xfs")

    def _abandon(self, record: dict[str, Any]) -> None:
        """Undo a stage refused half-way (wrong filesystem, read-only blank volume...):
        what it attached is released and the record dropped, so nothing is left."""
        try:
            self._release(record)
            self.state.delete(record["volume_id"])
        except Exception:
            LOG.exception("undoing a refused stage of volume %s", record["volume_id"])

    def _still_staged(self, record: dict[str, Any]) -> bool:
        """Whether what a stage record describes still exists (a reboot clears mounts,
        loop devices and attachments, but not the record)."""
        if not host_fs.is_block_device(record["device"]):
            return False
        if record["loop"] and not _owns_loop(record):
            return False
        return record["block"] or host_fs.mounted_from(
            record["staging_path"], record["device"], block=False
        )

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

    @rpc.handler(lock=_volume_lock)
    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        req.require(request.volume_id, "volume_id")
        staging = req.require_path(request.staging_target_path, "staging_target_path")
        record = self._record(request.volume_id)
        if record is None or record["staging_path"] != os.path.realpath(staging):
            return csi_pb2.NodeUnstageVolumeResponse()  # not staged there: nothing to do
        published = [t for t in record["targets"] if _shows_volume(record, t)]
        if published:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is still published at {', '.join(published)}; "
                "NodeUnpublishVolume it first"
            )
        self._release(record)
        self.state.delete(request.volume_id)
        return csi_pb2.NodeUnstageVolumeResponse()

    def _release(self, record: dict[str, Any]) -> None:
        """Undo the host side of a (maybe half-done) stage, touching only what is this
        volume's: the staging mount if it shows the volume's device, the loop device while
        it maps the volume's file, then the os-brick attachment."""
        volume_id = record["volume_id"]
        if not record["block"]:
            _unmount_own(record, record["staging_path"], block=False)
        crash_points.reach("node_unstage.after-unmount")
        loop = record.get("loop") if record.get("loop") and _owns_loop(record) else None
        if loop is None and record.get("backing"):
            loop = host_fs.loop_with(record["backing"])  # its file deleted under it
        elif loop is None and record.get("path") and host_fs.is_regular_file(record["path"]):
            loop = host_fs.loop_find(record["path"])  # made, then interrupted before recorded
        if loop:
            host_fs.loop_detach(loop)
        connection = storage.Connection.load_for_host(record["connection"])
        if not connection.attached and record.get("state") == STAGING:
            try:  # interrupted before its device was recorded: find it again
                connection.attach()
            except storage.StorageError as exc:
                LOG.info("volume %s: not attached, nothing to detach (%s)", volume_id, exc)
        connection.detach()
        crash_points.reach("node_unstage.after-detach")

    # -- publish ----------------------------------------------------------------------------
    @rpc.handler(lock=_volume_lock)
    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        req.require(request.volume_id, "volume_id")
        staging = req.require_path(request.staging_target_path, "staging_target_path")
        target = _target(request.target_path)
        access = req.single_capability(request)
        record = self._record(request.volume_id)
        if (
            record is None
            or record.get("state", STAGED) != STAGED
            or record["staging_path"] != os.path.realpath(staging)
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
        read_only = request.readonly or access.read_only
        self._mountable(target, "target_path")
        target = _recorded_target(record, target, request.target_path)
        known = record["targets"].get(target)
        ours = _shows_volume(record, target)
        if known is not None and ours:
            if known.get("read_only") != read_only:
                raise errors.AlreadyExists(
                    f"volume {request.volume_id} is already published at {target} "
                    f"{'read-only' if known['read_only'] else 'read-write'}"
                )
            if known.get("state", PUBLISHED) == PUBLISHED:
                return csi_pb2.NodePublishVolumeResponse()
        mode = request.volume_capability.access_mode.mode
        others = [t for t in record["targets"] if t != target and _shows_volume(record, t)]
        if mode == capabilities.Mode.SINGLE_NODE_SINGLE_WRITER and others:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is SINGLE_NODE_SINGLE_WRITER and already "
                f"published at {others[0]}"
            )
        if not os.path.isdir(os.path.dirname(target)):
            raise errors.InvalidRequest(f"the parent directory of target_path {target} is missing")
        if not ours:
            _refuse_foreign_mount(target, "target_path")
        created = known["created"] if known and "created" in known else not os.path.lexists(target)
        record["targets"][target] = {"read_only": read_only, "state": PUBLISHING,
                                     "created": created}  # fmt: skip
        self.state.put(request.volume_id, record)
        crash_points.reach("node_publish.record-stored")
        if not ours:
            self._bind(record, target, read_only, created)
        elif read_only and not host_fs.is_read_only(target):
            host_fs.remount_read_only(target)  # interrupted between the bind and its remount
        record["targets"][target]["state"] = PUBLISHED
        self.state.put(request.volume_id, record)
        return csi_pb2.NodePublishVolumeResponse()

    def _bind(self, record: dict[str, Any], target: str, read_only: bool, created: bool) -> None:
        if record["block"]:
            host_fs.ensure_file(target)
            source = record["device"]
        else:
            host_fs.ensure_dir(target)
            source = record["staging_path"]
        crash_points.reach("node_publish.after-target")
        try:
            host_fs.bind_mount(source, target, read_only=read_only)
        except BaseException:
            if created:
                with contextlib.suppress(Exception):
                    host_fs.remove_path(target)
            del record["targets"][target]
            self.state.put(record["volume_id"], record)
            raise
        crash_points.reach("node_publish.after-mount")

    @rpc.handler(lock=_volume_lock)
    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        req.require(request.volume_id, "volume_id")
        target = _target(request.target_path)
        record = self._record(request.volume_id)
        if record is not None:
            target = _recorded_target(record, target, request.target_path)
        known = record["targets"].get(target) if record is not None else None
        if known is None:
            if host_fs.is_mounted(target):
                if record is None:
                    raise errors.ObjectNotFound(
                        f"volume {request.volume_id} is not staged or published on this node; "
                        f"the mount at {target} is not its own and is left untouched"
                    )
                LOG.warning("volume %s: NodeUnpublishVolume of %s, where this node never "
                            "published it; the mount there is left untouched",
                            request.volume_id, target)  # fmt: skip
            return csi_pb2.NodeUnpublishVolumeResponse()  # not published there: nothing to do
        _unmount_own(record, target, block=record["block"])  # type: ignore[index]
        crash_points.reach("node_unpublish.after-unmount")
        if known.get("created", None) is True:
            host_fs.remove_path(target)
        elif known.get("created", None) is None and os.path.isdir(target):
            with contextlib.suppress(host_fs.HostError):  # a record from before "created"
                host_fs.remove_path(target)  # an empty directory only (rmdir)
        crash_points.reach("node_unpublish.after-remove")
        del record["targets"][target]  # type: ignore[index]
        self.state.put(request.volume_id, record)  # type: ignore[arg-type]
        return csi_pb2.NodeUnpublishVolumeResponse()

    # -- stats and expansion -----------------------------------------------------------
    @rpc.handler()
    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        req.require(request.volume_id, "volume_id")
        path = req.require_path(request.volume_path, "volume_path", absolute=False)
        record, path = self._located(request.volume_id, path)
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
        record = self._staged(request.volume_id)
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
        path = req.require_path(request.volume_path, "volume_path", absolute=False)
        record, _ = self._located(request.volume_id, path)
        if request.HasField("volume_capability"):
            req.check_capabilities([request.volume_capability], "volume_capability")
        if record.get("read_only") and not record["block"]:
            raise errors.FailedPrecondition(
                f"volume {request.volume_id} is staged read-only; its filesystem cannot be "
                "grown until it is staged writable"
            )
        if record["loop"]:
            host_fs.loop_refresh(record["loop"])  # the backing file grew
        else:
            storage.Connection.load_for_host(record["connection"]).extend()
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
    def _mountable(self, canonical: str, field: str) -> str:
        """A canonical path the node may mount on: under one of ``node.mount_roots``."""
        if not host_fs.is_under(canonical, self.mount_roots):
            raise errors.InvalidRequest(
                f"{field} {canonical} is not under the node's mount_roots "
                f"({', '.join(self.mount_roots)}); the plugin mounts nowhere else"
            )
        return canonical

    def _record(self, volume_id: str) -> dict[str, Any] | None:
        try:
            return self.state.get(volume_id)
        except ValueError as exc:
            raise errors.InvalidRequest(str(exc)) from None

    def _staged(self, volume_id: str) -> dict[str, Any]:
        """The record of a volume whose stage completed; NOT_FOUND otherwise."""
        record = self._record(volume_id)
        if record is None or record.get("state", STAGED) != STAGED:
            raise errors.ObjectNotFound(f"volume {volume_id} is not staged on this node")
        return record

    def _located(self, volume_id: str, volume_path: str) -> tuple[dict[str, Any], str]:
        """The stage record of a volume and the path asked about, which must be its
        staging path or one of its published targets."""
        record = self._staged(volume_id)
        path = os.path.abspath(volume_path)
        real = os.path.realpath(volume_path)
        targets = {os.path.realpath(t) for t in record["targets"]} | set(record["targets"])
        if record["staging_path"] not in (path, real) and not {path, real} & targets:
            raise errors.ObjectNotFound(f"volume {volume_id} is not staged or published at {path}")
        return record, path


def _target(value: str) -> str:
    """target_path made canonical (parent resolved, the target itself no symlink)."""
    path = req.require_path(value, "target_path")
    try:
        return host_fs.canonical_target(path)
    except host_fs.HostError as exc:
        raise errors.InvalidRequest(f"target_path: {exc}") from None


def _recorded_target(record: dict[str, Any], target: str, given: str) -> str:
    """The key the record knows a target by: canonical, or as given (records written
    before targets were made canonical keep the CO's path string)."""
    if target not in record["targets"] and os.path.abspath(given) in record["targets"]:
        return os.path.abspath(given)
    return target


def _shows_volume(record: dict[str, Any], path: str) -> bool:
    """Whether the top mount at path is this volume (staged device, or its filesystem)."""
    return host_fs.mounted_from(path, record["device"], block=record["block"])


def _unmount_own(record: dict[str, Any], path: str, block: bool) -> None:
    """Unmount what is mounted at path if it shows this volume's recorded device;
    anything else mounted there is refused and left alone. Nothing mounted: nothing to do."""
    if not host_fs.is_mounted(path):
        return
    device = record.get("device")
    if not device or not host_fs.mounted_from(path, device, block=block):
        raise errors.FailedPrecondition(
            f"volume {record['volume_id']}: the mount at {path} is not this volume's "
            "(something was mounted over it); it is left untouched"
        )
    host_fs.unmount(path)


def _refuse_foreign_mount(path: str, field: str) -> None:
    """Refuse to mount over (and so hide) a mount this node did not make, at the path or
    anywhere below it (another volume's staging or pod target, say)."""
    if host_fs.is_mounted(path):
        raise errors.FailedPrecondition(
            f"{field} {path} already holds a mount that is not this volume's; "
            "the plugin never mounts over it"
        )
    beneath = host_fs.mounts_beneath(path)
    if beneath:
        raise errors.FailedPrecondition(
            f"{field} {path} has {len(beneath)} mount(s) below it ({beneath[0]}"
            f"{', ...' if len(beneath) > 1 else ''}); mounting there would hide them"
        )


def _loop_attach(volume_id: str, path: str) -> str:
    try:
        return host_fs.loop_attach(path)
    except host_fs.HostError:
        if not os.path.exists(path):  # deleted while we attached it
            raise errors.ObjectNotFound(f"volume {volume_id}: its file {path} is gone") from None
        raise


def _owns_loop(record: dict[str, Any]) -> bool:
    """Whether the recorded loop device still maps this volume's file (after a reboot
    the same /dev/loopN may back another volume). Compared by the file's recorded device
    and inode (which hold after the file is deleted), else by inode and by canonical path
    on both sides (losetup reports the resolved path)."""
    loop, path = record.get("loop"), record.get("path")
    if not loop or not path:
        return False
    if record.get("backing"):
        return host_fs.loop_maps(loop, record["backing"])
    if host_fs.loop_find(path) == os.path.realpath(loop):
        return True
    backing = host_fs.loop_backing_file(loop)
    return backing is not None and os.path.realpath(backing) == os.path.realpath(path)
