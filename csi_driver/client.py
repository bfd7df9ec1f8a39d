"""A tiny CSI client (``csi-driver call ...``) to try a running plugin by hand.

It speaks the same gRPC API the Kubernetes sidecars use and prints each response
as JSON, e.g. ``csi-driver call --endpoint unix:///tmp/csi.sock create-volume pvc-1``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.server import parse_endpoint

GiB = 1024**3
Mode = csi_pb2.VolumeCapability.AccessMode.Mode


def _capability(block: bool) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER)
    )
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.SetInParent()
    return cap


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _calls(args: argparse.Namespace, channel: grpc.Channel) -> dict[str, Callable[[], Any]]:
    identity = csi_pb2_grpc.IdentityStub(channel)
    controller = csi_pb2_grpc.ControllerStub(channel)
    node = csi_pb2_grpc.NodeStub(channel)
    return {
        "probe": lambda: identity.Probe(csi_pb2.ProbeRequest()),
        "info": lambda: identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest()),
        "node-info": lambda: node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()),
        "create-volume": lambda: controller.CreateVolume(
            csi_pb2.CreateVolumeRequest(
                name=args.name,
                capacity_range=csi_pb2.CapacityRange(required_bytes=int(args.size_gib * GiB)),
                volume_capabilities=[_capability(args.block)],
                parameters=_params(args.param),
            )
        ),
        "delete-volume": lambda: controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=args.volume_id)
        ),
        "list-volumes": lambda: controller.ListVolumes(csi_pb2.ListVolumesRequest()),
        "create-snapshot": lambda: controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name=args.name, source_volume_id=args.volume_id)
        ),
        "delete-snapshot": lambda: controller.DeleteSnapshot(
            csi_pb2.DeleteSnapshotRequest(snapshot_id=args.snapshot_id)
        ),
        "list-snapshots": lambda: controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()),
    }


def add_parser(commands: Any) -> None:
    call = commands.add_parser("call", help="call a running plugin (a tiny CSI client)")
    call.add_argument("--endpoint", required=True, help="unix:///PATH or tcp://HOST:PORT")
    call.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
    rpcs = call.add_subparsers(dest="rpc", required=True)
    for name in ("probe", "info", "node-info", "list-volumes", "list-snapshots"):
        rpcs.add_parser(name)
    create = rpcs.add_parser("create-volume")
    create.add_argument("name")
    create.add_argument("--size-gib", type=float, default=1.0)
    create.add_argument("--block", action="store_true", help="raw block instead of a filesystem")
    create.add_argument("--param", action="append", default=[], help="KEY=VALUE (backend=...)")
    rpcs.add_parser("delete-volume").add_argument("volume_id")
    snap = rpcs.add_parser("create-snapshot")
    snap.add_argument("name")
    snap.add_argument("volume_id")
    rpcs.add_parser("delete-snapshot").add_argument("snapshot_id")


def run(args: argparse.Namespace) -> int:
    endpoint = parse_endpoint(args.endpoint)
    with grpc.insecure_channel(endpoint.grpc_address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(f"no plugin answers on {endpoint}", file=sys.stderr)
            return 1
        try:
            response = _calls(args, channel)[args.rpc]()
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json.dumps(json_format.MessageToDict(response), indent=2))
    return 0
