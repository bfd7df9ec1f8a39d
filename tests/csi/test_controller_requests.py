"""Controller RPCs through the real plugin: argument validation and the status code
the spec names for each bad request, idempotency, and the refusals that protect data.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import pytest
from csi_support.requests import GiB, Mode, Plugin, capability, create_request

from csi_driver.csi_pb import csi_pb2

Code = grpc.StatusCode
ZONE = "topology.csi-driver.cinder/zone"


def call_code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return Code.OK


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def node_id(csi_plugin: Plugin) -> str:
    return csi_plugin.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id


def from_snapshot(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def _create(csi_plugin: Plugin, name: str | None = None, **fields: Any) -> csi_pb2.Volume:
    return csi_plugin.controller.CreateVolume(create_request(name or unique("v"), **fields)).volume


# -- CreateVolume: bad requests --------------------------------------------------------------
def _cap_without_access_type() -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER)
    )


BAD_CREATES: list[tuple[str, dict[str, Any], grpc.StatusCode]] = [
    ("no-name", {"name": ""}, Code.INVALID_ARGUMENT),
    ("no-capabilities", {"volume_capabilities": []}, Code.INVALID_ARGUMENT),
    ("no-access-type", {"volume_capabilities": [_cap_without_access_type()]},
     Code.INVALID_ARGUMENT),
    ("unknown-access-mode", {"volume_capabilities": [capability(mode=Mode.UNKNOWN)]},
     Code.INVALID_ARGUMENT),
    ("unsupported-fs", {"volume_capabilities": [capability(fs_type="ntfs")]},
     Code.INVALID_ARGUMENT),
    ("multi-writer-filesystem",
     {"volume_capabilities": [capability(mode=Mode.MULTI_NODE_MULTI_WRITER)]},
     Code.INVALID_ARGUMENT),
    ("required-over-limit",
     {"capacity_range": csi_pb2.CapacityRange(required_bytes=2 * GiB, limit_bytes=GiB)},
     Code.INVALID_ARGUMENT),
    ("negative-size", {"capacity_range": csi_pb2.CapacityRange(required_bytes=-1)},
     Code.INVALID_ARGUMENT),
    ("limit-below-one-gib", {"capacity_range": csi_pb2.CapacityRange(limit_bytes=GiB // 2)},
     Code.OUT_OF_RANGE),
    ("limit-below-whole-gib",
     {"capacity_range": csi_pb2.CapacityRange(required_bytes=GiB + 1, limit_bytes=GiB + 2)},
     Code.OUT_OF_RANGE),
    ("unknown-parameter", {"parameters": {"colour": "blue"}}, Code.INVALID_ARGUMENT),
    ("unknown-backend", {"parameters": {"backend": "nope"}}, Code.INVALID_ARGUMENT),
    ("unknown-volume-type", {"parameters": {"volume_type": "platinum"}}, Code.INVALID_ARGUMENT),
    ("missing-source-snapshot",
     {"volume_content_source": csi_pb2.VolumeContentSource(
         snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=str(uuid.uuid4())))},
     Code.NOT_FOUND),
    ("missing-source-volume",
     {"volume_content_source": csi_pb2.VolumeContentSource(
         volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=str(uuid.uuid4())))},
     Code.NOT_FOUND),
    ("unreachable-topology",
     {"parameters": {"backend": "zoned"},
      "accessibility_requirements": csi_pb2.TopologyRequirement(
          requisite=[csi_pb2.Topology(segments={ZONE: "b"})])},
     Code.RESOURCE_EXHAUSTED),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "code"), [c[1:] for c in BAD_CREATES],
                         ids=[c[0] for c in BAD_CREATES])  # fmt: skip
def test_create_volume_refuses_bad_requests(
    csi_plugin: Plugin, fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    before = len(csi_plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries)
    request = create_request(fields.pop("name", unique("bad")))
    for key, value in fields.items():
        if isinstance(value, list):
            del getattr(request, key)[:]
            getattr(request, key).extend(value)
        elif isinstance(value, dict):
            getattr(request, key).update(value)
        else:
            getattr(request, key).CopyFrom(value)
    with pytest.raises(grpc.RpcError) as caught:
        csi_plugin.controller.CreateVolume(request)
    assert caught.value.code() == code, caught.value.details()
    assert caught.value.details(), "every refusal says why"
    after = len(csi_plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries)
    assert after == before, "a refused create leaves nothing behind"


def test_create_volume_rounds_up_to_whole_gib_and_reports_topology(csi_plugin: Plugin) -> None:
    volume = _create(
        csi_plugin, size=GiB + 1, parameters={"backend": "zoned", "volume_type": "gold"},
        accessibility_requirements=csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments={ZONE: "a", "other": "x"})]),
    )  # fmt: skip
    assert volume.capacity_bytes == 2 * GiB
    assert [dict(t.segments) for t in volume.accessible_topology] == [{ZONE: "a"}]
    assert volume.volume_context["backend"] == "zoned"


def test_same_name_returns_the_same_volume_and_conflicts_are_refused(csi_plugin: Plugin) -> None:
    name = unique("idem")
    first = _create(csi_plugin, name)
    again = _create(csi_plugin, name)
    assert again.volume_id == first.volume_id
    assert again.capacity_bytes == first.capacity_bytes
    conflicts = [
        create_request(name, size=5 * GiB),
        create_request(name, parameters={"backend": "zoned"}),
        create_request(name, volume_capabilities=[capability(block=True)]),
    ]
    for request in conflicts:
        code = call_code(lambda r=request: csi_plugin.controller.CreateVolume(r))
        assert code == Code.ALREADY_EXISTS


def test_fifty_concurrent_creates_of_one_name_make_exactly_one_volume(csi_plugin: Plugin) -> None:
    name = unique("race")
    listed = csi_pb2.ListVolumesRequest()
    before = {e.volume.volume_id for e in csi_plugin.controller.ListVolumes(listed).entries}

    def create() -> tuple[str, str]:
        try:
            return "ok", csi_plugin.controller.CreateVolume(create_request(name)).volume.volume_id
        except grpc.RpcError as exc:
            return exc.code().name, exc.details() or ""

    with futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: create(), range(50)))
    ids = {value for outcome, value in results if outcome == "ok"}
    assert len(ids) == 1, results
    assert {outcome for outcome, _ in results} <= {"ok", "ABORTED"}
    # Retrying after the burst (as a CO does on ABORTED) gets the same volume.
    assert csi_plugin.controller.CreateVolume(create_request(name)).volume.volume_id in ids
    after = {e.volume.volume_id for e in csi_plugin.controller.ListVolumes(listed).entries}
    assert after - before == ids, "exactly one new volume in the store"
    volume_files = [p.name for p in (csi_plugin.root / "volumes" / "embedded").iterdir()]
    assert sum(ids.copy().pop() in f for f in volume_files) == 1, "and one on the backend"


def test_volume_from_snapshot_and_clone_keep_their_source(csi_plugin: Plugin) -> None:
    source = _create(csi_plugin)
    snap = csi_plugin.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name=unique("s"), source_volume_id=source.volume_id)
    ).snapshot
    assert snap.ready_to_use and snap.size_bytes == GiB
    restored = _create(csi_plugin, volume_content_source=from_snapshot(snap.snapshot_id))
    assert restored.content_source.snapshot.snapshot_id == snap.snapshot_id
    clone = _create(csi_plugin, size=2 * GiB, volume_content_source=csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id)))  # fmt: skip
    assert clone.content_source.volume.volume_id == source.volume_id
    assert clone.capacity_bytes == 2 * GiB
    smaller = csi_plugin.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name=unique("s"), source_volume_id=clone.volume_id)
    ).snapshot
    code = call_code(
        lambda: _create(csi_plugin, volume_content_source=from_snapshot(smaller.snapshot_id))
    )
    assert code == Code.OUT_OF_RANGE
    # Deleting a volume with snapshots is refused: Cinder snapshots depend on their volume.
    code = call_code(lambda: csi_plugin.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=source.volume_id)))  # fmt: skip
    assert code == Code.FAILED_PRECONDITION


# -- DeleteVolume, publish, unpublish ----------------------------------------------------------
def test_delete_volume_is_idempotent_and_refuses_published_volumes(
    csi_plugin: Plugin, node_id: str
) -> None:
    ctl = csi_plugin.controller
    assert call_code(lambda: ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest())) == (
        Code.INVALID_ARGUMENT
    )
    assert call_code(lambda: ctl.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=str(uuid.uuid4())))) == Code.OK  # fmt: skip
    volume = _create(csi_plugin)
    publish = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()
    )
    ctl.ControllerPublishVolume(publish)
    delete = csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id)
    with pytest.raises(grpc.RpcError) as caught:
        ctl.DeleteVolume(delete)
    assert caught.value.code() == Code.FAILED_PRECONDITION
    assert "published" in (caught.value.details() or "")
    ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id))  # fmt: skip
    ctl.DeleteVolume(delete)
    ctl.DeleteVolume(delete)  # again: still OK


BAD_PUBLISHES: list[tuple[str, dict[str, Any], grpc.StatusCode]] = [
    ("no-volume-id", {"volume_id": ""}, Code.INVALID_ARGUMENT),
    ("no-node-id", {"node_id": ""}, Code.INVALID_ARGUMENT),
    ("no-capability", {"volume_capability": None}, Code.INVALID_ARGUMENT),
    ("unknown-volume", {"volume_id": "6f1f0d3e-0000-4000-8000-000000000000"}, Code.NOT_FOUND),
    ("foreign-node-id", {"node_id": "some-other-plugins-node"}, Code.NOT_FOUND),
    ("multi-node-on-single-node-volume",
     {"volume_capability": capability(mode=Mode.MULTI_NODE_READER_ONLY)},
     Code.FAILED_PRECONDITION),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "code"), [c[1:] for c in BAD_PUBLISHES],
                         ids=[c[0] for c in BAD_PUBLISHES])  # fmt: skip
def test_controller_publish_refuses_bad_requests(
    csi_plugin: Plugin, node_id: str, fields: dict[str, Any], code: grpc.StatusCode
) -> None:
    volume = _create(csi_plugin)
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()
    )
    for key, value in fields.items():
        if value is None:
            request.ClearField(key)
        elif isinstance(value, str):
            setattr(request, key, value)
        else:
            getattr(request, key).CopyFrom(value)
    assert call_code(lambda: csi_plugin.controller.ControllerPublishVolume(request)) == code
    csi_plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))


def test_publish_is_idempotent_and_incompatible_republish_is_refused(
    csi_plugin: Plugin, node_id: str
) -> None:
    ctl = csi_plugin.controller
    volume = _create(csi_plugin, parameters={"backend": "chap"})
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()
    )
    first = ctl.ControllerPublishVolume(request)
    second = ctl.ControllerPublishVolume(request)
    assert first.publish_context == second.publish_context
    document = json.loads(first.publish_context["connection"])
    assert document["class"] == "Connection"
    assert document["volumes"] == [], "the node gets the connection, not the volume record"
    assert "volume_driver" not in json.dumps(document["backends"]), "no backend configuration"
    assert len(first.publish_context["connection"]) + len("connection") <= 4096
    request.readonly = True
    assert call_code(lambda: ctl.ControllerPublishVolume(request)) == Code.ALREADY_EXISTS
    unpublish = csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume.volume_id,
                                                         node_id=node_id)  # fmt: skip
    ctl.ControllerUnpublishVolume(unpublish)
    ctl.ControllerUnpublishVolume(unpublish)  # not published any more: OK
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))


def test_attach_limit_of_the_node_is_enforced(csi_plugin: Plugin, node_id: str) -> None:
    """The node advertises max_volumes_per_node=3 (carried in its id)."""
    ctl = csi_plugin.controller
    volumes = [_create(csi_plugin) for _ in range(4)]
    published = []
    try:
        for volume in volumes[:3]:
            request = csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()
            )
            if call_code(lambda r=request: ctl.ControllerPublishVolume(r)) == Code.OK:
                published.append(volume)
        assert len(published) == 3
        fourth = csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volumes[3].volume_id, node_id=node_id, volume_capability=capability()
        )
        assert call_code(lambda: ctl.ControllerPublishVolume(fourth)) == Code.RESOURCE_EXHAUSTED
    finally:
        for volume in published:
            ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=volume.volume_id, node_id=node_id))  # fmt: skip
        for volume in volumes:
            ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))


def test_published_node_ids_are_listed(csi_plugin: Plugin, node_id: str) -> None:
    ctl = csi_plugin.controller
    volume = _create(csi_plugin)
    ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()))  # fmt: skip
    got = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id))
    assert list(got.status.published_node_ids) == [node_id]
    ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id))  # no node id: unpublish everywhere  # fmt: skip
    got = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id))
    assert list(got.status.published_node_ids) == []
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))


# -- listing, capacity, expansion, snapshots -----------------------------------------------------
def test_list_volumes_pages_cover_everything_once(csi_plugin: Plugin) -> None:
    made = {_create(csi_plugin).volume_id for _ in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = csi_plugin.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token)
        )
        assert len(page.entries) <= 2
        seen += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert made <= set(seen)
    for bad, code in (("not-a-token", Code.ABORTED),):
        assert call_code(lambda b=bad: csi_plugin.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(starting_token=b))) == code  # fmt: skip
    assert call_code(lambda: csi_plugin.controller.ListVolumes(
        csi_pb2.ListVolumesRequest(max_entries=-1))) == Code.INVALID_ARGUMENT  # fmt: skip


def test_get_capacity_reports_bytes_and_topology(csi_plugin: Plugin) -> None:
    ctl = csi_plugin.controller
    reply = ctl.GetCapacity(csi_pb2.GetCapacityRequest())
    assert reply.available_capacity > 0
    assert reply.minimum_volume_size.value == GiB
    elsewhere = ctl.GetCapacity(csi_pb2.GetCapacityRequest(
        parameters={"backend": "zoned"},
        accessible_topology=csi_pb2.Topology(segments={ZONE: "b"})))  # fmt: skip
    assert elsewhere.available_capacity == 0
    assert call_code(lambda: ctl.GetCapacity(csi_pb2.GetCapacityRequest(
        parameters={"backend": "nope"}))) == Code.INVALID_ARGUMENT  # fmt: skip


def test_expand_volume(csi_plugin: Plugin) -> None:
    ctl = csi_plugin.controller
    volume = _create(csi_plugin)

    def expand(**fields: Any) -> csi_pb2.ControllerExpandVolumeResponse:
        return ctl.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(volume_id=volume.volume_id, **fields)
        )

    assert call_code(lambda: expand()) == Code.INVALID_ARGUMENT  # no capacity_range
    grown = expand(capacity_range=csi_pb2.CapacityRange(required_bytes=3 * GiB))
    assert grown.capacity_bytes == 3 * GiB and grown.node_expansion_required
    same = expand(capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB))
    assert same.capacity_bytes == 3 * GiB, "never shrinks; a smaller request is already met"
    assert call_code(lambda: ctl.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=str(uuid.uuid4()), capacity_range=csi_pb2.CapacityRange(required_bytes=GiB))
    )) == Code.NOT_FOUND  # fmt: skip
    block = _create(csi_plugin, volume_capabilities=[capability(block=True)])
    reply = ctl.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=block.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)
        )
    )
    assert not reply.node_expansion_required, "a raw block volume needs no filesystem resize"


def test_snapshot_requests(csi_plugin: Plugin) -> None:
    ctl = csi_plugin.controller
    volume = _create(csi_plugin)
    other = _create(csi_plugin)
    name = unique("snap")
    assert call_code(lambda: ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name))) == Code.INVALID_ARGUMENT  # fmt: skip
    assert call_code(lambda: ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        source_volume_id=volume.volume_id))) == Code.INVALID_ARGUMENT  # fmt: skip
    assert call_code(lambda: ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=str(uuid.uuid4())))) == Code.NOT_FOUND  # fmt: skip
    first = ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=volume.volume_id)).snapshot  # fmt: skip
    again = ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=volume.volume_id)).snapshot  # fmt: skip
    assert again.snapshot_id == first.snapshot_id
    assert call_code(lambda: ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=other.volume_id))) == Code.ALREADY_EXISTS  # fmt: skip
    got = ctl.GetSnapshot(csi_pb2.GetSnapshotRequest(snapshot_id=first.snapshot_id)).snapshot
    assert got.source_volume_id == volume.volume_id and got.creation_time.seconds > 0
    listed = ctl.ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=volume.volume_id))
    assert [e.snapshot.snapshot_id for e in listed.entries] == [first.snapshot_id]
    assert call_code(lambda: ctl.GetSnapshot(csi_pb2.GetSnapshotRequest(
        snapshot_id=str(uuid.uuid4())))) == Code.NOT_FOUND  # fmt: skip
    delete = csi_pb2.DeleteSnapshotRequest(snapshot_id=first.snapshot_id)
    ctl.DeleteSnapshot(delete)
    ctl.DeleteSnapshot(delete)  # gone: still OK
    assert call_code(lambda: ctl.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest())) == (
        Code.INVALID_ARGUMENT
    )


def test_validate_volume_capabilities(csi_plugin: Plugin) -> None:
    ctl = csi_plugin.controller
    volume = _create(csi_plugin)
    ok = ctl.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id, volume_capabilities=[capability()]))  # fmt: skip
    assert ok.HasField("confirmed")
    refused = ctl.ValidateVolumeCapabilities(csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=volume.volume_id,
        volume_capabilities=[capability(mode=Mode.MULTI_NODE_READER_ONLY)]))  # fmt: skip
    assert not refused.HasField("confirmed") and "single-node" in refused.message
    unknown = csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=str(uuid.uuid4()), volume_capabilities=[capability()]
    )
    assert call_code(lambda: ctl.ValidateVolumeCapabilities(unknown)) == Code.NOT_FOUND


def test_a_driver_failure_is_internal_with_its_message_and_request_id(csi_plugin: Plugin) -> None:
    name = unique("faulty")
    with pytest.raises(grpc.RpcError) as caught:
        csi_plugin.controller.CreateVolume(create_request(name, parameters={"backend": "faulty"}))
    assert caught.value.code() == Code.INTERNAL
    details = caught.value.details() or ""
    assert "injected fault" in details and "create_volume" in details, details
    request_id = details.rsplit("request id ", 1)[1].rstrip(")")
    log = csi_plugin.log()
    assert f"[{request_id}] CreateVolume failed -> INTERNAL" in log
    assert "Traceback" in log.split(f"[{request_id}] CreateVolume failed", 1)[1][:5000]
    listed = csi_plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    assert all(e.volume.volume_context["backend"] != "faulty" for e in listed), "no record left"


def test_request_ids_and_failures_reach_the_log(csi_plugin: Plugin) -> None:
    call_code(lambda: csi_plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest()))
    log = csi_plugin.log()
    assert "DeleteVolume -> INVALID_ARGUMENT: volume_id is required" in log
