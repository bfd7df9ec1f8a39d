"""Node cases the fuzzing found (tests/csi/test_fuzz.py), pinned one by one through the
real plugin (``all`` mode, FileDriver): each used to answer INTERNAL, hide or cut off
another volume's mounts, leak a loop device, or let a staged volume be unpublished."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import GiB, Mode, Plugin, capability, create_request

from csi_driver.csi_pb import csi_pb2

pytestmark = pytest.mark.skipif(not plugin.is_root(), reason="node flows need root")

Code = grpc.StatusCode
TIMEOUT = 120.0


def _code(call: Any, request: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(request, timeout=TIMEOUT)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return Code.OK, ""


def _mounts(path: Path) -> int:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.split()[4] == target)


class Vol:
    """A volume published to this node, staged and published on request."""

    def __init__(
        self,
        csi: Plugin,
        where: Path,
        block: bool = False,
        fs_type: str = "",
        mode: int = Mode.SINGLE_NODE_WRITER,
        source: str | None = None,
    ) -> None:
        self.csi = csi
        self.cap = capability(mode=mode, block=block, fs_type=fs_type)
        self.staging = where / f"staging-{uuid.uuid4().hex[:6]}"
        self.staging.mkdir()
        fields: dict[str, Any] = {"volume_capabilities": [self.cap]}
        if source:
            fields["volume_content_source"] = csi_pb2.VolumeContentSource(
                volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source)
            )
        self.id = csi.controller.CreateVolume(
            create_request(f"hard-{uuid.uuid4().hex[:8]}", **fields), timeout=TIMEOUT
        ).volume.volume_id
        self.node_id = csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
        self.context = self.publish_controller()
        self.targets: list[Path] = []

    def publish_controller(self) -> dict[str, str]:
        return dict(self.csi.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=self.id, node_id=self.node_id, volume_capability=self.cap,
                readonly=self.cap.access_mode.mode == Mode.SINGLE_NODE_READER_ONLY),
            timeout=TIMEOUT).publish_context)  # fmt: skip

    def stage_request(self, context: dict[str, str] | None = None, staging: Path | None = None
                      ) -> csi_pb2.NodeStageVolumeRequest:  # fmt: skip
        return csi_pb2.NodeStageVolumeRequest(
            volume_id=self.id, staging_target_path=str(staging or self.staging),
            volume_capability=self.cap, publish_context=context or self.context)  # fmt: skip

    def stage(self) -> None:
        self.csi.node.NodeStageVolume(self.stage_request(), timeout=TIMEOUT)

    def unstage_request(self) -> csi_pb2.NodeUnstageVolumeRequest:
        return csi_pb2.NodeUnstageVolumeRequest(volume_id=self.id,
                                                staging_target_path=str(self.staging))  # fmt: skip

    def publish_request(self, target: Path) -> csi_pb2.NodePublishVolumeRequest:
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=self.id, staging_target_path=str(self.staging), target_path=str(target),
            volume_capability=self.cap)  # fmt: skip

    def publish(self, target: Path) -> None:
        self.csi.node.NodePublishVolume(self.publish_request(target), timeout=TIMEOUT)
        self.targets.append(target)

    def cleanup(self) -> None:
        node, controller = self.csi.node, self.csi.controller
        for target in self.targets:
            _code(
                node.NodeUnpublishVolume,
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=self.id, target_path=str(target)),
            )
        _code(node.NodeUnstageVolume, self.unstage_request())
        _code(
            controller.ControllerUnpublishVolume,
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=self.id),
        )
        _code(controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=self.id))


@pytest.fixture
def vols(csi_plugin: Plugin, tmp_path: Path) -> Iterator[Any]:
    made: list[Vol] = []

    def make(**kwargs: Any) -> Vol:
        made.append(Vol(csi_plugin, tmp_path, **kwargs))
        return made[-1]

    yield make
    for vol in reversed(made):
        vol.cleanup()
    assert plugin.leftovers(tmp_path) == []


def test_a_staged_volume_cannot_be_unpublished_with_a_reissued_context(vols: Any) -> None:
    """The controller published again while the volume was staged; the second document
    staged it. ControllerUnpublish must still see it staged (was OK, then DeleteVolume
    deleted a mounted volume)."""
    vol = vols()
    vol.stage()
    again = vol.publish_controller()
    vol.csi.node.NodeUnstageVolume(vol.unstage_request(), timeout=TIMEOUT)
    vol.csi.node.NodeStageVolume(vol.stage_request(context=again), timeout=TIMEOUT)

    code, details = _code(vol.csi.controller.ControllerUnpublishVolume,
                          csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vol.id))  # fmt: skip

    assert code == Code.FAILED_PRECONDITION, details
    assert "staged" in details and _mounts(vol.staging) == 1


def test_unstage_releases_the_loop_device_of_a_deleted_file(vols: Any, csi_plugin: Plugin) -> None:
    """The volume's file went away under the stage (a CO that deleted the volume too
    early, an admin): unstage still detaches its loop device."""
    vol = vols()
    vol.stage()
    (volume_file,) = [p for p in (csi_plugin.root / "volumes" / "embedded").iterdir()
                      if vol.id in p.name]  # fmt: skip
    keep = volume_file.with_name("kept-" + volume_file.name)
    os.link(volume_file, keep)
    volume_file.unlink()
    try:
        vol.csi.node.NodeUnstageVolume(vol.unstage_request(), timeout=TIMEOUT)
        looped = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert vol.id not in looped
        code, _ = _code(vol.csi.node.NodeStageVolume, vol.stage_request())
        assert code == Code.NOT_FOUND  # its file is gone: no volume to stage
    finally:
        os.link(keep, volume_file)
        keep.unlink()


def test_staging_above_another_volumes_mounts_is_refused(vols: Any, tmp_path: Path) -> None:
    first = vols(block=True)
    first.stage()
    pods = tmp_path / "outer" / "pods"
    pods.mkdir(parents=True)
    first.publish(pods / "target")
    second = vols()

    code, details = _code(second.csi.node.NodeStageVolume,
                          second.stage_request(staging=tmp_path / "outer"))  # fmt: skip

    assert code == Code.FAILED_PRECONDITION, details
    assert "below it" in details and _mounts(tmp_path / "outer") == 0
    assert _mounts(pods / "target") == 1


def test_unstaging_with_a_mount_inside_the_staging_path_is_refused(
    vols: Any, tmp_path: Path
) -> None:
    outer = vols()
    outer.stage()
    (outer.staging / "inner").mkdir()
    inner = vols()
    inner.staging.rmdir()
    inner.staging = outer.staging / "inner"
    inner.stage()

    code, details = _code(outer.csi.node.NodeUnstageVolume, outer.unstage_request())

    assert code == Code.FAILED_PRECONDITION, details
    assert _mounts(outer.staging) == 1 and _mounts(inner.staging) == 1
    inner.csi.node.NodeUnstageVolume(inner.unstage_request(), timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("block", "existing"),
    [pytest.param(True, "dir", id="block-onto-a-directory"),
     pytest.param(False, "file", id="filesystem-onto-a-file"),
     pytest.param(False, "long-name", id="a-256-byte-name")],
)  # fmt: skip
def test_unusable_publish_targets_are_invalid_argument(
    vols: Any, tmp_path: Path, block: bool, existing: str
) -> None:
    vol = vols(block=block)
    vol.stage()
    target = tmp_path / ("x" * 256 if existing == "long-name" else "target")
    if existing == "dir":
        target.mkdir()
    elif existing == "file":
        target.write_text("the CO's file")

    code, details = _code(vol.csi.node.NodePublishVolume, vol.publish_request(target))

    assert code == Code.INVALID_ARGUMENT, details
    if existing == "file":
        assert target.read_text() == "the CO's file"


@pytest.mark.parametrize("protocol", ["iscsi", "rbd", "nvmeof"])
def test_a_known_protocol_with_malformed_data_is_invalid_argument(vols: Any, protocol: str) -> None:
    vol = vols()
    doc = json.loads(vol.context["connection"])
    text = json.dumps(doc).replace('"driver_volume_type": "local"',
                                   f'"driver_volume_type": "{protocol}"')  # fmt: skip
    assert protocol in text

    code, details = _code(vol.csi.node.NodeStageVolume,
                          vol.stage_request(context={"connection": text}))  # fmt: skip

    assert code == Code.INVALID_ARGUMENT, details
    assert _mounts(vol.staging) == 0


def test_a_refused_stage_does_not_block_unstage(vols: Any) -> None:
    vol = vols()
    text = json.dumps(json.loads(vol.context["connection"])).replace(
        '"driver_volume_type": "local"', '"driver_volume_type": 7')  # fmt: skip

    code, _ = _code(vol.csi.node.NodeStageVolume, vol.stage_request(context={"connection": text}))
    assert code == Code.INVALID_ARGUMENT

    assert _code(vol.csi.node.NodeUnstageVolume, vol.unstage_request())[0] == Code.OK
    vol.stage()  # and the good document stages it
    assert _mounts(vol.staging) == 1


@pytest.mark.skipif(shutil.which("mkfs.xfs") is None, reason="xfsprogs missing")
def test_an_xfs_clone_stages_beside_its_source(vols: Any) -> None:
    """A clone carries its source's XFS UUID, which XFS refuses to mount twice."""
    source = vols(fs_type="xfs")
    source.stage()
    subprocess.run(["sync"], check=True)
    clone = vols(fs_type="xfs", source=source.id)

    clone.stage()

    assert _mounts(clone.staging) == 1 and _mounts(source.staging) == 1


