"""The CSI Controller service: volumes, snapshots, clones, expansion and exports,
done by the configured Cinder drivers with their state in the metadata store.

Each RPC reads as: check the request -> hold the name/id -> look up what exists
(idempotency) -> call the storage library -> build the response; before all that,
``require_backends`` answers UNAVAILABLE while the backends are still starting
(``startup.py``). Status codes come from ``errors.STATUS_CODES``; nothing here
imports Cinder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2, wrappers_pb2

from csi_driver import capabilities, errors, node_identity, rpc, storage
from csi_driver import publish_context as context_doc
from csi_driver import volume_requests as req
from csi_driver.config import PluginConfig
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.node_state import NodeState
from csi_driver.reconciler import Reconciler
from csi_driver.storage import Connection, NameInUse, NotFound, Snapshot, Volume, catalog, recovery

LOG = logging.getLogger(__name__)
GiB = req.GiB
CONNECTION_KEY = context_doc.CONNECTION_KEY
#: Volume metadata recording how the volume was requested, for idempotent retries.
ACCESS_KEY = "csi.access_type"
#: Connector property carrying the CSI node id, so published_node_ids can be listed.
NODE_ID_PROPERTY = "csi_node_id"
#: The spec's limit for a map field such as publish_context.
MAP_LIMIT = 4096
#: Statuses of a volume or snapshot that a failed operation left (an interrupted one
#: leaves a transitional status, which ``storage.recovery`` heals).
FAILED = ("error", "error_deleting")

T = TypeVar("T")
#: CreateVolume/CreateSnapshot: how often a name found taken is looked up again
#: before the holder is judged out of this controller's reach.
_NAME_RACE_ROUNDS = 3


@rpc.answer_unimplemented
class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        config: PluginConfig,
        local_node: NodeState | None = None,
        require_backends: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        #: Raises ``errors.Unavailable`` while the backends are starting (``startup.py``):
        #: every RPC but ControllerGetCapabilities needs them, or the store's view of them.
        self.require_backends = require_backends
        #: In ``all`` mode, the node service's records of what it staged on this host:
        #: the controller refuses to unpublish what they show still staged.
        self.local_node = local_node
        self.inflight = rpc.InFlightLocks()
        self.keys = context_doc.load(config.signing_key_file) if config.signing_key_file else None
        self.reconciler = Reconciler(
            self.inflight, config.reconcile_interval_seconds, config.reconcile_delay_seconds
        )

    # -- volumes ------------------------------------------------------------------
    @rpc.handler(lock=lambda r: [f"volume-name:{r.name}"] if r.name else [])
    def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeResponse:
        self.require_backends()
        req.require(request.name, "name")
        access = req.check_capabilities(request.volume_capabilities)
        backend_cfg, volume_type = req.parameters(self.config, request.parameters)
        size = req.size_gib(request.capacity_range if request.HasField("capacity_range") else None)
        source = (
            request.volume_content_source if request.HasField("volume_content_source") else None
        )
        requirements = (
            request.accessibility_requirements
            if request.HasField("accessibility_requirements")
            else None
        )
        req.check_requirements(backend_cfg, requirements)
        backend = storage.Backend.backends[backend_cfg.name]
        access_type = "block" if access.block else "mount"

        # The name's check and claim are one store step (create_unique): of several
        # replicas creating one name, one creates and the others answer with its volume.
        for _ in range(_NAME_RACE_ROUNDS):
            for found in storage.find_volumes(request.name):
                with self.inflight.hold([f"volume:{found.id}"]):
                    existing = self._settled_volume(found, replace_failed=True)
                if existing is None:
                    continue
                self._check_same_volume(existing, request, backend_cfg.name, volume_type, access)
                return csi_pb2.CreateVolumeResponse(volume=self._volume_message(existing, source))
            extra: dict[str, Any] = {
                "metadata": {ACCESS_KEY: access_type},
                "multiattach": access.multi_node,
                "unique_name": True,
            }
            if volume_type:
                extra["volume_type"] = volume_type
            try:
                volume = self._new_volume(
                    backend, backend_cfg.name, request.name, size, source, extra
                )
            except NameInUse:
                continue  # created meanwhile by another caller: answer with that one
            return csi_pb2.CreateVolumeResponse(volume=self._volume_message(volume, source))
        raise errors.AlreadyExists(
            f"volume name {request.name!r} is held by a volume on a backend this controller "
            "does not serve"
        )

    def _new_volume(
        self,
        backend: storage.Backend,
        backend_name: str,
        name: str,
        size: int,
        source: csi_pb2.VolumeContentSource | None,
        extra: dict[str, Any],
    ) -> Volume:
        """Create the volume CreateVolume asks for: empty, from a snapshot, or a clone."""
        if source is None:
            return backend.create_volume(size=size, name=name, **extra)
        if source.HasField("snapshot"):
            snapshot = self._source_snapshot(source.snapshot.snapshot_id, backend_name)
            if size * GiB < snapshot.volume_size * GiB:
                raise errors.OutOfRange(
                    f"snapshot {snapshot.id} holds {snapshot.volume_size} GiB; the requested "
                    f"capacity ({size} GiB) is smaller"
                )
            return snapshot.create_volume(size=size, name=name, **extra)
        if source.HasField("volume"):
            parent = self._source_volume(source.volume.volume_id, backend_name)
            if size < parent.size:
                raise errors.OutOfRange(
                    f"volume {parent.id} holds {parent.size} GiB; the requested capacity "
                    f"({size} GiB) is smaller"
                )
            return parent.clone(size=size, name=name, **extra)
        raise errors.InvalidRequest("volume_content_source names neither snapshot nor volume")

    def _check_same_volume(
        self,
        volume: Volume,
        request: csi_pb2.CreateVolumeRequest,
        backend: str,
        volume_type: Mapping[str, Any],
        access: req.Access,
    ) -> None:
        """A retried CreateVolume must ask for what exists; anything else is a conflict."""
        capacity = req.optional(request, "capacity_range")
        differences = []
        if volume.backend_name != backend:
            differences.append(f"backend {volume.backend_name!r}, not {backend!r}")
        if not req.fits(capacity, volume.size * GiB):
            differences.append(f"size {volume.size * GiB} bytes, outside the requested range")
        if volume_type and volume.volume_type.get("name") != volume_type["name"]:
            differences.append(f"volume type {volume.volume_type.get('name')!r}")
        if (volume.metadata or {}).get(ACCESS_KEY, "mount") != ("block" if access.block
                                                                 else "mount"):  # fmt: skip
            differences.append(f"access type {volume.metadata.get(ACCESS_KEY)}")
        if access.multi_node and not volume.multiattach:
            differences.append("single-node access only")
        source = (
            request.volume_content_source if request.HasField("volume_content_source") else None
        )
        wanted_snapshot = (
            source.snapshot.snapshot_id if source and source.HasField("snapshot") else None
        )
        wanted_volume = source.volume.volume_id if source and source.HasField("volume") else None
        if (volume.source_snapshot_id or None) != wanted_snapshot or (
            volume.source_volume_id or None
        ) != wanted_volume:
            differences.append("a different content source")
        if differences:
            raise errors.AlreadyExists(
                f"volume {request.name!r} exists ({volume.id}) with {'; '.join(differences)}"
            )

    def _source_snapshot(self, snapshot_id: str, backend: str) -> Snapshot:
        snapshot = _source(storage.get_snapshot, "snapshot", snapshot_id, backend)
        if snapshot.status != "available":
            raise errors.FailedPrecondition(f"source snapshot {snapshot_id} is {snapshot.status}")
        return snapshot

    def _source_volume(self, volume_id: str, backend: str) -> Volume:
        return _source(storage.get_volume, "volume", volume_id, backend)

    def _volume_message(
        self, volume: Volume, source: csi_pb2.VolumeContentSource | None = None
    ) -> csi_pb2.Volume:
        backend_cfg = self.config.backend(volume.backend_name)
        message = csi_pb2.Volume(
            volume_id=volume.id,
            capacity_bytes=volume.size * GiB,
            volume_context={"backend": volume.backend_name},
            accessible_topology=req.accessible_topology(backend_cfg) if backend_cfg else [],
        )
        if source is not None:
            message.content_source.CopyFrom(source)
        elif volume.source_snapshot_id:
            message.content_source.snapshot.snapshot_id = volume.source_snapshot_id
        elif volume.source_volume_id:
            message.content_source.volume.volume_id = volume.source_volume_id
        return message

    @rpc.handler(lock=lambda r: [f"volume:{r.volume_id}"] if r.volume_id else [])
    def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        found = _optional(storage.get_volume, request.volume_id)
        volume = self._settled_volume(found) if found is not None else None
        if volume is None:
            return csi_pb2.DeleteVolumeResponse()  # gone already: success, as the spec says
        if self._settle_dependents(volume):
            volume = storage.get_volume(volume.id)  # what is left, read again
        if connections := volume.connections:
            nodes = sorted({c.connector.get(NODE_ID_PROPERTY) or c.attached_host or "?"
                            for c in connections})  # fmt: skip
            raise errors.FailedPrecondition(
                f"volume {volume.id} is still published to {', '.join(nodes)}; "
                "ControllerUnpublishVolume it first"
            )
        volume.delete()
        return csi_pb2.DeleteVolumeResponse()

    @rpc.handler(lock=lambda r: [f"volume:{r.volume_id}"] if r.volume_id else [])
    def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise errors.InvalidRequest("capacity_range is required")
        size = req.size_gib(request.capacity_range)
        volume = self._volume(request.volume_id)
        if size > volume.size:
            volume.extend(size)
        block = request.HasField("volume_capability") and request.volume_capability.HasField(
            "block"
        )
        if not request.HasField("volume_capability"):
            block = (volume.metadata or {}).get(ACCESS_KEY) == "block"
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=volume.size * GiB, node_expansion_required=not block
        )

    def _volume(self, volume_id: str) -> Volume:
        """The volume, with an operation an earlier process left half-done healed first
        (the caller holds ``volume:<id>``); NOT_FOUND when it does not exist (any more)."""
        try:
            found = storage.get_volume(volume_id)
        except NotFound:
            raise errors.ObjectNotFound(f"volume {volume_id} does not exist") from None
        volume = self._settled_volume(found)
        if volume is None:
            raise errors.ObjectNotFound(f"volume {volume_id} does not exist")
        return volume

    @staticmethod
    def _settled_volume(volume: Volume, replace_failed: bool = False) -> Volume | None:
        """``volume`` at rest: an interrupted operation finished or undone (None when
        that removed it), and with ``replace_failed`` a failed volume deleted (a
        CreateVolume retry then makes a new one)."""
        if recovery.must_heal(volume):
            return recovery.heal_volume(volume)
        if replace_failed and volume.status in FAILED:
            LOG.warning("volume %s (%s) was left %s by an earlier attempt; replacing it",
                        volume.id, volume.name, volume.status)  # fmt: skip
            volume.delete()
            return None
        return volume

    def _settle_dependents(self, volume: Volume) -> bool:
        """Heal the volume's snapshots and connections that an interrupted operation
        left (a snapshot stuck 'creating' would otherwise block DeleteVolume forever);
        whether there was any."""
        healed = False
        for snapshot in storage.find_snapshots(volume_id=volume.id):
            if recovery.must_heal(snapshot):
                with self.inflight.hold([f"snapshot:{snapshot.id}"]):
                    recovery.heal_snapshot(snapshot)
                healed = True
        for connection in list(volume.connections):
            if recovery.must_heal(connection):
                recovery.heal_connection(connection)
                healed = True
        return healed

    # -- publishing -----------------------------------------------------------------
    @rpc.handler(lock=lambda r: [f"volume:{r.volume_id}"] if r.volume_id else [])
    def ControllerPublishVolume(
        self, request: csi_pb2.ControllerPublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerPublishVolumeResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        req.require(request.node_id, "node_id")
        access = req.single_capability(request)
        volume = self._volume(request.volume_id)
        props = self._node_properties(request.node_id)
        if access.multi_node and not volume.multiattach:
            raise errors.FailedPrecondition(
                f"volume {volume.id} was created for single-node access; it cannot be published "
                "with a multi-node access mode"
            )
        mode = "ro" if request.readonly or access.read_only else "rw"
        for connection in list(volume.connections):
            recovery.check_not_in_progress(connection)
            here = connection.connector.get(NODE_ID_PROPERTY) == request.node_id
            if connection.status == "disconnecting" or (
                connection.status == "connecting" and here and connection.attach_mode != mode
            ):
                # An interrupted unpublish (or a publish in another mode): finish, undo.
                recovery.heal_connection(connection)
                continue
            if here:
                if connection.status == "connecting":  # an interrupted publish: finish it
                    connection = recovery.heal_connection(connection, finish_connect=True)
                    return self._publish_response(connection)
                if connection.attach_mode != mode:
                    raise errors.AlreadyExists(
                        f"volume {volume.id} is already published to this node "
                        f"{_mode_text(connection.attach_mode)}; unpublish it first"
                    )
                return self._publish_response(connection)
            if not volume.multiattach:
                node = connection.connector.get(NODE_ID_PROPERTY) or connection.attached_host
                raise errors.FailedPrecondition(
                    f"volume {volume.id} is published to node {node} and is single-node"
                )
        self._check_attach_limit(request.node_id, props)
        props.pop(node_identity.MAX_VOLUMES, None)  # the plugin's, not the driver's
        connection = volume.connect({**props, NODE_ID_PROPERTY: request.node_id}, mode)
        try:
            return self._publish_response(connection)
        except errors.PluginError:
            connection.disconnect(force=True)
            raise

    def _check_attach_limit(self, node_id: str, props: Mapping[str, Any]) -> None:
        """The node's max_volumes_per_node (carried in its id) bounds what is published there."""
        limit = props.get(node_identity.MAX_VOLUMES)
        if not limit:
            return
        published = sum(
            1 for c in storage.find_connections() if c.connector.get(NODE_ID_PROPERTY) == node_id
        )
        if published >= limit:
            raise errors.ResourceExhausted(
                f"node {props.get('host')} already has {published} volume(s) published, its "
                f"limit (max_volumes_per_node={limit})"
            )

    def _node_properties(self, node_id: str) -> dict[str, Any]:
        try:
            return node_identity.decode(node_id)
        except node_identity.InvalidNodeId as exc:
            raise errors.ObjectNotFound(f"node {node_id!r} does not exist: {exc}") from None

    def _publish_response(self, connection: Connection) -> csi_pb2.ControllerPublishVolumeResponse:
        # The connection alone (its volume not loaded): what the node needs, nothing more.
        data = connection.backend.get_connection(connection.id).jsons
        publish_context = {CONNECTION_KEY: data}
        if self.keys is not None:
            publish_context[context_doc.SIGNATURE_KEY] = self.keys.sign(data)
        size = sum(len(k) + len(v.encode()) for k, v in publish_context.items())
        if size > MAP_LIMIT:
            raise errors.ResourceExhausted(
                f"the publish_context of volume {connection.volume_id} (its serialized "
                f"connection{' and signature' if self.keys else ''}) is {size} bytes, over "
                f"the {MAP_LIMIT}-byte limit"
            )
        LOG.info("volume %s: publish_context of %d bytes (%s%s)", connection.volume_id, size,
                 connection.protocol, ", signed" if self.keys else "")  # fmt: skip
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=publish_context)

    @rpc.handler(lock=lambda r: [f"volume:{r.volume_id}"] if r.volume_id else [])
    def ControllerUnpublishVolume(
        self, request: csi_pb2.ControllerUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerUnpublishVolumeResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        volume = _optional(storage.get_volume, request.volume_id)
        if volume is None:
            return csi_pb2.ControllerUnpublishVolumeResponse()
        targets = [
            c for c in volume.connections
            if not request.node_id or c.connector.get(NODE_ID_PROPERTY) == request.node_id
        ]  # fmt: skip
        attached = [c for c in targets if c.attached]
        if attached:
            raise errors.FailedPrecondition(
                f"volume {volume.id} is still attached on node "
                f"{attached[0].connector.get(NODE_ID_PROPERTY) or attached[0].attached_host} "
                f"(at {attached[0].path}); NodeUnstageVolume it there first"
            )
        if staging := self._staged_here(volume.id, {c.id for c in targets}):
            raise errors.FailedPrecondition(
                f"volume {volume.id} is still staged on this node at {staging}; "
                "NodeUnstageVolume it first"
            )
        for connection in targets:
            recovery.check_not_in_progress(connection)
        for connection in targets:
            connection.disconnect()
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def _staged_here(self, volume_id: str, connection_ids: set[str]) -> str | None:
        """Where this host's node service staged the volume through one of these
        connections (``all`` mode only: a node elsewhere keeps its records to itself)."""
        if self.local_node is None:
            return None
        try:
            record = self.local_node.get(volume_id)
        except ValueError:  # an id no stage record can have
            return None
        if record is None:
            return None
        staged = storage.Connection.load_for_host(record["connection"])
        return record["staging_path"] if staged.id in connection_ids else None

    @rpc.handler()
    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise errors.InvalidRequest("volume_capabilities is required")
        volume = self._volume(request.volume_id)
        problems = [p for p in (req.unsupported(c) for c in request.volume_capabilities) if p]
        multi = any(c.access_mode.mode in capabilities.MULTI_NODE_MODES
                    for c in request.volume_capabilities)  # fmt: skip
        if multi and not volume.multiattach:
            problems.append(f"volume {volume.id} was created for single-node access")
        if request.parameters:
            try:
                backend_cfg, _ = req.parameters(self.config, request.parameters)
            except errors.InvalidRequest as exc:
                problems.append(str(exc))
            else:
                if backend_cfg.name != volume.backend_name:
                    problems.append(f"volume is on backend {volume.backend_name!r}")
        if problems:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message="; ".join(problems))
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=request.volume_context,
                volume_capabilities=request.volume_capabilities,
                parameters=request.parameters,
                mutable_parameters=request.mutable_parameters,
            )
        )

    # -- listing ----------------------------------------------------------------------
    @rpc.handler()
    def ListVolumes(
        self, request: csi_pb2.ListVolumesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListVolumesResponse:
        self.require_backends()
        _check_max_entries(request.max_entries)
        page, token = catalog.volumes_page(
            request.max_entries, request.starting_token, keep=_listed
        )
        nodes: dict[str, set[str]] = {}
        for connection in catalog.connections_of([v.id for v in page]):  # one store read
            node = connection.connector.get(NODE_ID_PROPERTY)
            if node:
                nodes.setdefault(connection.volume_id, set()).add(node)
        return csi_pb2.ListVolumesResponse(
            entries=[
                csi_pb2.ListVolumesResponse.Entry(
                    volume=self._volume_message(v),
                    status=csi_pb2.ListVolumesResponse.VolumeStatus(
                        published_node_ids=sorted(nodes.get(v.id, ()))
                    ),
                )
                for v in page
            ],
            next_token=token,
        )

    @rpc.handler()
    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetVolumeResponse:
        self.require_backends()
        req.require(request.volume_id, "volume_id")
        volume = self._volume(request.volume_id)
        return csi_pb2.ControllerGetVolumeResponse(
            volume=self._volume_message(volume),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=_published_nodes(volume)
            ),
        )

    @rpc.handler()
    def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetCapacityResponse:
        self.require_backends()
        if request.volume_capabilities:
            req.check_capabilities(request.volume_capabilities)
        backend_cfg, _ = req.parameters(self.config, request.parameters)
        if request.HasField("accessible_topology") and not req.reachable(
            backend_cfg, [request.accessible_topology]
        ):
            return csi_pb2.GetCapacityResponse(available_capacity=0)
        stats = storage.Backend.backends[backend_cfg.name].stats(refresh=True)
        pools = stats.get("pools") or [stats]
        free = 0.0
        for pool in pools:
            value = pool.get("free_capacity_gb")
            if value in ("infinite", "unknown"):
                # The driver cannot say; do not make the CO refuse to schedule.
                return csi_pb2.GetCapacityResponse(
                    available_capacity=2**63 - 1, minimum_volume_size=_int64(GiB)
                )
            free += float(value or 0)
        return csi_pb2.GetCapacityResponse(
            available_capacity=int(free * GiB), minimum_volume_size=_int64(GiB)
        )

    @rpc.handler()
    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=capabilities.controller_capabilities()
        )

    # -- snapshots --------------------------------------------------------------------
    @rpc.handler(lock=lambda r: [f"snapshot-name:{r.name}"] if r.name else [])
    def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateSnapshotResponse:
        self.require_backends()
        req.require(request.source_volume_id, "source_volume_id")
        req.require(request.name, "name")
        unknown = sorted(k for k in request.parameters
                         if not k.startswith(req.K8S_PARAMETER_PREFIX))  # fmt: skip
        if unknown:
            raise errors.InvalidRequest(f"unknown snapshot parameter {unknown[0]!r}")
        for _ in range(_NAME_RACE_ROUNDS):
            answer = self._existing_snapshot(request)
            if answer is not None:
                return answer
            try:
                with self.inflight.hold([f"volume:{request.source_volume_id}"]):
                    volume = self._volume(request.source_volume_id)
                    snapshot = volume.create_snapshot(name=request.name, unique_name=True)
            except NameInUse:
                continue  # created meanwhile by another caller: judge that one
            return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot_message(snapshot))
        raise errors.AlreadyExists(
            f"snapshot name {request.name!r} is held by a snapshot on a backend this "
            "controller does not serve"
        )

    def _existing_snapshot(
        self, request: csi_pb2.CreateSnapshotRequest
    ) -> csi_pb2.CreateSnapshotResponse | None:
        """The answer for a snapshot name already taken, or None when it is free (an
        interrupted or failed earlier attempt is undone first)."""
        for existing in storage.find_snapshots(name=request.name):
            if recovery.must_heal(existing):  # undo or finish it, then judge the name
                keys = [f"snapshot:{existing.id}", f"volume:{existing.volume_id}"]
                with self.inflight.hold(keys):
                    recovery.heal_snapshot(existing)
                continue
            if existing.volume_id != request.source_volume_id:
                raise errors.AlreadyExists(
                    f"snapshot {request.name!r} exists ({existing.id}) of another volume "
                    f"({existing.volume_id})"
                )
            if existing.status in FAILED:
                LOG.warning("snapshot %s (%s) was left %s by an earlier attempt; replacing it",
                            existing.id, request.name, existing.status)  # fmt: skip
                with self.inflight.hold([f"snapshot:{existing.id}"]):
                    existing.delete()
                continue
            return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot_message(existing))
        return None

    @rpc.handler(lock=lambda r: [f"snapshot:{r.snapshot_id}"] if r.snapshot_id else [])
    def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteSnapshotResponse:
        self.require_backends()
        req.require(request.snapshot_id, "snapshot_id")
        snapshot = _optional(storage.get_snapshot, request.snapshot_id)
        if snapshot is not None and recovery.must_heal(snapshot):
            snapshot = recovery.heal_snapshot(snapshot)  # 'deleting': this finishes it
        if snapshot is not None:
            snapshot.delete()
        return csi_pb2.DeleteSnapshotResponse()

    @rpc.handler()
    def GetSnapshot(
        self, request: csi_pb2.GetSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetSnapshotResponse:
        self.require_backends()
        req.require(request.snapshot_id, "snapshot_id")
        snapshot = _optional(storage.get_snapshot, request.snapshot_id)
        if snapshot is None:
            raise errors.ObjectNotFound(f"snapshot {request.snapshot_id} does not exist")
        return csi_pb2.GetSnapshotResponse(snapshot=_snapshot_message(snapshot))

    @rpc.handler()
    def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListSnapshotsResponse:
        self.require_backends()
        _check_max_entries(request.max_entries)
        if request.snapshot_id:
            one = _optional(storage.get_snapshot, request.snapshot_id)
            page = [one] if one is not None and _listed(one) else []
            if request.source_volume_id:
                page = [s for s in page if s.volume_id == request.source_volume_id]
            token = ""
        else:
            page, token = catalog.snapshots_page(
                request.max_entries,
                request.starting_token,
                keep=_listed,
                volume_id=request.source_volume_id or None,
            )
        return csi_pb2.ListSnapshotsResponse(
            entries=[
                csi_pb2.ListSnapshotsResponse.Entry(snapshot=_snapshot_message(s)) for s in page
            ],
            next_token=token,
        )


def _source(lookup: Callable[[str], T], kind: str, object_id: str, backend: str) -> T:
    """A content source of CreateVolume: it must exist, on the backend the new volume
    goes to (drivers copy data only within their own backend)."""
    try:
        found = lookup(object_id)
    except NotFound:
        raise errors.ObjectNotFound(f"source {kind} {object_id} does not exist") from None
    where = found.backend_name  # type: ignore[attr-defined]
    if where != backend:
        raise errors.InvalidRequest(
            f"source {kind} {object_id} is on backend {where!r}; a volume made from it must "
            f"be created there, not on {backend!r}"
        )
    return found


def _int64(value: int) -> wrappers_pb2.Int64Value:
    return wrappers_pb2.Int64Value(value=value)


def _optional(lookup: Any, object_id: str) -> Any:
    """``lookup(id)``, or None when it does not exist (or its backend is not here)."""
    try:
        return lookup(object_id)
    except NotFound:
        return None


def _mode_text(mode: str) -> str:
    return "read-only" if mode == "ro" else "read-write"


def _published_nodes(volume: Volume) -> list[str]:
    return sorted({c.connector.get(NODE_ID_PROPERTY) for c in volume.connections} - {None})


def _snapshot_message(snapshot: Snapshot) -> csi_pb2.Snapshot:
    created = timestamp_pb2.Timestamp()
    created.FromJsonString(_rfc3339(snapshot.created_at))
    return csi_pb2.Snapshot(
        size_bytes=snapshot.volume_size * GiB,
        snapshot_id=snapshot.id,
        source_volume_id=snapshot.volume_id,
        creation_time=created,
        ready_to_use=snapshot.status == "available",
    )


def _rfc3339(stamp: str) -> str:
    """The store's ISO timestamps as RFC 3339 with a zone (what Timestamp parses)."""
    text = stamp.replace(" ", "T")
    if text.endswith("+00:00"):
        text = text[:-6]
    return text if text.endswith("Z") else text + "Z"


def _check_max_entries(max_entries: int) -> None:
    if max_entries < 0:
        raise errors.InvalidRequest(f"max_entries must not be negative, got {max_entries}")


def _listed(item: Volume | Snapshot) -> bool:
    """Whether List* shows it: not while it is being created or deleted."""
    return item.status not in ("creating", "deleting")
