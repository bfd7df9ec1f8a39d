"""Node RPCs through the real plugin (gRPC): request validation with the status code the
spec names, and whole stage/publish flows on real loop devices, filesystems and mounts.

The flows check what matters on a node: a volume's data survives unstage and restage
(a device holding a filesystem is never formatted again, nor reformatted to another
type), read-only means read-only, a raw block volume is the device itself, and stats
and expansion report the real filesystem. Every flow undoes its stage, publish and
export in teardown, and the module ends by checking that no mount or loop device leaked.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import GiB, Mode, Plugin, capability, create_request

from csi_driver import host_fs
from csi_driver.csi_pb import csi_pb2

pytestmark = [
    pytest.mark.skipif(not plugin.is_root(), reason="node flows need root: loop devices, mounts"),
    pytest.mark.skipif(shutil.which("losetup") is None, reason="losetup (util-linux) is missing"),
]

Code = grpc.StatusCode
MiB = 1024**2
TIMEOUT = 120.0
Unit = csi_pb2.VolumeUsage
#: Every directory a test staged or published under, for the final leak check.
USED_PATHS: list[Path] = []


def rpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    """The error a call fails with (failing the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)
    return raised.value


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def mounts_at(path: Path) -> int:
    """How many mounts are stacked on exactly this path."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.split()[4] == target)


def usage(response: csi_pb2.NodeGetVolumeStatsResponse) -> dict[int, csi_pb2.VolumeUsage]:
    return {u.unit: u for u in response.usage}


# -- a volume through its node life -------------------------------------------------------------


class NodeVolume:
    """One volume: created, exported to this node, staged and published on request;
    ``cleanup`` undoes whatever was done, in the order a CO would."""

    def __init__(
        self, csi: Plugin, workdir: Path, block: bool = False, fs_type: str = "", **create: Any
    ) -> None:
        self.csi = csi
        self.block = block
        self.fs_type = fs_type
        self.staging = workdir / unique("staging")
        self.staging.mkdir()
        self.targets: list[Path] = []
        self.staged = False
        self.node_id = csi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
        created = csi.controller.CreateVolume(
            create_request(unique("node"), volume_capabilities=[self.capability()], **create),
            timeout=TIMEOUT,
        )
        self.volume_id = created.volume.volume_id
        self.publish_context: dict[str, str] = {}

    def capability(self, fs_type: str | None = None, mode: int = Mode.SINGLE_NODE_WRITER) -> Any:
        fs = self.fs_type if fs_type is None else fs_type
        return capability(mode=mode, block=self.block, fs_type="" if self.block else fs)

    # controller side
    def controller_publish(self) -> dict[str, str]:
        response = self.csi.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=self.volume_id, node_id=self.node_id, volume_capability=self.capability()
            ),
            timeout=TIMEOUT,
        )
        self.publish_context = dict(response.publish_context)
        return self.publish_context

    def controller_unpublish(self) -> None:
        self.csi.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=self.volume_id, node_id=self.node_id
            ),
            timeout=TIMEOUT,
        )

    # node side
    def stage_request(self, fs_type: str | None = None, **fields: Any) -> Any:
        values: dict[str, Any] = {
            "volume_id": self.volume_id,
            "staging_target_path": str(self.staging),
            "volume_capability": self.capability(fs_type),
            "publish_context": self.publish_context,
            **fields,
        }
        return csi_pb2.NodeStageVolumeRequest(**values)

    def stage(self, fs_type: str | None = None) -> None:
        if not self.publish_context:
            self.controller_publish()
        self.csi.node.NodeStageVolume(self.stage_request(fs_type), timeout=TIMEOUT)
        self.staged = True

    def unstage(self) -> None:
        self.csi.node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(
                volume_id=self.volume_id, staging_target_path=str(self.staging)
            ),
            timeout=TIMEOUT,
        )
        self.staged = False

    def publish_request(self, target: Path, readonly: bool = False) -> Any:
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=self.volume_id,
            staging_target_path=str(self.staging),
            target_path=str(target),
            volume_capability=self.capability(),
            readonly=readonly,
        )

    def publish(self, target: Path, readonly: bool = False) -> Path:
        if target not in self.targets:
            self.targets.append(target)
        self.csi.node.NodePublishVolume(self.publish_request(target, readonly), timeout=TIMEOUT)
        return target

    def unpublish(self, target: Path) -> None:
        self.csi.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=self.volume_id, target_path=str(target)),
            timeout=TIMEOUT,
        )
        if target in self.targets:
            self.targets.remove(target)

    def stats(self, path: Path) -> csi_pb2.NodeGetVolumeStatsResponse:
        return self.csi.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=self.volume_id, volume_path=str(path)),
            timeout=TIMEOUT,
        )

    def health(self) -> csi_pb2.NodeGetVolumeHealthResponse:
        return self.csi.node.NodeGetVolumeHealth(
            csi_pb2.NodeGetVolumeHealthRequest(volume_id=self.volume_id), timeout=TIMEOUT
        )

    def cleanup(self) -> list[str]:
        """Undo everything; every step is tried and its failure reported, none skipped."""
        problems = []
        steps: list[tuple[str, Callable[[], None]]] = [
            (f"NodeUnpublishVolume {t}", lambda t=t: self.unpublish(t)) for t in list(self.targets)
        ]
        steps += [
            ("NodeUnstageVolume", self.unstage),
            ("ControllerUnpublishVolume", self.controller_unpublish),
            (
                "DeleteVolume",
                lambda: self.csi.controller.DeleteVolume(
                    csi_pb2.DeleteVolumeRequest(volume_id=self.volume_id), timeout=TIMEOUT
                ),
            ),
        ]
        for name, step in steps:
            try:
                step()
            except grpc.RpcError as exc:
                if exc.code() != Code.NOT_FOUND:
                    problems.append(f"{name} of {self.volume_id}: {exc.code()}: {exc.details()}")
        return problems


@pytest.fixture
def volumes(csi_plugin: Plugin, tmp_path: Path) -> Iterator[Callable[..., NodeVolume]]:
    """Makes NodeVolumes under tmp_path and undoes them all, even when the test failed."""
    made: list[NodeVolume] = []
    USED_PATHS.append(tmp_path)

    def make(block: bool = False, fs_type: str = "", **create: Any) -> NodeVolume:
        volume = NodeVolume(csi_plugin, tmp_path, block=block, fs_type=fs_type, **create)
        made.append(volume)
        return volume

    yield make
    problems = [p for volume in reversed(made) for p in volume.cleanup()]
    assert problems == []
    assert plugin.leftovers(tmp_path) == []


# -- requests refused before anything is touched ------------------------------------------------

STAGING = "/nonexistent/csi-staging"
TARGET = "/nonexistent/csi-target"
CONTEXT = {"connection": "{}"}

MISSING_FIELDS: list[Any] = [
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        staging_target_path=STAGING, volume_capability=capability(), publish_context=CONTEXT),
        "volume_id", id="stage-volume-id"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", volume_capability=capability(), publish_context=CONTEXT),
        "staging_target_path", id="stage-staging-path"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, publish_context=CONTEXT),
        "volume_capability", id="stage-capability"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, volume_capability=capability()),
        "connection", id="stage-no-publish-context"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, volume_capability=capability(),
        publish_context={"other": "x"}),
        "connection", id="stage-publish-context-without-connection"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, volume_capability=capability(),
        publish_context={"connection": ""}),
        "connection", id="stage-empty-connection"),
    pytest.param("NodeStageVolume", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING,
        volume_capability=capability(mode=Mode.UNKNOWN), publish_context=CONTEXT),
        "volume_capability", id="stage-capability-without-mode"),
    pytest.param("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        staging_target_path=STAGING, target_path=TARGET, volume_capability=capability()),
        "volume_id", id="publish-volume-id"),
    pytest.param("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1", target_path=TARGET, volume_capability=capability()),
        "staging_target_path", id="publish-staging-path"),
    pytest.param("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, volume_capability=capability()),
        "target_path", id="publish-target-path"),
    pytest.param("NodePublishVolume", csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1", staging_target_path=STAGING, target_path=TARGET),
        "volume_capability", id="publish-capability"),
    pytest.param("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(
        staging_target_path=STAGING), "volume_id", id="unstage-volume-id"),
    pytest.param("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest(volume_id="vol-1"),
                 "staging_target_path", id="unstage-staging-path"),
    pytest.param("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(
        target_path=TARGET), "volume_id", id="unpublish-volume-id"),
    pytest.param("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id="vol-1"),
                 "target_path", id="unpublish-target-path"),
    pytest.param("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(
        volume_path=STAGING), "volume_id", id="stats-volume-id"),
    pytest.param("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id="vol-1"),
                 "volume_path", id="stats-volume-path"),
    pytest.param("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(
        volume_path=STAGING), "volume_id", id="expand-volume-id"),
    pytest.param("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id="vol-1"),
                 "volume_path", id="expand-volume-path"),
    pytest.param("NodeGetVolumeHealth", csi_pb2.NodeGetVolumeHealthRequest(),
                 "volume_id", id="health-volume-id"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "request_", "field"), MISSING_FIELDS)
def test_missing_required_field_is_invalid_argument(
    csi_plugin: Plugin, method: str, request_: Any, field: str
) -> None:
    error = rpc_error(getattr(csi_plugin.node, method), request_)

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert field in error.details()


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        pytest.param(
            "NodeGetVolumeStats",
            csi_pb2.NodeGetVolumeStatsRequest(volume_id="never-staged", volume_path=STAGING),
            id="stats",
        ),
        pytest.param(
            "NodeExpandVolume",
            csi_pb2.NodeExpandVolumeRequest(volume_id="never-staged", volume_path=STAGING),
            id="expand",
        ),
        pytest.param(
            "NodeGetVolumeHealth",
            csi_pb2.NodeGetVolumeHealthRequest(volume_id="never-staged"),
            id="health",
        ),
    ],
)
def test_unknown_volume_is_not_found(csi_plugin: Plugin, method: str, request_: Any) -> None:
    error = rpc_error(getattr(csi_plugin.node, method), request_)

    assert error.code() == Code.NOT_FOUND, error.details()
    assert "never-staged" in error.details()


def test_unstage_of_a_volume_not_staged_succeeds(csi_plugin: Plugin, tmp_path: Path) -> None:
    """Unstage must be idempotent: a retry after success finds nothing and says OK."""
    csi_plugin.node.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(
            volume_id="never-staged", staging_target_path=str(tmp_path)
        ),
        timeout=TIMEOUT,
    )


def test_publish_of_a_volume_not_staged_is_failed_precondition(
    csi_plugin: Plugin, tmp_path: Path
) -> None:
    target = tmp_path / "target"
    error = rpc_error(
        csi_plugin.node.NodePublishVolume,
        csi_pb2.NodePublishVolumeRequest(
            volume_id="never-staged",
            staging_target_path=str(tmp_path),
            target_path=str(target),
            volume_capability=capability(),
        ),
    )

    assert error.code() == Code.FAILED_PRECONDITION, error.details()
    assert "not staged" in error.details()
    assert not target.exists()


@pytest.mark.parametrize(
    "volume_id",
    [pytest.param("../escape", id="path-traversal"), pytest.param(".hidden", id="dot-file")],
)
def test_volume_id_unusable_as_record_name_is_invalid_argument(
    csi_plugin: Plugin, tmp_path: Path, volume_id: str
) -> None:
    """Ids name the node's stage records: one that could leave the state directory is refused."""
    error = rpc_error(
        csi_plugin.node.NodeStageVolume,
        csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(tmp_path),
            volume_capability=capability(),
            publish_context=CONTEXT,
        ),
    )

    assert error.code() == Code.INVALID_ARGUMENT, error.details()


