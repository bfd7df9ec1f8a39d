"""Requests that are malformed in ways a proto3 client can still send, and the hygiene of
what the plugin leaves behind: the status code each gets (never INTERNAL, which means a
fault of the plugin), log lines a request string cannot forge, a store file only its
owner can read, and RPCs the plugin does not offer answered without a traceback.

Most tests drive the module's real plugin process (``csi_plugin``, FileDriver + SQLite);
the formatter and the UNIMPLEMENTED decorator are also tested in-process.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from csi_support.requests import GiB, Plugin, capability, create_request

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc

Code = grpc.StatusCode
TIMEOUT = 60.0
#: A number proto3 keeps as the access mode although the spec defines no such mode.
UNKNOWN_MODE = 99
INT64_MAX = 2**63 - 1
#: Far above what ext4 (16 TiB) takes in one file, yet a whole number of GiB in int64.
HUGE = 2**62
#: How a plugin log line starts (cli's format): a timestamp and a level.
RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def rpc_error(call: Callable[..., Any], request: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call fails with (failing the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=TIMEOUT, **kwargs)
    return raised.value


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def request_id() -> str:
    return unique("hygiene")


def with_id(rid: str) -> list[tuple[str, str]]:
    return [("x-request-id", rid)]


@pytest.fixture(scope="module")
def node_id(csi_plugin: Plugin) -> str:
    return csi_plugin.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id


@pytest.fixture
def volume(csi_plugin: Plugin) -> Iterator[csi_pb2.Volume]:
    """A 1 GiB volume on the FileDriver backend, deleted afterwards."""
    created = csi_plugin.controller.CreateVolume(create_request(unique("hyg")), timeout=TIMEOUT)
    yield created.volume
    csi_plugin.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=created.volume.volume_id), timeout=TIMEOUT
    )


# -- 9a: an access mode number the spec does not define -----------------------------------------


def _unknown_mode_requests(volume_id: str, node_id: str) -> dict[str, tuple[str, str, Any]]:
    cap = capability(mode=UNKNOWN_MODE)
    return {
        "CreateVolume": ("controller", "volume_capabilities",
                         create_request(unique("mode"), volume_capabilities=[cap])),
        "ControllerPublishVolume": ("controller", "volume_capability",
                                    csi_pb2.ControllerPublishVolumeRequest(
                                        volume_id=volume_id, node_id=node_id,
                                        volume_capability=cap)),
        "GetCapacity": ("controller", "volume_capabilities",
                        csi_pb2.GetCapacityRequest(volume_capabilities=[cap])),
        "NodeStageVolume": ("node", "volume_capability", csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path="/nonexistent/csi-staging",
            volume_capability=cap, publish_context={"connection": "{}"})),
        "NodePublishVolume": ("node", "volume_capability", csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path="/nonexistent/csi-staging",
            target_path="/nonexistent/csi-target", volume_capability=cap)),
    }  # fmt: skip


@pytest.mark.parametrize(
    "method",
    ["CreateVolume", "ControllerPublishVolume", "GetCapacity", "NodeStageVolume",
     "NodePublishVolume"],
)  # fmt: skip
def test_unknown_access_mode_is_invalid_argument(
    csi_plugin: Plugin, volume: csi_pb2.Volume, node_id: str, method: str
) -> None:
    service, field, request = _unknown_mode_requests(volume.volume_id, node_id)[method]
    stub = csi_plugin.controller if service == "controller" else csi_plugin.node

    error = rpc_error(getattr(stub, method), request)

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert field in error.details() and "access_mode" in error.details(), error.details()
    assert str(UNKNOWN_MODE) in error.details(), error.details()


def test_unknown_access_mode_is_not_confirmed(csi_plugin: Plugin, volume: csi_pb2.Volume) -> None:
    """ValidateVolumeCapabilities answers an unsupported capability with no confirmation
    and a message saying why, as the spec asks, not with an error."""
    response = csi_plugin.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[capability(mode=UNKNOWN_MODE)]
        ),
        timeout=TIMEOUT,
    )

    assert not response.HasField("confirmed")
    assert "access_mode" in response.message and str(UNKNOWN_MODE) in response.message


# -- 9b: paths with a NUL byte --------------------------------------------------------------


def test_require_path_accepts_an_absolute_path() -> None:
    from csi_driver import volume_requests as req

    assert req.require_path("/var/lib/kubelet/pods/x/mount", "target_path") == (
        "/var/lib/kubelet/pods/x/mount"
    )
    longest = "/" + "a" * (req.PATH_MAX - 2)
    assert req.require_path(longest, "target_path") == longest


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param("", "is required", id="empty"),
        pytest.param("/var/lib/\0/mount", "NUL", id="nul"),
        pytest.param("relative/mount", "absolute", id="relative"),
        pytest.param("/" + "a" * 4095, "4096 bytes", id="too-long"),
        pytest.param("/" + "é" * 2048, "bytes", id="too-long-in-bytes"),
    ],
)
def test_require_path_refuses_unusable_paths(value: str, reason: str) -> None:
    from csi_driver import errors
    from csi_driver import volume_requests as req

    with pytest.raises(errors.InvalidRequest) as raised:
        req.require_path(value, "staging_target_path")

    assert "staging_target_path" in str(raised.value)
    assert reason in str(raised.value)


def test_require_path_may_leave_a_relative_path_to_a_lookup() -> None:
    """volume_path is only compared with the node's records: csi-sanity sends
    'some/path' and expects NOT_FOUND, not INVALID_ARGUMENT."""
    from csi_driver import errors
    from csi_driver import volume_requests as req

    assert req.require_path("some/path", "volume_path", absolute=False) == "some/path"
    with pytest.raises(errors.InvalidRequest, match="volume_path contains a NUL byte"):
        req.require_path("some\0path", "volume_path", absolute=False)


NUL_PATH = "/tmp/csi\0target"
NUL_PATHS: list[Any] = [
    pytest.param("NodeUnpublishVolume", "target_path", csi_pb2.NodeUnpublishVolumeRequest(
        volume_id="vol-1", target_path=NUL_PATH), id="unpublish-target"),
    pytest.param("NodeUnstageVolume", "staging_target_path", csi_pb2.NodeUnstageVolumeRequest(
        volume_id="vol-1", staging_target_path=NUL_PATH), id="unstage-staging"),
    pytest.param("NodeStageVolume", "staging_target_path", csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path=NUL_PATH, volume_capability=capability(),
        publish_context={"connection": "{}"}), id="stage-staging"),
    pytest.param("NodePublishVolume", "staging_target_path", csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1", staging_target_path=NUL_PATH, target_path="/tmp/csi-target",
        volume_capability=capability()), id="publish-staging"),
    pytest.param("NodePublishVolume", "target_path", csi_pb2.NodePublishVolumeRequest(
        volume_id="vol-1", staging_target_path="/tmp/csi-staging", target_path=NUL_PATH,
        volume_capability=capability()), id="publish-target"),
    pytest.param("NodeGetVolumeStats", "volume_path", csi_pb2.NodeGetVolumeStatsRequest(
        volume_id="vol-1", volume_path=NUL_PATH), id="stats-volume-path"),
    pytest.param("NodeExpandVolume", "volume_path", csi_pb2.NodeExpandVolumeRequest(
        volume_id="vol-1", volume_path=NUL_PATH), id="expand-volume-path"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "field", "request_"), NUL_PATHS)
def test_nul_byte_in_a_path_is_invalid_argument(
    csi_plugin: Plugin, method: str, field: str, request_: Any
) -> None:
    error = rpc_error(getattr(csi_plugin.node, method), request_)

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert field in error.details(), error.details()


# -- 9c: sizes beyond int64 or beyond what the backend holds ----------------------------------


def _capacity(required: int) -> csi_pb2.CapacityRange:
    return csi_pb2.CapacityRange(required_bytes=required)


def test_create_beyond_int64_is_out_of_range(csi_plugin: Plugin) -> None:
    error = rpc_error(csi_plugin.controller.CreateVolume,
                      create_request(unique("int64"), size=INT64_MAX))  # fmt: skip

    assert error.code() == Code.OUT_OF_RANGE, error.details()
    assert str(INT64_MAX) in error.details()


def test_expand_beyond_int64_is_out_of_range(csi_plugin: Plugin, volume: csi_pb2.Volume) -> None:
    error = rpc_error(
        csi_plugin.controller.ControllerExpandVolume,
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=_capacity(INT64_MAX)
        ),
    )

    assert error.code() == Code.OUT_OF_RANGE, error.details()
    assert _size_of(csi_plugin, volume.volume_id) == GiB


def _size_of(csi_plugin: Plugin, volume_id: str) -> int:
    return csi_plugin.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id), timeout=TIMEOUT
    ).volume.capacity_bytes


@pytest.fixture
def huge_is_too_big(csi_plugin: Plugin) -> None:
    """The FileDriver's filesystem must refuse a HUGE file for these tests to mean
    anything (ext4 does: 16 TiB; XFS and tmpfs take 8 EiB)."""
    directory = csi_plugin.root / "volumes" / "embedded"
    with tempfile.TemporaryFile(dir=directory) as probe:
        try:
            os.ftruncate(probe.fileno(), HUGE)
        except OSError:
            return
    pytest.skip(f"the filesystem of {directory} holds a {HUGE}-byte file")


def _assert_backend_limit(error: grpc.RpcError) -> None:
    assert error.code() == Code.OUT_OF_RANGE, error.details()
    assert "larger than maximum allowed limit" in error.details(), error.details()
    assert "request id" not in error.details(), "not reported as a fault of the plugin"


@pytest.mark.usefixtures("huge_is_too_big")
def test_create_beyond_the_backends_file_size_is_out_of_range(csi_plugin: Plugin) -> None:
    name = unique("efbig")

    _assert_backend_limit(rpc_error(csi_plugin.controller.CreateVolume,
                                    create_request(name, size=HUGE)))  # fmt: skip

    retried = csi_plugin.controller.CreateVolume(create_request(name), timeout=TIMEOUT).volume
    assert retried.capacity_bytes == GiB, "nothing was left under the name"
    csi_plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=retried.volume_id))


@pytest.mark.usefixtures("huge_is_too_big")
def test_expand_beyond_the_backends_file_size_is_out_of_range(
    csi_plugin: Plugin, volume: csi_pb2.Volume
) -> None:
    _assert_backend_limit(rpc_error(
        csi_plugin.controller.ControllerExpandVolume,
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=_capacity(HUGE)),
    ))  # fmt: skip

    assert _size_of(csi_plugin, volume.volume_id) == GiB
    csi_plugin.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=_capacity(2 * GiB)
        ),
        timeout=TIMEOUT,
    )
    assert _size_of(csi_plugin, volume.volume_id) == 2 * GiB, "the volume still grows"


@pytest.mark.usefixtures("huge_is_too_big")
def test_clone_beyond_the_backends_file_size_is_out_of_range(
    csi_plugin: Plugin, volume: csi_pb2.Volume
) -> None:
    source = csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume.volume_id)
    )
    _assert_backend_limit(rpc_error(
        csi_plugin.controller.CreateVolume,
        create_request(unique("clone"), size=HUGE, volume_content_source=source),
    ))  # fmt: skip


@pytest.mark.usefixtures("huge_is_too_big")
def test_restore_beyond_the_backends_file_size_is_out_of_range(
    csi_plugin: Plugin, volume: csi_pb2.Volume
) -> None:
    ctl = csi_plugin.controller
    snapshot = ctl.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(source_volume_id=volume.volume_id, name=unique("snap")),
        timeout=TIMEOUT,
    ).snapshot
    try:
        source = csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id)
        )
        _assert_backend_limit(rpc_error(
            ctl.CreateVolume,
            create_request(unique("restore"), size=HUGE, volume_content_source=source),
        ))  # fmt: skip
    finally:
        ctl.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))


# -- 9d: a protocol os-brick does not know in publish_context --------------------------------


@pytest.mark.skipif(not plugin.is_root(), reason="the node service runs os-brick as root")
def test_unknown_protocol_in_publish_context_is_invalid_argument(
    csi_plugin: Plugin, volume: csi_pb2.Volume, node_id: str, tmp_path: Path
) -> None:
    ctl = csi_plugin.controller
    published = ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=node_id, volume_capability=capability()),
        timeout=TIMEOUT)  # fmt: skip
    try:
        document = json.loads(published.publish_context["connection"])
        document["connections"][0]["connection_info"]["driver_volume_type"] = "carrier-pigeon"
        error = rpc_error(csi_plugin.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(tmp_path),
            volume_capability=capability(),
            publish_context={"connection": json.dumps(document)}))  # fmt: skip
    finally:
        ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume.volume_id, node_id=node_id), timeout=TIMEOUT)  # fmt: skip

    assert error.code() == Code.INVALID_ARGUMENT, error.details()
    assert "carrier-pigeon" in error.details()
    assert plugin.leftovers(tmp_path) == []


# -- 10a: the store file and its WAL files are the owner's alone --------------------------------


def test_store_files_are_private(csi_plugin: Plugin) -> None:
    csi_plugin.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=TIMEOUT)
    database = csi_plugin.root / "meta.sqlite"
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]

    modes = {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files}

    assert modes == {f.name: "0o600" for f in files}


# -- 10b: one log line per record, whatever a request holds ------------------------------------

FORGED = "FAKE LINE"


def _lines_with(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def _assert_one_line_records(csi_plugin: Plugin, rid: str) -> None:
    log = csi_plugin.log()
    mine = _lines_with(log, rid)
    assert mine, "the plugin logged the call"
    forged = [line for line in log.splitlines() if line.startswith(FORGED)]
    assert forged == [], f"a request string started a log line: {forged}"
    for line in _lines_with(log, FORGED):
        assert RECORD_START.match(line), f"not a record of its own: {line!r}"
    assert "\x1b" not in log, "an escape sequence reached the log"


@pytest.mark.parametrize(
    ("method", "request_"),
    [
        pytest.param("CreateVolume", create_request(f"pvc\n{FORGED}"), id="create-name"),
        pytest.param("ControllerGetVolume", csi_pb2.ControllerGetVolumeRequest(
            volume_id=f"pvc\n{FORGED}"), id="get-volume-id"),
        pytest.param("CreateSnapshot", csi_pb2.CreateSnapshotRequest(
            name=f"pvc\n{FORGED}", source_volume_id=f"pvc\r\n{FORGED}\x1b[2J"),
            id="snapshot-name-and-source"),
        pytest.param("GetSnapshot", csi_pb2.GetSnapshotRequest(
            snapshot_id=f"snap\x1b[31m\n{FORGED}\u2028{FORGED}"), id="get-snapshot-id"),
    ],
)  # fmt: skip
def test_request_strings_cannot_forge_log_lines(
    csi_plugin: Plugin, method: str, request_: Any
) -> None:
    rid = request_id()
    stub = getattr(csi_plugin.controller, method)
    try:
        response = stub(request_, timeout=TIMEOUT, metadata=with_id(rid))
    except grpc.RpcError:
        response = None

    _assert_one_line_records(csi_plugin, rid)
    ok_or_failed = [line for line in _lines_with(csi_plugin.log(), rid)
                    if f"{method} ok" in line or f"{method} ->" in line]  # fmt: skip
    assert len(ok_or_failed) == 1, ok_or_failed
    if response is not None and method == "CreateVolume":
        csi_plugin.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=response.volume.volume_id), timeout=TIMEOUT
        )


def test_formatter_escapes_message_and_traceback() -> None:
    from csi_driver import log_format

    formatter = log_format.OneLineFormatter(log_format.FORMAT)
    try:
        raise ValueError("bad\nvalue\r\x1b[2J\x00\x7f\x85\u2028end")
    except ValueError:
        record = logging.LogRecord("csi_driver.test", logging.ERROR, __file__, 1,
                                   "volume %s failed\tbadly", (f"pvc\n{FORGED}",),
                                   sys.exc_info())  # fmt: skip

    line = formatter.format(record)

    assert line.splitlines() == [line], line
    assert "volume pvc\\nFAKE LINE failed\\tbadly" in line
    assert "\\nTraceback (most recent call last):\\n" in line
    assert "ValueError: bad\\nvalue\\r\\x1b[2J\\x00\\x7f\\x85\\u2028end" in line
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), line


def test_formatter_leaves_ordinary_text_alone() -> None:
    from csi_driver import log_format

    text = 'name: "pvc-1" path \\n stays; GiB ±1 ünïcode'

    assert log_format.one_line(text) == text


# -- 10c: RPCs the plugin does not offer ----------------------------------------------------------

UNOFFERED: list[Any] = [
    pytest.param("controller", "ControllerModifyVolume",
                 csi_pb2.ControllerModifyVolumeRequest(volume_id="v"), id="modify"),
    pytest.param("controller", "ControllerGetVolumeHealth",
                 csi_pb2.ControllerGetVolumeHealthRequest(volume_id="v"), id="controller-health"),
    pytest.param("controller", "ControllerListVolumeHealth",
                 csi_pb2.ControllerListVolumeHealthRequest(), id="controller-list-health"),
    pytest.param("node", "NodeGetStorageHealth", csi_pb2.NodeGetStorageHealthRequest(),
                 id="node-storage-health"),
]  # fmt: skip


def _assert_unimplemented(error: grpc.RpcError, method: str) -> None:
    assert error.code() == Code.UNIMPLEMENTED, error.details()
    assert method in error.details() and "not implemented" in error.details(), error.details()


@pytest.fixture
def in_process(tmp_path: Path) -> Iterator[Callable[..., grpc.Channel]]:
    """Serves servicers in this process on a unix socket; returns a channel to them."""
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []
    socket_dir = Path(tempfile.mkdtemp(prefix="hyg-", dir="/tmp"))  # short: sun_path

    def serve(*servicers: Any) -> grpc.Channel:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        for servicer in servicers:
            name = type(servicer).__mro__[1].__name__  # e.g. ControllerServicer
            getattr(csi_pb2_grpc, f"add_{name}_to_server")(servicer, server)
        address = f"unix:{socket_dir}/{len(servers)}.sock"
        server.add_insecure_port(address)
        server.start()
        servers.append(server)
        channels.append(grpc.insecure_channel(address))
        return channels[-1]

    yield serve
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(None)
    for sock in socket_dir.iterdir():
        sock.unlink()
    socket_dir.rmdir()


@pytest.mark.parametrize(("service", "method", "request_"), UNOFFERED)
def test_decorator_answers_unimplemented_without_traceback(
    in_process: Callable[..., grpc.Channel],
    caplog: pytest.LogCaptureFixture,
    service: str,
    method: str,
    request_: Any,
) -> None:
    from csi_driver import rpc

    @rpc.answer_unimplemented
    class TinyController(csi_pb2_grpc.ControllerServicer):
        def ControllerGetCapabilities(self, request: Any, context: Any) -> Any:
            return csi_pb2.ControllerGetCapabilitiesResponse()

    @rpc.answer_unimplemented
    class TinyNode(csi_pb2_grpc.NodeServicer):
        pass

    channel = in_process(TinyController(), TinyNode())
    stubs = {"controller": csi_pb2_grpc.ControllerStub(channel),
             "node": csi_pb2_grpc.NodeStub(channel)}  # fmt: skip
    caplog.set_level(logging.DEBUG)
    rid = request_id()

    error = rpc_error(getattr(stubs[service], method), request_, metadata=with_id(rid))

    _assert_unimplemented(error, method)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r for r in caplog.records if r.exc_info] == []
    answers = [r.getMessage() for r in caplog.records
               if r.levelno == logging.INFO and rid in r.getMessage()]  # fmt: skip
    assert len(answers) == 1 and f"{method} -> UNIMPLEMENTED" in answers[0], answers
    # What the class defines itself is left alone.
    stubs["controller"].ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())


def test_decorator_covers_every_rpc_the_services_leave_out() -> None:
    """Every RPC of the generated bases is either written by the plugin's service or
    installed by ``rpc.answer_unimplemented``: none is left to the generated stub."""
    from csi_driver.controller import ControllerService
    from csi_driver.identity import IdentityService
    from csi_driver.node import NodeService

    left = [
        f"{service.__name__}.{name}"
        for service, base in ((IdentityService, csi_pb2_grpc.IdentityServicer),
                              (ControllerService, csi_pb2_grpc.ControllerServicer),
                              (NodeService, csi_pb2_grpc.NodeServicer))
        for name, member in vars(base).items()
        if callable(member) and not name.startswith("_") and getattr(service, name) is member
    ]  # fmt: skip

    assert left == []


@pytest.mark.parametrize(("service", "method", "request_"), UNOFFERED)
def test_unoffered_rpc_is_unimplemented_in_one_log_line(
    csi_plugin: Plugin, service: str, method: str, request_: Any
) -> None:
    stub = csi_plugin.controller if service == "controller" else csi_plugin.node
    rid = request_id()

    error = rpc_error(getattr(stub, method), request_, metadata=with_id(rid))

    _assert_unimplemented(error, method)
    log = csi_plugin.log()
    assert "Exception calling application" not in log and "NotImplementedError" not in log
    answers = [line for line in _lines_with(log, rid) if " DEBUG " not in line]
    assert len(answers) == 1 and " INFO " in answers[0], answers
    assert f"{method} -> UNIMPLEMENTED" in answers[0]