def test_expanding_a_read_only_stage_is_failed_precondition(vols: Any) -> None:
    writer = vols()
    writer.stage()  # gives it a filesystem
    writer.csi.node.NodeUnstageVolume(writer.unstage_request(), timeout=TIMEOUT)
    writer.csi.controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=writer.id), timeout=TIMEOUT
    )
    writer.cap = capability(mode=Mode.SINGLE_NODE_READER_ONLY)
    writer.context = writer.publish_controller()
    writer.stage()
    writer.csi.controller.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=writer.id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)),
        timeout=TIMEOUT)  # fmt: skip

    code, details = _code(writer.csi.node.NodeExpandVolume, csi_pb2.NodeExpandVolumeRequest(
        volume_id=writer.id, volume_path=str(writer.staging)))  # fmt: skip

    assert code == Code.FAILED_PRECONDITION, details
    assert "read-only" in details


def test_paths_outside_the_mount_roots_are_refused(vols: Any) -> None:
    vol = vols()
    outside = Path("/var/tmp") / f"csi-outside-{uuid.uuid4().hex[:8]}"
    outside.mkdir()
    try:
        code, details = _code(vol.csi.node.NodeStageVolume, vol.stage_request(staging=outside))
        assert code == Code.INVALID_ARGUMENT, details
        assert "mount_roots" in details and _mounts(outside) == 0
        vol.stage()
        code, details = _code(vol.csi.node.NodePublishVolume,
                              vol.publish_request(outside / "target"))  # fmt: skip
        assert code == Code.INVALID_ARGUMENT, details
        assert not (outside / "target").exists()
    finally:
        shutil.rmtree(outside)


def test_a_document_carrying_another_hosts_device_is_attached_afresh(vols: Any) -> None:
    """A connection record that says 'attached at /dev/...' (written by another host, or
    by an older release into the store) must not make the node skip its own attach."""
    vol = vols()
    doc = json.loads(vol.context["connection"])
    for record in doc["connections"]:
        record["status"] = "attached"
        record["device"] = {"path": "/dev/null", "type": "block"}
    context = {"connection": json.dumps(doc)}

    vol.csi.node.NodeStageVolume(vol.stage_request(context=context), timeout=TIMEOUT)

    assert _mounts(vol.staging) == 1
    looped = subprocess.run(["losetup", "--list", "--noheadings", "-O", "BACK-FILE"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert vol.id in looped