# -- publish_context that is not a connection for this volume -------------------------------------


def _as_volume_document(connection: str) -> str:
    doc = json.loads(connection)
    doc["class"] = "Volume"
    return json.dumps(doc)


def _without_format(connection: str) -> str:
    doc = json.loads(connection)
    del doc["format"]
    return json.dumps(doc)


BAD_CONNECTIONS: list[Any] = [
    pytest.param(lambda c: "not json at all", "not valid JSON", id="not-json"),
    pytest.param(lambda c: c[: len(c) // 2], "not valid JSON", id="truncated"),
    pytest.param(lambda c: "[1, 2]", "JSON object", id="json-list"),
    pytest.param(lambda c: '{"hello": "world"}', "format", id="foreign-object"),
    pytest.param(_without_format, "format", id="no-format-header"),
    pytest.param(_as_volume_document, "Connection", id="volume-document"),
]


@pytest.mark.parametrize(("corrupt", "named"), BAD_CONNECTIONS)
def test_bad_connection_document_is_invalid_argument(
    volumes: Callable[..., NodeVolume], corrupt: Callable[[str], str], named: str
) -> None:
    volume = volumes()
    context = volume.controller_publish()
    bad = corrupt(context["connection"])

    error = rpc_error(
        volume.csi.node.NodeStageVolume,
        volume.stage_request(publish_context={"connection": bad}),
    )

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert named in error.details()
    assert mounts_at(volume.staging) == 0


def test_connection_of_another_volume_is_invalid_argument(
    volumes: Callable[..., NodeVolume],
) -> None:
    """Staging volume B with A's connection would put B's filesystem on A's data."""
    first, second = volumes(), volumes()
    first.controller_publish()

    error = rpc_error(
        second.csi.node.NodeStageVolume,
        second.stage_request(publish_context=first.publish_context),
    )

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert first.volume_id in error.details() and second.volume_id in error.details()
    assert mounts_at(second.staging) == 0
    assert plugin.leftovers(first.csi.root / "volumes") == []


# -- stage and publish flows --------------------------------------------------------------------


def test_stage_twice_is_idempotent(volumes: Callable[..., NodeVolume]) -> None:
    volume = volumes()
    volume.stage()
    volume.stage()

    assert mounts_at(volume.staging) == 1
    assert len(plugin.leftovers(volume.csi.root / "volumes")) == 1  # one loop device, not two


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param("other-staging-path", Code.FAILED_PRECONDITION, id="other-staging-path"),
        pytest.param("other-filesystem", Code.ALREADY_EXISTS, id="other-filesystem"),
        pytest.param("block", Code.ALREADY_EXISTS, id="as-block"),
    ],
)
def test_stage_again_differently_is_refused(
    volumes: Callable[..., NodeVolume], tmp_path: Path, change: str, code: grpc.StatusCode
) -> None:
    volume = volumes()
    volume.stage()
    request = volume.stage_request()
    if change == "other-staging-path":
        other = tmp_path / "other-staging"
        other.mkdir()
        request.staging_target_path = str(other)
    elif change == "other-filesystem":
        request.volume_capability.mount.fs_type = "xfs"
    else:
        request.volume_capability.CopyFrom(capability(block=True))

    error = rpc_error(volume.csi.node.NodeStageVolume, request)

    assert error.code() == code, error.details()
    assert mounts_at(volume.staging) == 1


