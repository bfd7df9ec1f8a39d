"""What a plugin process loads and when it answers (issue 13, items 1 and 2).

A node serves NodeStageVolume and NodePublishVolume without Cinder, oslo.versionedobjects
or oslo.db, and, for a ``local`` connection (the FileDriver's), without os-brick and the
eventlet it brings; os-brick comes with the first call that needs it (NodeGetInfo, for
this host's connector properties), and the process still stops cleanly after it. The
node runs the shipped entry point (``cli.main``) in a ``python -c`` script that prints
``sorted(sys.modules)`` once the plugin has stopped: the import set is read from the
real process, with no debug hook in the plugin.

A controller listens before its backends are up: Probe answers not ready, and the log
says why, while a backend's ``do_setup`` runs (``fault_injection.GatedSetupFileDriver``,
a fake on purpose, waits for the test's word there), its RPCs answer UNAVAILABLE, and
Probe turns ready once the backend is up. A backend that fails to start still ends the
process with code 2 naming it; a SIGTERM during the start-up ends it within the grace.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import capability, create_request

from csi_driver import node_identity
from csi_driver.csi_pb import csi_pb2

STORAGE_TESTS = str(Path(__file__).resolve().parents[1] / "storage")
GATED_DRIVER = "fault_injection.GatedSetupFileDriver"
TIMEOUT = 120.0
#: The plugin's own entry point, then the modules the process holds as it ends.
MODULES_MARK = "MODULES "
PRINT_MODULES = (
    "import json, sys\n"
    "from csi_driver import cli\n"
    "code = cli.main(sys.argv[1:])\n"
    f"print({MODULES_MARK!r} + json.dumps(sorted(sys.modules)), flush=True)\n"
    "sys.exit(code)\n"
)
#: Only a controller needs these: a node never loads them.
CONTROLLER_ONLY = {"cinder", "oslo_versionedobjects", "oslo_db", "sqlalchemy"}
#: What a node loads only when a call needs os-brick.
OS_BRICK = {"os_brick", "oslo_privsep", "eventlet"}


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Readiness wait (not a speed goal): poll until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _loaded(log: str) -> set[str]:
    """The top-level packages the process held at its end, from the script's line."""
    lines = [line for line in log.splitlines() if line.startswith(MODULES_MARK)]
    assert len(lines) == 1, log[-3000:]
    return {name.partition(".")[0] for name in json.loads(lines[0][len(MODULES_MARK) :])}


# -- the node ---------------------------------------------------------------------------------


@pytest.mark.skipif(not plugin.is_root(), reason="stage and publish need root: loops, mounts")
@pytest.mark.skipif(shutil.which("losetup") is None, reason="losetup (util-linux) is missing")
@pytest.mark.parametrize("node_info", [False, True], ids=["stage-publish", "info-stage-publish"])
def test_a_node_serves_stage_and_publish_without_cinder(tmp_path: Path, node_info: bool) -> None:
    key = tmp_path / "publish.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    key.chmod(0o600)
    controller_config = plugin.write_config(tmp_path, signing_key_file=str(key))
    node_dir = tmp_path / "node-process"
    node_dir.mkdir()
    node_config = plugin.write_config(
        node_dir, backends=[], storage={"file_locks_path": str(node_dir / "locks")},
        node={"local_roots": [str(tmp_path / "volumes")]}, signing_key_file=str(key),
    )  # fmt: skip
    node_config.write_text(node_config.read_text().replace("backends: []\n", ""))
    staging, target = tmp_path / "staging", tmp_path / "pod" / "mount"
    staging.mkdir()
    target.parent.mkdir()
    cap = capability()

    with plugin.running(controller_config, "controller", tmp_path) as controller:
        stubs = plugin.Stubs(controller)
        volume_id = stubs.controller.CreateVolume(
            create_request("startup-imports"), timeout=TIMEOUT
        ).volume.volume_id
        node = plugin.PluginProcess(
            node_config, "node", node_dir / "node.sock", node_dir / "node.log",
            launcher=("-c", PRINT_MODULES),
        )  # fmt: skip
        node.start()
        node_stubs = plugin.Stubs(node)
        try:
            if node_info:
                node_id = node_stubs.node.NodeGetInfo(
                    csi_pb2.NodeGetInfoRequest(), timeout=TIMEOUT
                ).node_id
            else:  # the id kubelet would carry, made here: the node never runs os-brick
                node_id, _ = node_identity.encode(socket.gethostname(), {"ip": "127.0.0.1"})
            context = stubs.controller.ControllerPublishVolume(
                csi_pb2.ControllerPublishVolumeRequest(
                    volume_id=volume_id, node_id=node_id, volume_capability=cap
                ), timeout=TIMEOUT,
            ).publish_context  # fmt: skip
            node_stubs.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap,
                publish_context=context), timeout=TIMEOUT)  # fmt: skip
            node_stubs.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
                volume_capability=cap), timeout=TIMEOUT)  # fmt: skip
            assert (target / "lost+found").is_dir()  # the volume's filesystem, published
            node_stubs.node.NodeUnpublishVolume(
                csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
                timeout=TIMEOUT,
            )
            node_stubs.node.NodeUnstageVolume(
                csi_pb2.NodeUnstageVolumeRequest(
                    volume_id=volume_id, staging_target_path=str(staging)
                ),
                timeout=TIMEOUT,
            )
        finally:
            node_stubs.close()
            code = node.stop()
        stubs.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id),
            timeout=TIMEOUT,
        )
        stubs.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=TIMEOUT
        )
        stubs.close()

    log = node.log()
    assert code == 0, log[-3000:]  # os-brick's loading leaves no thread the exit waits for
    assert "NodeStageVolume ok" in log and "NodePublishVolume ok" in log
    loaded = _loaded(log)
    assert not loaded & CONTROLLER_ONLY, sorted(loaded & CONTROLLER_ONLY)
    if node_info:
        assert loaded >= OS_BRICK  # loaded when NodeGetInfo needed it, not at start
    else:
        assert not loaded & OS_BRICK, sorted(loaded & OS_BRICK)
    assert plugin.leftovers(tmp_path) == []


