"""Crash-point sweep: the plugin is SIGKILLed at every crash point of every controller
operation (csi_driver/storage/crash_points.py), started again, and the CO's retry must
succeed with nothing lost, orphaned, duplicated or left in a transitional state.

Two passes on FileDriver + SQLite, one plugin directory that outlives every process:

- retried: the restarted plugin's reconciler waits (an hour), so the retried call itself
  must heal what the crash left (finish a publish, replace a half-made volume...);
- abandoned: nobody retries at first; the reconciler's start-up pass must bring every
  record to rest on its own, then the call is made again and must still succeed.

Every case ends with an audit of the store against the volume files and the host. A
bystander volume (with a snapshot and a connection) made first must survive it all.
The module prints how many points it tried and the totals found.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from csi_support import crash, plugin, report
from csi_support.requests import GiB, capability, create_request

from csi_driver.csi_pb import csi_pb2
from csi_driver.storage import crash_points

pytestmark = pytest.mark.skipif(not plugin.is_root(), reason="the site's checks use losetup")

Stubs = plugin.Stubs
Context = dict[str, Any]


def _volume(stubs: Stubs, name: str, **fields: Any) -> str:
    return stubs.controller.CreateVolume(create_request(name, **fields)).volume.volume_id


def _snapshot(stubs: Stubs, volume_id: str, name: str) -> str:
    request = csi_pb2.CreateSnapshotRequest(source_volume_id=volume_id, name=name)
    return stubs.controller.CreateSnapshot(request).snapshot.snapshot_id


def _node_id(stubs: Stubs) -> str:
    return stubs.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id


def _publish_request(ctx: Context) -> csi_pb2.ControllerPublishVolumeRequest:
    return csi_pb2.ControllerPublishVolumeRequest(
        volume_id=ctx["volume"], node_id=ctx["node"], volume_capability=capability()
    )


@dataclass(frozen=True)
class Operation:
    """A controller call to interrupt: what it needs first, the call, and what must
    hold once its retry succeeded."""

    name: str
    points: tuple[str, ...]
    prepare: Callable[[Stubs, str], Context]
    call: Callable[[Stubs, Context], Any]
    check: Callable[[Stubs, Context, Any, crash.Site], None]


def _prepare_volume(stubs: Stubs, tag: str) -> Context:
    return {"volume": _volume(stubs, f"{tag}-src"), "name": tag}


def _prepare_snapshot(stubs: Stubs, tag: str) -> Context:
    ctx = _prepare_volume(stubs, tag)
    ctx["snapshot"] = _snapshot(stubs, ctx["volume"], f"{tag}-snap")
    return ctx


def _prepare_published(stubs: Stubs, tag: str) -> Context:
    ctx = _prepare_volume(stubs, tag)
    ctx["node"] = _node_id(stubs)
    stubs.controller.ControllerPublishVolume(_publish_request(ctx))
    return ctx


def _prepare_publishable(stubs: Stubs, tag: str) -> Context:
    return {**_prepare_volume(stubs, tag), "node": _node_id(stubs)}


def _created_once(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    named = [r for r in site.records("volumes") if r.get("name") == ctx["name"]]
    assert [r["id"] for r in named] == [response.volume.volume_id]
    assert named[0]["status"] == "available"


def _volume_gone(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    assert ctx["volume"] not in {r["id"] for r in site.records("volumes")}


def _expanded(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    assert response.capacity_bytes == 2 * GiB
    (record,) = [r for r in site.records("volumes") if r["id"] == ctx["volume"]]
    assert record["size"] == 2 and record["status"] == "available"
    assert (site.volumes_dir / f"volume-{ctx['volume']}").stat().st_size == 2 * GiB
    # Finding 5: the expanded volume can be published afterwards.
    ctx["node"] = _node_id(stubs)
    stubs.controller.ControllerPublishVolume(_publish_request(ctx))
    stubs.controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=ctx["volume"], node_id=ctx["node"])
    )


def _published(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    assert "connection" in response.publish_context
    connections = [c for c in site.records("connections") if c["volume_id"] == ctx["volume"]]
    assert len(connections) == 1 and connections[0]["status"] == "connected"
    assert connections[0]["connection_info"]["driver_volume_type"] == "local"


def _unpublished(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    assert not [c for c in site.records("connections") if c["volume_id"] == ctx["volume"]]
    (record,) = [r for r in site.records("volumes") if r["id"] == ctx["volume"]]
    assert record["status"] == "available"


def _snapshotted(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    named = [s for s in site.records("snapshots") if s.get("name") == ctx["name"]]
    assert [s["id"] for s in named] == [response.snapshot.snapshot_id]
    assert response.snapshot.ready_to_use


def _snapshot_gone(stubs: Stubs, ctx: Context, response: Any, site: crash.Site) -> None:
    assert ctx["snapshot"] not in {s["id"] for s in site.records("snapshots")}


def _steps(operation: str) -> tuple[str, ...]:
    return tuple(p for p in crash_points.POINTS if p.startswith(f"{operation}."))


def _rpc(name: str) -> str:
    return f"rpc.{name}.before-response"


OPERATIONS = [
    Operation(
        "create", (*_steps("create_volume"), _rpc("CreateVolume")),
        lambda s, tag: {"name": tag},
        lambda s, ctx: s.controller.CreateVolume(create_request(ctx["name"]), timeout=60),
        _created_once,
    ),
    Operation(
        "clone", _steps("create_cloned_volume"), _prepare_volume,
        lambda s, ctx: s.controller.CreateVolume(create_request(
            ctx["name"], volume_content_source=csi_pb2.VolumeContentSource(
                volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=ctx["volume"]))),
            timeout=60),
        _created_once,
    ),
    Operation(
        "restore", _steps("create_volume_from_snapshot"), _prepare_snapshot,
        lambda s, ctx: s.controller.CreateVolume(create_request(
            ctx["name"], volume_content_source=csi_pb2.VolumeContentSource(
                snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
                    snapshot_id=ctx["snapshot"]))),
            timeout=60),
        _created_once,
    ),
    Operation(
        "delete", (*_steps("delete_volume"), _rpc("DeleteVolume")), _prepare_volume,
        lambda s, ctx: s.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=ctx["volume"]), timeout=60),
        _volume_gone,
    ),
    Operation(
        "expand", (*_steps("extend_volume"), _rpc("ControllerExpandVolume")), _prepare_volume,
        lambda s, ctx: s.controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(
                volume_id=ctx["volume"],
                capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)),
            timeout=60),
        _expanded,
    ),
    Operation(
        "publish", (*_steps("connect"), _rpc("ControllerPublishVolume")), _prepare_publishable,
        lambda s, ctx: s.controller.ControllerPublishVolume(_publish_request(ctx), timeout=60),
        _published,
    ),
    Operation(
        "unpublish", (*_steps("disconnect"), _rpc("ControllerUnpublishVolume")),
        _prepare_published,
        lambda s, ctx: s.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=ctx["volume"],
                                                     node_id=ctx["node"]), timeout=60),
        _unpublished,
    ),
    Operation(
        "snapshot", (*_steps("create_snapshot"), _rpc("CreateSnapshot")), _prepare_volume,
        lambda s, ctx: s.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(source_volume_id=ctx["volume"], name=ctx["name"]),
            timeout=60),
        _snapshotted,
    ),
    Operation(
        "delete-snapshot", (*_steps("delete_snapshot"), _rpc("DeleteSnapshot")),
        _prepare_snapshot,
        lambda s, ctx: s.controller.DeleteSnapshot(
            csi_pb2.DeleteSnapshotRequest(snapshot_id=ctx["snapshot"]), timeout=60),
        _snapshot_gone,
    ),
]  # fmt: skip

CONTROLLER_POINTS = {p for p in crash_points.POINTS
                     if not p.startswith(("node_", "rpc.Node"))}  # fmt: skip


def test_every_controller_crash_point_is_swept() -> None:
    swept = {p for op in OPERATIONS for p in op.points}
    assert swept == CONTROLLER_POINTS


def _cleanup(stubs: Stubs, site: crash.Site, keep: set[str]) -> None:
    """Remove what a case made (snapshots, connections, volumes), keeping the bystanders."""
    for snapshot in site.records("snapshots"):
        if snapshot["id"] not in keep:
            stubs.controller.DeleteSnapshot(
                csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot["id"])
            )
    for volume in site.records("volumes"):
        if volume["id"] in keep:
            continue
        stubs.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume["id"])
        )
        stubs.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume["id"]))


@pytest.mark.parametrize("mode", ["retried", "abandoned"])
def test_controller_crash_sweep(tmp_path: Path, mode: str, request: pytest.FixtureRequest) -> None:
    site = crash.Site(tmp_path)
    cases = [(op, point) for op in OPERATIONS for point in op.points
             if mode == "retried" or not point.startswith("rpc.")]  # fmt: skip
    started = time.monotonic()
    totals = {"lost": 0, "orphans": 0, "duplicates": 0, "stuck": 0, "leaked": 0}
    with site.running() as stubs:  # the bystanders, which every crash must leave alone
        keep_volume = _volume(stubs, "bystander")
        keep_snapshot = _snapshot(stubs, keep_volume, "bystander-snap")
        stubs.controller.ControllerPublishVolume(
            _publish_request({"volume": keep_volume, "node": _node_id(stubs)})
        )
    keep = {keep_volume, keep_snapshot}
    must_exist = {"volumes": {keep_volume}, "snapshots": {keep_snapshot}}
    delay = 3600.0 if mode == "retried" else 0.0
    with site.running() as stubs:
        ctx = cases[0][0].prepare(stubs, "case-0")
    for n, (op, point) in enumerate(cases):
        site.crash(point, lambda s, op=op, ctx=ctx: op.call(s, ctx))
        with site.running(reconcile_delay=delay) as stubs:
            if mode == "abandoned":
                site.wait_settled()
                settled = site.audit(must_exist)
                assert not settled.problems(), f"{point}, reconciled: {settled.problems()}"
            response = crash.retry(lambda op=op, ctx=ctx, stubs=stubs: op.call(stubs, ctx))
            op.check(stubs, ctx, response, site)
            audit = site.audit(must_exist)
            for key, found in vars(audit).items():
                totals[key] += len(found)
            assert not audit.problems(), f"{point} ({mode}): {audit.problems()}"
            _cleanup(stubs, site, keep)
            if n + 1 < len(cases):  # the next case's set-up, in the same process
                ctx = cases[n + 1][0].prepare(stubs, f"case-{n + 1}")
    bystander = [r for r in site.records("connections") if r["volume_id"] == keep_volume]
    assert len(bystander) == 1 and bystander[0]["status"] == "connected"
    took = time.monotonic() - started
    report.show(request, (
        f"crash sweep ({mode}): {len(cases)} crash points tried over "
        f"{len({op.name for op, _ in cases})} controller operations in {took:.0f}s, "
        f"{site.starts} plugin starts: " + ", ".join(f"{v} {k}" for k, v in totals.items())
    ))  # fmt: skip