def test_data_survives_unstage_and_restage(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    """DATA SAFETY: only a blank device is formatted; a restage mounts what is there."""
    volume = volumes()
    payload = os.urandom(256 * 1024)
    volume.stage()
    target = volume.publish(tmp_path / "pod-target")
    (target / "data.bin").write_bytes(payload)
    with open(target / "data.bin", "rb") as handle:
        os.fsync(handle.fileno())
    volume.unpublish(target)
    volume.unstage()
    volume.controller_unpublish()
    volume.publish_context = {}

    volume.stage()  # a fresh export, as after a pod moved away and back
    target = volume.publish(tmp_path / "pod-target")

    assert (target / "data.bin").read_bytes() == payload
    assert host_fs.mountinfo(str(volume.staging))["fstype"] == "ext4"
    assert volume.csi.log().count(f"volume {volume.volume_id} is blank") == 1


def test_other_filesystem_on_a_formatted_device_is_refused(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    """A device holding ext4 is never reformatted, whatever filesystem is requested."""
    volume = volumes()
    volume.stage("ext4")
    (volume.staging / "keep.txt").write_text("precious")
    volume.unstage()

    error = rpc_error(volume.csi.node.NodeStageVolume, volume.stage_request("xfs"))

    assert error.code() == Code.FAILED_PRECONDITION, error.details()
    assert "ext4" in error.details()
    assert mounts_at(volume.staging) == 0
    assert plugin.leftovers(volume.csi.root / "volumes") == []  # the failed stage was undone
    volume.stage("ext4")
    assert (volume.staging / "keep.txt").read_text() == "precious"


def test_read_only_publish_refuses_writes(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    volume = volumes()
    volume.stage()
    (volume.staging / "existing.txt").write_text("readable")
    target = volume.publish(tmp_path / "ro-target", readonly=True)

    assert (target / "existing.txt").read_text() == "readable"
    with pytest.raises(OSError) as raised:
        (target / "new.txt").write_text("must not land")
    assert raised.value.errno == errno.EROFS
    assert "ro" in host_fs.mountinfo(str(target))["mount_options"]
    # The same target read-write is a different publish: refused, not silently changed.
    error = rpc_error(volume.csi.node.NodePublishVolume, volume.publish_request(target))
    assert error.code() == Code.ALREADY_EXISTS, error.details()


def test_block_volume_is_published_as_the_device(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    volume = volumes(block=True)
    volume.stage()
    target = tmp_path / "block-device"
    assert not target.exists()
    volume.publish(target)

    assert stat.S_ISBLK(os.stat(target).st_mode)
    offset, payload = 100 * MiB, os.urandom(MiB)
    fd = os.open(target, os.O_RDWR)
    try:
        assert os.pread(fd, 4096, 0) == bytes(4096), "a raw block volume must not be formatted"
        assert os.pwrite(fd, payload, offset) == MiB
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(target, os.O_RDONLY)
    try:
        assert os.pread(fd, MiB, offset) == payload
    finally:
        os.close(fd)
    assert usage(volume.stats(target))[Unit.BYTES].total == GiB

    # Through a fresh loop device (no shared page cache) the bytes are still there.
    volume.unpublish(target)
    assert not target.exists()
    volume.unstage()
    volume.stage()
    volume.publish(target)
    with open(target, "rb") as handle:
        handle.seek(offset)
        assert handle.read(MiB) == payload


def test_volume_stats_report_bytes_and_inodes(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    volume = volumes()
    volume.stage()
    target = volume.publish(tmp_path / "target")
    before = usage(volume.stats(target))
    (target / "four-mib").write_bytes(os.urandom(4 * MiB))
    with open(target / "four-mib", "rb") as handle:
        os.fsync(handle.fileno())

    for path in (volume.staging, target):
        stats = usage(volume.stats(path))
        assert set(stats) == {Unit.BYTES, Unit.INODES}
        for unit in stats.values():
            assert unit.total > 0
            assert 0 <= unit.used <= unit.total
            assert 0 <= unit.available <= unit.total
        assert stats[Unit.BYTES].total <= GiB
        assert stats[Unit.BYTES].used >= before[Unit.BYTES].used + 4 * MiB
        assert stats[Unit.INODES].used == before[Unit.INODES].used + 1

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    error = rpc_error(
        volume.csi.node.NodeGetVolumeStats,
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume.volume_id, volume_path=str(elsewhere)),
    )
    assert error.code() == Code.NOT_FOUND, error.details()


def test_expand_grows_a_published_filesystem(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    """xfs grows online; ext4 needs CAP_SYS_RESOURCE, which this sandbox lacks."""
    if shutil.which("xfs_growfs") is None:
        pytest.skip("xfs_growfs is missing")
    volume = volumes(fs_type="xfs")
    volume.stage()
    target = volume.publish(tmp_path / "target")
    (target / "kept.txt").write_text("before growth")
    total_before = usage(volume.stats(target))[Unit.BYTES].total

    grown = volume.csi.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id,
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
        ),
        timeout=TIMEOUT,
    )
    assert grown.capacity_bytes == 2 * GiB
    assert grown.node_expansion_required
    response = volume.csi.node.NodeExpandVolume(
        csi_pb2.NodeExpandVolumeRequest(
            volume_id=volume.volume_id,
            volume_path=str(target),
            staging_target_path=str(volume.staging),
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB),
            volume_capability=volume.capability(),
        ),
        timeout=TIMEOUT,
    )

    assert response.capacity_bytes >= 2 * GiB
    total_after = usage(volume.stats(target))[Unit.BYTES].total
    assert total_after > total_before + GiB // 2
    assert (target / "kept.txt").read_text() == "before growth"


@pytest.mark.parametrize("fs_type", ["ext4", "xfs"])
@pytest.mark.parametrize("source", ["snapshot", "clone"])
def test_a_filesystem_restored_into_a_larger_volume_fills_it(
    volumes: Callable[..., NodeVolume], tmp_path: Path, fs_type: str, source: str
) -> None:
    """A volume made from a 1 GiB one at 2 GiB holds its source's 1 GiB filesystem;
    staging it writable grows the filesystem (ext4 unmounted, xfs mounted), keeping the
    data; kubelet calls no NodeExpandVolume for it."""
    if shutil.which("xfs_growfs") is None:
        pytest.skip("xfs_growfs is missing")
    original = volumes(fs_type=fs_type)
    original.stage()
    target = original.publish(tmp_path / "original")
    (target / "kept.txt").write_text("from the source")
    original_total = usage(original.stats(target))[Unit.BYTES].total
    original.unpublish(target)
    original.unstage()
    controller = original.csi.controller
    snapshot_id = ""
    if source == "snapshot":
        snapshot_id = controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(
                source_volume_id=original.volume_id, name=unique("restore")
            ),
            timeout=TIMEOUT,
        ).snapshot.snapshot_id
        content = csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
        )
    else:
        content = csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=original.volume_id)
        )
    try:
        restored = volumes(fs_type=fs_type, size=2 * GiB, volume_content_source=content)
        restored.stage()
        target = restored.publish(tmp_path / "restored")

        assert (target / "kept.txt").read_text() == "from the source"
        total = usage(restored.stats(target))[Unit.BYTES].total
        assert total > original_total + GiB // 2, (original_total, total)
        device = host_fs.mountinfo(str(restored.staging))["source"]  # type: ignore[index]
        assert host_fs.block_device_size(device) == 2 * GiB
        # staged again (e.g. after a node restart) nothing is grown twice
        restored.unpublish(target)
        restored.unstage()
        restored.stage()
        target = restored.publish(tmp_path / "restored-again")
        assert usage(restored.stats(target))[Unit.BYTES].total == total
    finally:
        if snapshot_id:  # before the fixture deletes its volume
            controller.DeleteSnapshot(
                csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=TIMEOUT
            )


