"""Crash-point sweep of the node: a node process (``--mode node``, beside a controller
process) is SIGKILLed at every crash point of NodeStage (before, during and after mkfs),
NodeUnstage, NodePublish, NodeUnpublish and NodeExpand, started again, and the CO's
retry must succeed with the data written before intact and no loop device or mount
leaked once the volume is unstaged.

Stage points are swept twice: on a blank volume (the first stage formats it; a crash
half-way through mkfs must not leave a filesystem the retry refuses) and on a volume
holding data (the retry must mount it, never format it).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import crash, plugin, report
from csi_support.requests import GiB, capability, create_request

from csi_driver.csi_pb import csi_pb2
from csi_driver.storage import crash_points

pytestmark = pytest.mark.skipif(not plugin.is_root(), reason="node flows need root")

NODE_POINTS = {p for p in crash_points.POINTS if p.startswith(("node_", "rpc.Node"))}
STAGE_POINTS = sorted(p for p in NODE_POINTS if p.startswith("node_stage."))
#: Stage points a volume that already holds a filesystem passes (no mkfs).
RESTAGE_POINTS = [p for p in STAGE_POINTS if "mkfs" not in p]


class NodeSite:
    """A controller process for the whole sweep and node processes started in turn."""

    def __init__(self, root: Path, controller: plugin.Stubs) -> None:
        self.root = root
        self.controller = controller.controller
        self.node_dir = root / "node-process"
        self.node_dir.mkdir()
        self.config = plugin.write_config(
            self.node_dir, backends=[], storage={"file_locks_path": str(self.node_dir / "locks")},
            node={"local_roots": [str(root / "volumes" / "embedded")]},
        )  # fmt: skip
        self.config.write_text(self.config.read_text().replace("backends: []\n", ""))
        self.starts = 0

    def crash(self, point: str, call: Callable[[plugin.Stubs], Any]) -> None:
        self.starts += 1
        crash.die_at(point, self.config, "node", self.node_dir, f"node-{self.starts}", call)

    def node(self) -> Any:
        self.starts += 1
        return plugin.running(self.config, "node", self.node_dir, name=f"node-{self.starts}")


class Volume:
    """One volume the sweep stages and publishes, with its paths under the site."""

    def __init__(self, site: NodeSite, stubs: plugin.Stubs, tag: str, fs_type: str = "") -> None:
        self.site = site
        self.tag = tag
        self.capability = capability(fs_type=fs_type)
        self.staging = site.root / f"{tag}-staging"
        self.staging.mkdir()
        self.target = site.root / f"{tag}-pod" / "mount"
        self.target.parent.mkdir()
        self.id = site.controller.CreateVolume(create_request(tag)).volume.volume_id
        node_id = stubs.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
        published = site.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=self.id, node_id=node_id, volume_capability=self.capability
            )
        )
        self.context = dict(published.publish_context)
        self.node_id = node_id

    def stage(self, s: plugin.Stubs) -> Any:
        return s.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging),
            volume_capability=self.capability, publish_context=self.context),
            timeout=120)  # fmt: skip

    def unstage(self, s: plugin.Stubs) -> Any:
        return s.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging)), timeout=120)  # fmt: skip

    def publish(self, s: plugin.Stubs) -> Any:
        return s.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging),
            target_path=str(self.target), volume_capability=self.capability),
            timeout=120)  # fmt: skip

    def unpublish(self, s: plugin.Stubs) -> Any:
        return s.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=self.id, target_path=str(self.target)), timeout=120)  # fmt: skip

    def expand(self, s: plugin.Stubs) -> Any:
        return s.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=self.id, volume_path=str(self.target),
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)), timeout=120)  # fmt: skip

    def finish(self) -> None:
        """Controller side of the end of the case: unpublish and delete."""
        self.site.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=self.id, node_id=self.node_id)
        )
        self.site.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=self.id))


def _mounts(path: Path) -> int:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.split()[4] == str(path))


def _loops(volume_id: str) -> int:
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if volume_id in line)


def _write(volume: Volume, where: Path) -> str:
    text = f"data of {volume.tag} {time.time()}"
    (where / "kept.txt").write_text(text)
    subprocess.run(["sync"], check=True)
    return text


def _settle(volume: Volume, s: plugin.Stubs, data: str) -> None:
    """After the healed call: the volume works end to end and leaves nothing behind."""
    if _mounts(volume.staging) == 0:
        crash.retry(lambda: volume.stage(s))
    assert _mounts(volume.staging) == 1, "one mount at the staging path, never stacked"
    assert _loops(volume.id) == 1, "one loop device for the volume, never two"
    if data:
        assert (volume.staging / "kept.txt").read_text() == data
    crash.retry(lambda: volume.publish(s))
    assert _mounts(volume.target) == 1
    if data:
        assert (volume.target / "kept.txt").read_text() == data
    crash.retry(lambda: volume.unpublish(s))
    assert not volume.target.exists(), "the target the plugin made is removed"
    crash.retry(lambda: volume.unstage(s))
    assert _mounts(volume.staging) == 0 and _loops(volume.id) == 0


CASES: list[tuple[str, str]] = (
    [("blank", p) for p in STAGE_POINTS]
    + [("data", p) for p in [*RESTAGE_POINTS, "rpc.NodeStageVolume.before-response"]]
    + [("unstage", p) for p in sorted(NODE_POINTS) if p.startswith("node_unstage.")]
    + [("unstage", "rpc.NodeUnstageVolume.before-response")]
    + [("publish", p) for p in sorted(NODE_POINTS) if p.startswith("node_publish.")]
    + [("publish", "rpc.NodePublishVolume.before-response")]
    + [("unpublish", p) for p in sorted(NODE_POINTS) if p.startswith("node_unpublish.")]
    + [("unpublish", "rpc.NodeUnpublishVolume.before-response")]
    + [("expand", "rpc.NodeExpandVolume.before-response")]
)


def test_every_node_crash_point_is_swept() -> None:
    assert {p for _, p in CASES} == NODE_POINTS


def test_node_crash_sweep(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    started = time.monotonic()
    config = plugin.write_config(tmp_path)
    with plugin.running(config, "controller", tmp_path) as controller_process:
        controller = plugin.Stubs(controller_process)
        site = NodeSite(tmp_path, controller)
        try:
            for n, (kind, point) in enumerate(CASES):
                _sweep_one(site, f"{kind}-{n}", kind, point)
        finally:
            controller.close()
    assert plugin.leftovers(tmp_path) == []
    took = time.monotonic() - started
    report.show(request, (
        f"node crash sweep: {len(CASES)} crash points tried over NodeStage (blank and with "
        f"data), NodeUnstage, NodePublish, NodeUnpublish, NodeExpand in {took:.0f}s, "
        f"{site.starts} node starts: 0 lost data, 0 leaked mounts or loop devices, "
        "0 failed retries"))  # fmt: skip


def _sweep_one(site: NodeSite, tag: str, kind: str, point: str) -> None:
    data = ""
    with site.node() as process:
        s = plugin.Stubs(process)
        # Online growth of ext4 needs CAP_SYS_RESOURCE, which this machine's root lacks.
        volume = Volume(site, s, tag, fs_type="xfs" if kind == "expand" else "")
        if kind != "blank":
            volume.stage(s)
            data = _write(volume, volume.staging)
        if kind == "data":
            volume.unstage(s)
        if kind in ("unpublish", "expand"):
            volume.publish(s)
        if kind == "unstage":
            pass  # staged, unpublished
        if kind == "expand":
            site.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
                volume_id=volume.id,
                capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)))  # fmt: skip
        s.close()
    call = {"blank": volume.stage, "data": volume.stage, "unstage": volume.unstage,
            "publish": volume.publish, "unpublish": volume.unpublish,
            "expand": volume.expand}[kind]  # fmt: skip
    site.crash(point, call)
    with site.node() as process:
        s = plugin.Stubs(process)
        try:
            crash.retry(lambda: call(s))
            if kind == "expand":
                df = ["df", "-B1", "--output=size", str(volume.target)]
                size = subprocess.run(df, capture_output=True, text=True, check=True).stdout
                assert int(size.split()[-1]) > 1.5 * GiB
            if kind == "unstage":
                assert _mounts(volume.staging) == 0 and _loops(volume.id) == 0
            if kind == "unpublish":
                assert _mounts(volume.target) == 0 and not volume.target.exists()
            if kind in ("publish", "expand"):
                assert _mounts(volume.target) == 1
                assert (volume.target / "kept.txt").read_text() == data
                crash.retry(lambda: volume.unpublish(s))
            _settle(volume, s, data)
        except (AssertionError, grpc.RpcError) as exc:
            raise AssertionError(f"{point} ({kind}): {exc}") from exc
        finally:
            s.close()
    volume.finish()
    assert plugin.leftovers(site.root / f"{tag}-staging") == []
