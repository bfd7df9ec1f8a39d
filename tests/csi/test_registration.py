"""The kubelet options on real plugin processes: registration (``--registration-dir``)
and ``/healthz`` (``--health-port``).

The tests talk to the registration socket as kubelet does: a gRPC client of
``pluginregistration.Registration`` on ``<dir>/<driver>-reg.sock`` calls GetInfo, then
uses the CSI endpoint it names, and reports the outcome with NotifyRegistrationStatus.
A refusal must fail ``/healthz`` (the plugin's ``--health-port``) with kubelet's reason;
SIGTERM must remove the registration socket before the CSI server drains.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from csi_support import plugin

from csi_driver.config import DEFAULT_DRIVER_NAME
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.kubelet.registration_pb import api_pb2, api_pb2_grpc

#: The CSI socket path as kubelet would see it from the host (it need not exist here).
HOST_ENDPOINT = "/var/lib/kubelet/plugins/csi-driver.cinder/csi.sock"


class KubeletPlugin(plugin.PluginProcess):
    """A plugin process started with extra command-line options (the kubelet ones)."""

    def __init__(self, directory: Path, mode: str, extra: Sequence[str], name: str) -> None:
        super().__init__(
            plugin.write_config(directory), mode, directory / f"{name}.sock",
            directory / f"{name}.log", args=extra,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthz(port: int, path: str = "/healthz") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


def registration_stub(path: Path) -> tuple[grpc.Channel, api_pb2_grpc.RegistrationStub]:
    channel = grpc.insecure_channel(f"unix:{path}")
    return channel, api_pb2_grpc.RegistrationStub(channel)


def reg_socket(directory: Path) -> Path:
    return directory / f"{DEFAULT_DRIVER_NAME}-reg.sock"


@contextmanager
def stopped_at_end(process: KubeletPlugin) -> Iterator[KubeletPlugin]:
    """The plugin, stopped when the block ends; its exit must be clean."""
    try:
        yield process
    finally:
        code = process.stop()
    assert code == 0, process.log()[-3000:]


def node_plugin(root: Path) -> tuple[KubeletPlugin, Path, int]:
    """A node plugin (not started) registering through ``root/registry/``, with
    /healthz and /readyz on a free port: (process, registry, port)."""
    registry = root / "registry"
    registry.mkdir()
    port = free_port()
    process = KubeletPlugin(root, "node", [
        "--registration-dir", str(registry), "--kubelet-endpoint", HOST_ENDPOINT,
        "--health-port", str(port), "--health-address", "127.0.0.1",
    ], name="node")  # fmt: skip
    return process, registry, port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KubeletPlugin, Path, int]]:
    """A started node plugin (see ``node_plugin``), shared by the module's tests."""
    process, registry, port = node_plugin(tmp_path_factory.mktemp("kubelet"))
    process.start()
    try:
        yield process, registry, port
    finally:
        assert process.stop() == 0, process.log()[-3000:]


def test_getinfo_names_the_csi_plugin_as_kubelet_sees_it(node: tuple) -> None:
    process, registry, _ = node
    channel, stub = registration_stub(reg_socket(registry))
    with channel:
        info = stub.GetInfo(api_pb2.InfoRequest(), timeout=10)

    assert info.type == "CSIPlugin"
    assert info.name == DEFAULT_DRIVER_NAME
    assert info.endpoint == HOST_ENDPOINT
    assert list(info.supported_versions) == ["1.0.0"]
    assert "kubelet asked for the registration info" in process.log()


def test_refused_registration_fails_healthz_until_kubelet_registers(node: tuple) -> None:
    process, registry, port = node
    assert healthz(port) == (200, "ok\n")
    channel, stub = registration_stub(reg_socket(registry))
    with channel:
        stub.NotifyRegistrationStatus(
            api_pb2.RegistrationStatus(plugin_registered=False, error="driver name clash"),
            timeout=10,
        )
        refused = healthz(port)
        stub.NotifyRegistrationStatus(api_pb2.RegistrationStatus(plugin_registered=True),
                                      timeout=10)  # fmt: skip
        again = healthz(port)

    assert refused == (503, "kubelet refused the registration: driver name clash\n")
    assert again == (200, "ok\n")
    log = process.log()
    assert " ERROR " in log and "driver name clash" in log
    assert "kubelet registered the plugin csi-driver.cinder" in log


