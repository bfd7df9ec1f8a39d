"""Regression tests for the adversarial review's findings 1-7 (issue #9), each written
against the plugin as a user would meet it: real plugin processes, real loop devices and
mounts, and for the crash findings a real SIGKILL while a driver call hangs (a slowed
driver, ``fault_injection.SlowFileDriver``, is the only fake: it makes the window).

Findings 8 (shutdown bound) and 9-10 (status codes, hygiene) are pinned in
test_shutdown.py and test_hygiene.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import GiB, capability, create_request

from csi_driver.csi_pb import csi_pb2

pytestmark = pytest.mark.skipif(not plugin.is_root(), reason="node flows need root")

Code = grpc.StatusCode
STORAGE_TESTS = str(Path(__file__).resolve().parents[1] / "storage")
TIMEOUT = 120.0


def _error(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT)
    return raised.value


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mounts(path: Path) -> int:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.split()[4] == target)


def _loops_backed_under(directory: Path) -> list[str]:
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    real = os.path.realpath(directory)
    return [line for line in out.splitlines() if real in line or str(directory) in line]


class Site:
    """A plugin in ``all`` mode with its stubs and node id."""

    def __init__(self, process: plugin.PluginProcess, root: Path) -> None:
        self.process = process
        self.stubs = plugin.Stubs(process)
        self.controller = self.stubs.controller
        self.node = self.stubs.node
        self.root = root
        self.node_id = self.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id

    def volume(self, name: str, **parameters: str) -> str:
        request = create_request(name, parameters=parameters)
        return self.controller.CreateVolume(request, timeout=TIMEOUT).volume.volume_id

    def publish(self, volume_id: str, block: bool = False) -> dict[str, str]:
        response = self.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.node_id, volume_capability=capability(block=block)
            ),
            timeout=TIMEOUT,
        )
        return dict(response.publish_context)

    def stage_request(
        self, volume_id: str, staging: Path, context: dict[str, str], block: bool = False
    ) -> csi_pb2.NodeStageVolumeRequest:
        return csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging),
            volume_capability=capability(block=block), publish_context=context,
        )  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("findings")
    config = plugin.write_config(root)
    with plugin.running(config, "all", root) as process:
        found = Site(process, root)
        try:
            yield found
        finally:
            found.stubs.close()
    assert plugin.leftovers(root) == []


def _with_device_path(context: dict[str, str], device_path: str) -> dict[str, str]:
    """The controller's publish_context with the connection pointed somewhere else, as
    someone who may write VolumeAttachment objects could hand it to the node."""
    doc = json.loads(context["connection"])
    text = json.dumps(doc)
    old = doc_device_path(doc)
    return {**context, "connection": text.replace(json.dumps(old), json.dumps(device_path))}


def doc_device_path(doc: Any) -> str:
    """The device_path inside a serialized connection document, wherever it sits."""
    if isinstance(doc, dict):
        if isinstance(doc.get("device_path"), str):
            return doc["device_path"]
        values = list(doc.values())
    elif isinstance(doc, list):
        values = doc
    else:
        values = []
    for value in values:
        found = doc_device_path(value)
        if found:
            return found
    return ""


# -- finding 1: a hand-made publish_context formats an arbitrary host file ----------------------


@pytest.mark.parametrize(
    ("how", "block"),
    [
        pytest.param("outside", False, id="file-outside-the-volumes-dir"),
        pytest.param("dotdot", False, id="dot-dot-path-out-of-the-volumes-dir"),
        pytest.param("symlink", False, id="symlink-in-the-volumes-dir-pointing-out"),
        pytest.param("outside", True, id="block-access-to-a-host-file"),
    ],
)
def test_finding1_handmade_local_connection_is_refused(
    site: Site, tmp_path: Path, how: str, block: bool
) -> None:
    victim = tmp_path / "host-file.txt"
    victim.write_text("precious host data\n" * (64 * 1024 * 1024 // 19))
    before = _digest(victim)
    volume_id = site.volume(f"f1-{how}-{block}")
    context = site.publish(volume_id, block=block)
    volumes_dir = Path(doc_device_path(json.loads(context["connection"]))).parent
    if how == "outside":
        path = str(victim)
    elif how == "dotdot":
        path = str(volumes_dir) + "/.." * len(volumes_dir.parts) + str(victim)
    else:
        link = volumes_dir / f"volume-link-{how}"
        link.symlink_to(victim)
        path = str(link)
    staging = tmp_path / "staging"
    staging.mkdir()

    try:
        error = _error(
            site.node.NodeStageVolume,
            site.stage_request(volume_id, staging, _with_device_path(context, path), block=block),
        )
    finally:
        if how == "symlink":
            (volumes_dir / f"volume-link-{how}").unlink()

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert _digest(victim) == before
    assert _mounts(staging) == 0
    assert _loops_backed_under(tmp_path) == []
    assert "SECURITY: refused a local connection" in site.process.log()


def test_finding1_signed_publish_context_is_required_when_a_key_is_set(tmp_path: Path) -> None:
    """With a signing key, the node stages only what the controller signed: a document
    changed anywhere, or carrying no signature, is refused and logged."""
    key = tmp_path / "publish.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    config = plugin.write_config(tmp_path, signing_key_file=str(key))
    with plugin.running(config, "all", tmp_path) as process:
        found = Site(process, tmp_path)
        try:
            volume_id = found.volume("f1-signed")
            context = found.publish(volume_id)
            assert context.get("signature", "").startswith("hmac-sha256:")
            staging = tmp_path / "staging"
            staging.mkdir()
            tampered = {**context, "connection": context["connection"].replace(
                '"rw"', '"ro"')}  # fmt: skip
            unsigned = {"connection": context["connection"]}
            for bad in (tampered, unsigned):
                error = _error(found.node.NodeStageVolume,
                               found.stage_request(volume_id, staging, bad))  # fmt: skip
                assert error.code() == Code.INVALID_ARGUMENT, error.details()
                assert _mounts(staging) == 0
            found.node.NodeStageVolume(found.stage_request(volume_id, staging, context))
            assert _mounts(staging) == 1
            found.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging)))  # fmt: skip
            log = process.log()
        finally:
            found.stubs.close()
    assert log.count("SECURITY: refused NodeStageVolume") == 2
    assert plugin.leftovers(tmp_path) == []


# -- finding 2: NodeUnpublish of a volume never staged removes what is mounted there ------------


def test_finding2_unpublish_of_an_unknown_volume_leaves_a_foreign_mount(
    site: Site, tmp_path: Path
) -> None:
    real = tmp_path / "real-file"
    real.write_text("a file that is not the plugin's")
    source = tmp_path / "bind-source"
    source.write_text("something else")
    subprocess.run(["mount", "--bind", str(source), str(real)], check=True)
    try:
        error = _error(
            site.node.NodeUnpublishVolume,
            csi_pb2.NodeUnpublishVolumeRequest(volume_id="never-staged", target_path=str(real)),
        )
        assert error.code() == Code.NOT_FOUND, error.details()
        assert _mounts(real) == 1
    finally:
        subprocess.run(["umount", str(real)], check=False)
    assert real.read_text() == "a file that is not the plugin's"


def test_finding2_unpublish_leaves_a_target_it_did_not_create(site: Site, tmp_path: Path) -> None:
    """The CO made the target directory itself: unpublish unmounts the volume and leaves
    the directory (the plugin removes only what it created)."""
    volume_id = site.volume("f2-precreated")
    context = site.publish(volume_id)
    staging = tmp_path / "staging"
    staging.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    site.node.NodeStageVolume(site.stage_request(volume_id, staging, context))
    request = csi_pb2.NodePublishVolumeRequest(
        volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
        volume_capability=capability(),
    )  # fmt: skip
    site.node.NodePublishVolume(request)
    site.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
    )
    assert target.is_dir() and _mounts(target) == 0
    site.node.NodeUnstageVolume(
        csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging))
    )


# -- finding 3: NodeStage stacks the volume on a staging path holding another mount -------------


def test_finding3_stage_onto_a_foreign_mount_is_refused(site: Site, tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(staging)], check=True)
    (staging / "theirs.txt").write_text("hidden if something is mounted on top")
    volume_id = site.volume("f3-stacked")
    context = site.publish(volume_id)
    try:
        error = _error(site.node.NodeStageVolume, site.stage_request(volume_id, staging, context))
        assert error.code() == Code.FAILED_PRECONDITION, error.details()
        assert _mounts(staging) == 1
        assert (staging / "theirs.txt").read_text() == "hidden if something is mounted on top"
    finally:
        subprocess.run(["umount", str(staging)], check=False)
    assert _loops_backed_under(site.root) == []


# -- finding 4: loop devices leak when file_volumes_dir is reached through a symlink -------------


def test_finding4_no_loop_device_leaks_through_a_symlinked_volumes_dir(tmp_path: Path) -> None:
    real = tmp_path / "real-volumes"
    real.mkdir()
    (tmp_path / "volumes-link").symlink_to(real)
    backend = {"name": "linked", "driver": plugin.FILE_DRIVER,
               "options": {"file_volumes_dir": str(tmp_path / "volumes-link")}}  # fmt: skip
    config = plugin.write_config(tmp_path, backends=[backend])
    with plugin.running(config, "all", tmp_path) as process:
        found = Site(process, tmp_path)
        try:
            for cycle in range(3):
                volume_id = found.volume(f"f4-{cycle}")
                context = found.publish(volume_id)
                staging = tmp_path / f"staging-{cycle}"
                staging.mkdir()
                found.node.NodeStageVolume(found.stage_request(volume_id, staging, context))
                found.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=volume_id, staging_target_path=str(staging)))  # fmt: skip
                found.controller.ControllerUnpublishVolume(
                    csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id)
                )
                found.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))
                assert _loops_backed_under(real) == [], f"cycle {cycle}"  # fmt: skip
        finally:
            found.stubs.close()


# -- findings 5-7: SIGKILL while a driver call hangs ----------------------------------------------


class Hanging:
    """A plugin whose 'slow' backend hangs once in the driver method named;
    ``kill_during`` SIGKILLs it mid-call."""

    def __init__(self, root: Path, method: str) -> None:
        self.root = root
        self.markers = root / "markers"
        slow = {"name": "slow", "driver": "fault_injection.SlowFileDriver", "options": {
            "file_volumes_dir": str(root / "volumes" / "slow"),
            "fault_slow_operations": [method],
            "fault_slow_seconds": 120, "fault_slow_marker_dir": str(self.markers),
            "fault_slow_once": True}}  # fmt: skip
        self.config = plugin.write_config(root, backends=[slow])
        self.starts = 0

    def start(self) -> Site:
        self.starts += 1
        name = f"plugin-{self.starts}"
        process = plugin.PluginProcess(
            self.config, "all", self.root / f"{name}.sock", self.root / f"{name}.log",
            env={"PYTHONPATH": STORAGE_TESTS},
        ).start()  # fmt: skip
        return Site(process, self.root)

    def kill_during(self, found: Site, method: str, future: Any) -> None:
        deadline = time.monotonic() + 60
        while not (self.markers / method).exists():
            assert time.monotonic() < deadline, f"{method} never reached the driver"
            time.sleep(0.05)
        assert found.process.process is not None
        found.process.process.send_signal(signal.SIGKILL)
        found.process.process.wait(timeout=30)
        found.stubs.close()
        with pytest.raises(grpc.RpcError):
            future.result(timeout=30)


def _stop(found: Site) -> None:
    found.stubs.close()
    assert found.process.stop() == 0


def test_finding5_expand_interrupted_by_sigkill_heals(tmp_path: Path) -> None:
    hanging = Hanging(tmp_path, "extend_volume")
    found = hanging.start()
    volume_id = found.volume("f5")
    request = csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GiB)
    )
    hanging.kill_during(found, "extend_volume",
                        found.controller.ControllerExpandVolume.future(request))  # fmt: skip

    found = hanging.start()
    try:
        reply = found.controller.ControllerExpandVolume(request, timeout=TIMEOUT)
        assert reply.capacity_bytes == 2 * GiB
        context = found.publish(volume_id)  # was FAILED_PRECONDITION forever: 'extending'
        assert "connection" in context
    finally:
        _stop(found)


def test_finding6_publish_interrupted_by_sigkill_heals(tmp_path: Path) -> None:
    hanging = Hanging(tmp_path, "initialize_connection")
    found = hanging.start()
    volume_id = found.volume("f6")
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=found.node_id, volume_capability=capability()
    )
    hanging.kill_during(found, "initialize_connection",
                        found.controller.ControllerPublishVolume.future(request))  # fmt: skip

    found = hanging.start()
    try:
        reply = found.controller.ControllerPublishVolume(request, timeout=TIMEOUT)
        connection = json.loads(reply.publish_context["connection"])
        assert "local" in json.dumps(connection)  # the connection info is there
        found.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume_id, node_id=found.node_id), timeout=TIMEOUT)  # fmt: skip
        found.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))
    finally:
        _stop(found)


def _interrupted_snapshot(hanging: Hanging) -> str:
    found = hanging.start()
    volume_id = found.volume("f7")
    request = csi_pb2.CreateSnapshotRequest(source_volume_id=volume_id, name="f7-snap")
    hanging.kill_during(found, "create_snapshot",
                        found.controller.CreateSnapshot.future(request))  # fmt: skip
    return volume_id


def test_finding7_interrupted_snapshot_does_not_block_deleting_its_volume(
    tmp_path: Path,
) -> None:
    """The VolumeSnapshot was deleted meanwhile: no CreateSnapshot retry ever comes."""
    hanging = Hanging(tmp_path, "create_snapshot")
    volume_id = _interrupted_snapshot(hanging)

    found = hanging.start()
    try:
        found.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                      timeout=TIMEOUT)  # fmt: skip
        listed = found.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest())
        assert [s for s in listed.entries if s.snapshot.source_volume_id == volume_id] == []
    finally:
        _stop(found)
    assert sorted(os.listdir(hanging.root / "volumes" / "slow")) == []


def test_finding7_reconciler_heals_an_interrupted_snapshot_nobody_retries(tmp_path: Path) -> None:
    hanging = Hanging(tmp_path, "create_snapshot")  # its reconciler runs at start-up
    volume_id = _interrupted_snapshot(hanging)

    found = hanging.start()
    try:
        deadline = time.monotonic() + 30
        while any(f.startswith("snapshot-") for f in os.listdir(tmp_path / "volumes" / "slow")):
            assert time.monotonic() < deadline, "the reconciler left the snapshot"
            time.sleep(0.2)
        listed = found.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(
            source_volume_id=volume_id))  # fmt: skip
        assert list(listed.entries) == []
        assert "reconciler" in found.process.log()
        found.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))
    finally:
        _stop(found)
