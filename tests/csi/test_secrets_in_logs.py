"""No log line of the plugin holds a secret: neither a password from the config file
nor the CHAP credentials a driver puts into connection info (which travel to the
node inside publish_context), even at DEBUG level and on failures."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import CONFIGURED_PASSWORD, Plugin, capability, create_request

from csi_driver.csi_pb import csi_pb2


def test_passwords_never_reach_the_log(csi_plugin: Plugin, tmp_path: Path) -> None:
    if not plugin.is_root():
        pytest.skip("staging needs root (loop device, mount)")
    ctl, node = csi_plugin.controller, csi_plugin.node
    node_id = node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
    volume = ctl.CreateVolume(
        create_request(f"secret-{uuid.uuid4().hex[:6]}", parameters={"backend": "chap"})
    ).volume
    published = ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()))  # fmt: skip
    document = json.loads(published.publish_context["connection"])
    chap_secret = document["connections"][0]["connection_info"]["data"]["auth_password"]
    assert chap_secret.startswith("Chap-"), "the fake driver handed out a CHAP secret"

    staging = tmp_path / "stage"
    staging.mkdir()
    stage = csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging),
        volume_capability=capability(), publish_context=published.publish_context,
        secrets={"password": CONFIGURED_PASSWORD},
    )  # fmt: skip
    node.NodeStageVolume(stage)
    # A failing call that carries the same secrets.
    wrong = csi_pb2.NodeStageVolumeRequest()
    wrong.CopyFrom(stage)
    wrong.volume_id = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError):
        node.NodeStageVolume(wrong)
    node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging)))  # fmt: skip
    ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id))  # fmt: skip
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))

    log = csi_plugin.log()
    assert "ControllerPublishVolume response" in log, "DEBUG logging of responses is on"
    assert "NodeStageVolume request" in log
    for secret in (CONFIGURED_PASSWORD, chap_secret):
        leaks = [line for line in log.splitlines() if secret in line]
        assert leaks == [], f"secret in the log: {leaks[:3]}"
    assert plugin.leftovers(tmp_path) == []