def test_the_node_turns_ready_only_when_kubelet_confirms_the_registration(
    tmp_path: Path,
) -> None:
    """kubelet confirms after it wrote CSINode and the Node's topology labels: before
    that a Ready pod would let pods be scheduled by labels not there yet."""
    process, registry, port = node_plugin(tmp_path)
    with stopped_at_end(process.start()):
        before = healthz(port, "/readyz"), healthz(port)
        channel, stub = registration_stub(reg_socket(registry))
        with channel:
            stub.GetInfo(api_pb2.InfoRequest(), timeout=10)
            asked = healthz(port, "/readyz")
            stub.NotifyRegistrationStatus(api_pb2.RegistrationStatus(plugin_registered=True),
                                          timeout=10)  # fmt: skip
        after = healthz(port, "/readyz")

    pending = (503, "kubelet has not confirmed the registration yet\n")
    assert before == (pending, (200, "ok\n"))
    assert asked == pending
    assert after == (200, "ok\n")


def test_sigterm_removes_the_registration_socket_before_the_csi_server_drains(
    tmp_path: Path,
) -> None:
    """Default endpoint for kubelet: the plugin's own socket. kubelet would then call
    the CSI endpoint it was given (NodeGetInfo) and deregister when the socket goes."""
    registry = tmp_path / "registry"
    registry.mkdir()
    process = KubeletPlugin(tmp_path, "all", ["--registration-dir", str(registry)], "all")
    process.start()
    try:
        channel, stub = registration_stub(reg_socket(registry))
        with channel:
            info = stub.GetInfo(api_pb2.InfoRequest(), timeout=10)
        assert info.endpoint == str(process.socket)
        with grpc.insecure_channel(f"unix:{info.endpoint}") as csi:
            node_info = csi_pb2_grpc.NodeStub(csi).NodeGetInfo(csi_pb2.NodeGetInfoRequest(),
                                                               timeout=10)  # fmt: skip
        assert node_info.node_id
    finally:
        code = process.stop()

    log = process.log()
    assert code == 0, log[-3000:]
    assert not reg_socket(registry).exists()
    assert not process.socket.exists()
    removed = log.index("removed the kubelet registration socket")
    assert removed < log.index("stopping on SIGTERM")


def test_stale_registration_socket_is_replaced(tmp_path: Path) -> None:
    """A socket file left by a plugin that died (nobody listens) is taken over."""
    registry = tmp_path / "registry"
    registry.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(reg_socket(registry)))
    stale.close()  # the file stays, nobody listens
    process = KubeletPlugin(tmp_path, "node", ["--registration-dir", str(registry)], "node")
    with stopped_at_end(process.start()):
        channel, stub = registration_stub(reg_socket(registry))
        with channel:
            assert stub.GetInfo(api_pb2.InfoRequest(), timeout=10).name == DEFAULT_DRIVER_NAME


def test_live_registration_socket_is_refused(tmp_path: Path) -> None:
    """Another process serving the socket (a second plugin pod) is not displaced."""
    registry = tmp_path / "registry"
    registry.mkdir()
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(reg_socket(registry)))
        live.listen()
        process = KubeletPlugin(tmp_path, "node", ["--registration-dir", str(registry)], "node")
        with pytest.raises(RuntimeError, match="exited at start"):
            process.start()
        assert process.process is not None
        assert process.process.wait(timeout=10) == 2
        assert f"another process is already serving on {reg_socket(registry)}" in process.log()
        assert reg_socket(registry).exists()  # still the live one's
    assert not process.socket.exists()  # the plugin's own CSI socket was cleaned up


def test_missing_registration_directory_is_refused(tmp_path: Path) -> None:
    process = KubeletPlugin(tmp_path, "node",
                            ["--registration-dir", str(tmp_path / "nowhere")], "node")  # fmt: skip
    with pytest.raises(RuntimeError, match="exited at start"):
        process.start()
    assert process.process is not None and process.process.wait(timeout=10) == 2
    assert "registration directory" in process.log() and "does not exist" in process.log()


def test_the_plugin_log_has_no_line_per_health_check(node: tuple) -> None:
    process, _, port = node
    before = process.log().count("GET /healthz")
    for _ in range(3):
        healthz(port)
    info_lines = [line for line in process.log().splitlines()
                  if "/healthz" in line and " DEBUG " not in line]  # fmt: skip
    assert process.log().count("GET /healthz") == before + 3  # at DEBUG (this log level)
    assert all("GET" not in line for line in info_lines)


def test_the_controller_serves_healthz_too(tmp_path: Path) -> None:
    port = free_port()
    process = KubeletPlugin(tmp_path, "controller", [
        "--health-port", str(port), "--health-address", "127.0.0.1",
    ], "controller")  # fmt: skip
    with stopped_at_end(process.start()):
        assert healthz(port) == (200, "ok\n")
        assert healthz(port, "/readyz") == (200, "ok\n")  # no kubelet to wait for
    assert "serving /healthz and /readyz on 127.0.0.1:" in process.log()