def test_unstage_while_published_is_failed_precondition(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    volume = volumes()
    volume.stage()
    target = volume.publish(tmp_path / "target")

    error = rpc_error(
        volume.csi.node.NodeUnstageVolume,
        csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(volume.staging)
        ),
    )

    assert error.code() == Code.FAILED_PRECONDITION, error.details()
    assert str(target) in error.details()
    assert mounts_at(volume.staging) == 1 and mounts_at(target) == 1
    volume.unpublish(target)
    assert not target.exists()  # the plugin created the target, and removes it
    volume.unstage()
    assert mounts_at(volume.staging) == 0


def test_health_reports_mounts_gone_behind_the_plugins_back(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    volume = volumes()
    volume.stage()
    target = volume.publish(tmp_path / "target")

    healthy = volume.health()
    assert healthy.volume_health.volume_id == volume.volume_id
    assert list(healthy.volume_health.health_statuses) == []

    for path in (target, volume.staging):
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=60)
    entries = volume.health().volume_health.health_statuses

    assert {e.status for e in entries} == {csi_pb2.INACCESSIBLE}
    messages = " ".join(e.message for e in entries)
    assert str(volume.staging) in messages and str(target) in messages


def test_publish_needs_the_target_parent(
    volumes: Callable[..., NodeVolume], tmp_path: Path
) -> None:
    """The CO creates the parent; a missing one means a wrong path, not one to invent."""
    volume = volumes()
    volume.stage()
    target = tmp_path / "missing-parent" / "target"

    error = rpc_error(volume.csi.node.NodePublishVolume, volume.publish_request(target))

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert not target.parent.exists()


