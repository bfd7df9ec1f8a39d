"""Start-up benchmark: seconds from process start to a ready Probe, and resident memory.

Real plugin processes (``python -m csi_driver.cli``, as the image runs it) on the
embedded FileDriver with SQLite, each mode started ``--runs`` times:

- ``node`` (no store, no backend): seconds until the socket answers and until Probe
  says ready; VmRSS once ready (idle), after NodeGetInfo (kubelet's first call, which
  loads os-brick for the host's connector properties) and after NodeStageVolume and
  NodePublishVolume of a volume a controller process published to it (stage and
  publish need root: loop devices and mounts);
- ``controller`` and ``all``: the same start-up numbers, RSS once ready.

Goals (issue 13): node ready <= 0.3 s, controller ready <= 1 s, no RSS above the
measurements taken before. Prints ONE JSON line (medians and every run); nothing here
asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from csi_support.plugin import (  # noqa: E402
    Stubs,
    file_backend,
    probe,
    rss_mib,
    running,
    write_config,
)
from csi_support.requests import capability, create_request  # noqa: E402

from csi_driver.csi_pb import csi_pb2  # noqa: E402

#: Seconds between looks for the socket (free for the plugin) and between Probes: each
#: Probe takes the plugin's interpreter lock for a moment, away from its start-up work,
#: so they are spaced (a ready time is up to one interval late, half of one on average).
SOCKET_POLL_SECONDS = 0.005
PROBE_POLL_SECONDS = 0.05
START_TIMEOUT = 120.0


class Started:
    """One plugin process started by the benchmark, with its start-up timings."""

    def __init__(self, config: Path, mode: str, directory: Path, name: str) -> None:
        self.socket = directory / f"{name}.sock"
        self.log = directory / f"{name}.log"
        command = [sys.executable, "-m", "csi_driver.cli", "--endpoint", f"unix://{self.socket}",
                   "--mode", mode, "--config", str(config)]  # fmt: skip
        started = time.perf_counter()
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.answering_s: float | None = None
        while True:
            elapsed = time.perf_counter() - started
            if self.process.poll() is not None or elapsed > START_TIMEOUT:
                self.stop()
                raise RuntimeError(f"{mode} did not get ready:\n{self.log.read_text()[-3000:]}")
            if not self.socket.exists():
                time.sleep(SOCKET_POLL_SECONDS)
                continue
            ready = probe(self.socket, timeout=1)
            if ready is not None and self.answering_s is None:
                self.answering_s = round(elapsed, 3)
            if ready:
                self.ready_s = round(elapsed, 3)
                break
            time.sleep(PROBE_POLL_SECONDS if ready is not None else SOCKET_POLL_SECONDS)
        self.rss_ready_mib = rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code != 0:
            raise RuntimeError(f"exit {code}:\n{self.log.read_text()[-3000:]}")


def _node_calls(
    node: Started, controller: Stubs, volume_id: str, work: Path, run: int
) -> tuple[float, float]:
    """NodeGetInfo, ControllerPublish (the controller), NodeStage, NodePublish; the node's
    RSS after NodeGetInfo and after NodePublish; everything undone afterwards."""
    cap = capability()
    stubs = Stubs(node)  # type: ignore[arg-type]
    staging, target = work / f"staging-{run}", work / f"pod-{run}" / "mount"
    staging.mkdir()
    target.parent.mkdir()
    try:
        node_id = stubs.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=60).node_id
        rss_info = rss_mib(node.process.pid)
        context = controller.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=node_id, volume_capability=cap
            ), timeout=60,
        ).publish_context  # fmt: skip
        stubs.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), volume_capability=cap,
            publish_context=context), timeout=120)  # fmt: skip
        stubs.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=cap), timeout=120)  # fmt: skip
        rss = rss_mib(node.process.pid)
        stubs.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=str(target)), timeout=120)  # fmt: skip
        stubs.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging)), timeout=120)  # fmt: skip
        controller.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id),
            timeout=60,
        )
    finally:
        stubs.close()
    return rss_info, rss


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k in runs[0] if runs[0][k] is not None]
    return {
        "median": {k: round(statistics.median(r[k] for r in runs), 3) for k in keys},
        "runs": runs,
    }


def measure(runs: int, stage: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-start-") as name:
        work = Path(name)
        key = work / "publish.key"
        key.write_text(secrets.token_urlsafe(32) + "\n")
        key.chmod(0o600)
        config = write_config(work, [file_backend(work / "volumes")], signing_key_file=str(key))
        node_dir = work / "node"
        node_dir.mkdir()
        node_config = write_config(
            node_dir, backends=[], storage={"file_locks_path": str(node_dir / "locks")},
            node={"local_roots": [str(work / "volumes")]}, signing_key_file=str(key),
        )  # fmt: skip
        node_config.write_text(node_config.read_text().replace("backends: []\n", ""))
        result: dict[str, Any] = {}
        for mode in ("controller", "all"):
            rows = []
            for run in range(runs):
                started = Started(config, mode, work, f"{mode}-{run}")
                started.stop()
                rows.append({"answering_s": started.answering_s, "ready_s": started.ready_s,
                             "rss_ready_mib": started.rss_ready_mib})  # fmt: skip
            result[mode] = _summary(rows)
        with running(config, "controller", work, name="publisher") as publisher:
            controller = Stubs(publisher)
            volume_id = controller.controller.CreateVolume(
                create_request("bench-startup"), timeout=60
            ).volume.volume_id
            rows = []
            for run in range(runs):
                node = Started(node_config, "node", node_dir, f"node-{run}")
                row = {"answering_s": node.answering_s, "ready_s": node.ready_s,
                       "rss_ready_mib": node.rss_ready_mib, "rss_info_mib": None,
                       "rss_staged_mib": None}  # fmt: skip
                try:
                    if stage:
                        row["rss_info_mib"], row["rss_staged_mib"] = _node_calls(
                            node, controller, volume_id, work, run
                        )
                finally:
                    node.stop()
                rows.append(row)
            result["node"] = _summary(rows)
            controller.controller.DeleteVolume(
                csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60
            )
            controller.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="starts per mode (default 5)")
    args = parser.parse_args()
    stage = os.geteuid() == 0
    result = {"benchmark": "startup", "runs": args.runs, "cpus": os.cpu_count(),
              "node_stage_publish": stage, **measure(args.runs, stage)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
