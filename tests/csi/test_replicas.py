"""Two controller replicas on one shared store: concurrent CreateVolume and CreateSnapshot
calls for one name, spread over both processes, make one volume (one snapshot) and every
caller is answered with it. Each replica serializes calls for a name only within
itself; across processes only the store's atomic create_unique keeps names unique.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import create_request

from csi_driver.csi_pb import csi_pb2

CALLERS_PER_REPLICA = 10


def _race(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run every call at once; CO-style retries on ABORTED (a replica's own name lock)."""
    start = threading.Barrier(len(calls))
    answers: list[Any] = []
    errors: list[BaseException] = []

    def caller(call: Callable[[], Any]) -> None:
        start.wait()
        for _ in range(200):
            try:
                answers.append(call())
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED:
                    errors.append(exc)
                    return
        errors.append(RuntimeError("still ABORTED after 200 tries"))

    threads = [threading.Thread(target=caller, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, errors


@pytest.mark.parametrize("store", ["etcd", "kubernetes"])
def test_two_replicas_create_one_volume_and_one_snapshot_per_name(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    if store == "etcd":
        server = request.getfixturevalue("etcd_server")
        persistence: dict[str, Any] = {"storage": "etcd", "endpoints": [server.endpoint],
                                       "prefix": f"/replicas/{tmp_path.name}/"}  # fmt: skip
    else:
        from csi_support.kube_store import ensure_crds, new_namespace

        plane = request.getfixturevalue("kube_apiserver")
        ensure_crds(plane)
        persistence = {"storage": "kubernetes", "kubeconfig": plane.kubeconfig,
                       "namespace": new_namespace(plane, "replicas")}  # fmt: skip
    config = plugin.write_config(tmp_path, storage={"persistence_config": persistence})
    with (
        plugin.running(config, "controller", tmp_path, name="replica-a") as a,
        plugin.running(config, "controller", tmp_path, name="replica-b") as b,
    ):
        stubs = [plugin.Stubs(a), plugin.Stubs(b)]
        try:
            volume_calls = [
                (lambda s=s: s.controller.CreateVolume(create_request("pvc-race"), timeout=60))
                for s in stubs
                for _ in range(CALLERS_PER_REPLICA)
            ]
            answers, errors = _race(volume_calls)
            assert errors == []
            ids = {answer.volume.volume_id for answer in answers}
            assert len(answers) == 2 * CALLERS_PER_REPLICA and len(ids) == 1
            (volume_id,) = ids
            files = sorted(p.name for p in (tmp_path / "volumes" / "embedded").iterdir())
            assert files == [f"volume-{volume_id}"]

            snapshot_request = csi_pb2.CreateSnapshotRequest(
                name="snap-race", source_volume_id=volume_id
            )
            snapshot_calls = [
                (lambda s=s: s.controller.CreateSnapshot(snapshot_request, timeout=60))
                for s in stubs
                for _ in range(CALLERS_PER_REPLICA)
            ]
            answers, errors = _race(snapshot_calls)
            assert errors == []
            assert len({answer.snapshot.snapshot_id for answer in answers}) == 1
            for s in stubs:
                listed = s.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60)
                assert [e.volume.volume_id for e in listed.entries] == [volume_id]
                snaps = s.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=60)
                assert len(snaps.entries) == 1
        finally:
            for s in stubs:
                s.close()