@pytest.mark.parametrize("method", ["NodeGetVolumeStats", "NodeExpandVolume"])
def test_staging_path_through_a_symlink_is_found(
    volumes: Callable[..., NodeVolume], tmp_path: Path, method: str
) -> None:
    """Kubelet directories are often symlinks (/var/lib/kubelet -> /data/kubelet); the CO
    sends the same staging path string to every RPC, so each must find the volume."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    volume = volumes()
    volume.staging = tmp_path / "link" / "staging"
    volume.staging.mkdir()
    volume.stage()

    request_type = getattr(csi_pb2, f"{method}Request")
    getattr(volume.csi.node, method)(
        request_type(volume_id=volume.volume_id, volume_path=str(volume.staging)),
        timeout=TIMEOUT,
    )


def _loop_devices_of(volume_id: str) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if volume_id in line]


def test_stage_again_after_a_node_reboot(volumes: Callable[..., NodeVolume]) -> None:
    """After a reboot the stage mount and loop device are gone but the node's state
    directory (on the host) still holds the record; kubelet then calls NodeStageVolume
    again (never NodeUnstageVolume first), which must stage the volume, data intact."""
    volume = volumes()
    volume.stage()
    (volume.staging / "kept.txt").write_text("across the reboot")
    subprocess.run(["umount", str(volume.staging)], check=True, timeout=60)
    for device in _loop_devices_of(volume.volume_id):
        subprocess.run(["losetup", "-d", device], check=True, timeout=60)

    volume.stage()

    assert mounts_at(volume.staging) == 1
    assert (volume.staging / "kept.txt").read_text() == "across the reboot"


def test_nothing_leaked(csi_plugin: Plugin) -> None:
    """Runs last: no mount or loop device of this module's flows is left on the host."""
    for path in [*USED_PATHS, csi_plugin.root]:
        assert plugin.leftovers(path) == []