# -- the controller ---------------------------------------------------------------------------


def _gated_controller(root: Path, grace: float = 20.0) -> tuple[plugin.PluginProcess, Path]:
    """A controller process whose one backend waits in do_setup for the test's word,
    started until its Probe answers (not ready); and the gate directory."""
    gate = root / "gate"
    backend = {"name": "gated", "driver": GATED_DRIVER,
               "options": {"file_volumes_dir": str(root / "volumes"),
                           "fault_setup_gate_dir": str(gate)}}  # fmt: skip
    config = plugin.write_config(root, backends=[backend], shutdown_grace_seconds=grace)
    process = plugin.PluginProcess(
        config, "controller", root / "csi.sock", root / "controller.log",
        env={"PYTHONPATH": STORAGE_TESTS},
    )  # fmt: skip
    process.start(ready=False)
    _wait_for((gate / "waiting").exists, "the backend's do_setup to start")
    return process, gate


def test_the_controller_is_not_ready_until_its_backends_are_up(tmp_path: Path) -> None:
    process, gate = _gated_controller(tmp_path)
    stubs = plugin.Stubs(process)
    try:
        assert process.probe() is False
        with pytest.raises(grpc.RpcError) as refused:
            stubs.controller.CreateVolume(create_request("too-early"), timeout=TIMEOUT)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "backends still starting" in refused.value.details()
        assert "gated" in refused.value.details()
        # Needs no backend: answered while they start.
        stubs.controller.ControllerGetCapabilities(
            csi_pb2.ControllerGetCapabilitiesRequest(), timeout=TIMEOUT
        )

        (gate / "open").touch()
        _wait_for(lambda: process.probe() is True, "Probe to answer ready")
        created = stubs.controller.CreateVolume(create_request("in-time"), timeout=TIMEOUT)
        stubs.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=created.volume.volume_id), timeout=TIMEOUT
        )
    finally:
        stubs.close()
        code = process.stop()
    log = process.log()
    assert code == 0, log[-3000:]
    assert "Probe: not ready: backends still starting" in log
    assert log.index("Probe: not ready:") < log.index("backends up in")
    assert "stopped; backends closed: gated" in log


def test_a_backend_that_fails_to_start_ends_the_controller_with_code_2(tmp_path: Path) -> None:
    process, gate = _gated_controller(tmp_path)
    (gate / "fail").touch()
    assert process.process is not None
    code = process.process.wait(timeout=TIMEOUT)
    process.exit_code = code
    log = process.log()
    assert code == 2, log[-3000:]
    assert "csi-driver: " in log and "gated" in log and "array unreachable" in log
    assert not process.socket.exists()


def test_a_sigterm_while_a_backend_starts_ends_the_controller_within_the_grace(
    tmp_path: Path,
) -> None:
    process, _ = _gated_controller(tmp_path, grace=1.0)  # the gate never opens
    assert process.process is not None
    process.process.send_signal(signal.SIGTERM)
    code = process.process.wait(timeout=TIMEOUT)
    process.exit_code = code
    log = process.log()
    assert code == 0, log[-3000:]
    assert "a backend is still starting at the end of the grace" in log
    assert not process.socket.exists()
