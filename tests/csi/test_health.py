"""``/healthz`` (csi_driver.kubelet.health): real HTTP against real gRPC servers.

200 needs a real Identity.Probe answer through the endpoint. The plugin's own Probe
always says ready, so the failing cases use ``FaultInjectingIdentity``, a fake on
purpose: an Identity server on a real unix socket whose Probe answers not ready, fails
or hangs, as a sick plugin would. The refused-registration case end to end (plugin
process, kubelet's notification) and ``--health-port`` on plugin processes are in
test_registration.py.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin
from google.protobuf import wrappers_pb2

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.kubelet import health
from csi_driver.kubelet.registration import RegistrationStatus
from csi_driver.server import EndpointError


class FaultInjectingIdentity(csi_pb2_grpc.IdentityServicer):
    """A deliberately sick Identity service: ``fault`` picks how Probe misbehaves."""

    def __init__(self) -> None:
        self.fault = "none"

    def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        if self.fault == "not-ready":
            return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=False))
        if self.fault == "error":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "backend gone\nsecond line")
        if self.fault == "hang":
            time.sleep(2)
        if self.fault == "no-ready-field":
            return csi_pb2.ProbeResponse()
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


@pytest.fixture
def sick(tmp_path: Path) -> Iterator[tuple[FaultInjectingIdentity, str]]:
    """The fake on ``unix:<tmp>/sick.sock``: the service and its gRPC target."""
    service = FaultInjectingIdentity()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    csi_pb2_grpc.add_IdentityServicer_to_server(service, server)
    target = f"unix:{tmp_path / 'sick.sock'}"
    server.add_insecure_port(target)
    server.start()
    try:
        yield service, target
    finally:
        server.stop(0).wait(5)


Serve = Callable[..., health.HealthServer]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(target, **options)`` -> a started HealthServer on 127.0.0.1 (any port)."""
    started: list[health.HealthServer] = []

    def start(target: str, **options: Any) -> health.HealthServer:
        server = health.HealthServer("127.0.0.1", 0, target, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def get(server: health.HealthServer, path: str = "/healthz") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, reply.read().decode()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def real_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[plugin.PluginProcess]:
    root = tmp_path_factory.mktemp("health")
    with plugin.running(plugin.write_config(root), "controller", root) as process:
        yield process


def test_ok_when_the_real_plugin_answers_its_probe(
    real_plugin: plugin.PluginProcess, serve: Serve
) -> None:
    server = serve(f"unix:{real_plugin.socket}")

    assert get(server) == (200, "ok\n")
    assert get(server, "/healthz?verbose=1") == (200, "ok\n")


def test_other_paths_are_not_found(real_plugin: plugin.PluginProcess, serve: Serve) -> None:
    server = serve(f"unix:{real_plugin.socket}")

    assert get(server, "/") == (404, "not found\n")
    assert get(server, "/healthz/extra") == (404, "not found\n")
    assert get(server, "/livez") == (404, "not found\n")


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        pytest.param("not-ready", (503, "Probe: the plugin is not ready\n"), id="not-ready"),
        pytest.param(
            "error",
            (503, "Probe failed: FAILED_PRECONDITION: backend gone second line\n"),
            id="probe-error-one-line",
        ),
        pytest.param("hang", (503, "Probe timed out after 0.5s\n"), id="probe-timeout"),
        # CSI: a Probe reply without `ready` means ready.
        pytest.param("no-ready-field", (200, "ok\n"), id="no-ready-field"),
    ],
)
def test_probe_faults_answer_503_with_the_reason(
    sick: tuple[FaultInjectingIdentity, str], serve: Serve, fault: str, expected: tuple
) -> None:
    service, target = sick
    server = serve(target, probe_timeout=0.5)
    service.fault = fault

    started = time.monotonic()
    assert get(server) == expected
    assert time.monotonic() - started < 2  # the Probe's deadline bounds the answer


def test_nothing_listening_is_503(tmp_path: Path, serve: Serve) -> None:
    server = serve(f"unix:{tmp_path / 'absent.sock'}")

    status, body = get(server)
    assert status == 503
    assert body.startswith("Probe failed: UNAVAILABLE: ")
    assert body.count("\n") == 1


def test_a_failing_check_is_reported_before_the_probe(
    sick: tuple[FaultInjectingIdentity, str], serve: Serve
) -> None:
    _, target = sick
    status = RegistrationStatus()
    server = serve(target, checks=[status.problem])

    status.refused("plugin name taken")
    assert get(server) == (503, "kubelet refused the registration: plugin name taken\n")
    status.registered()
    assert get(server) == (200, "ok\n")


def test_readyz_waits_for_kubelet_while_healthz_stays_ok(
    sick: tuple[FaultInjectingIdentity, str], serve: Serve
) -> None:
    """Not registered yet is not a liveness problem (a restart would not help), only
    not ready; a refusal fails both; the probe's own failures fail both."""
    service, target = sick
    status = RegistrationStatus()
    server = serve(target, checks=[status.problem], readiness_checks=[status.pending])

    assert get(server) == (200, "ok\n")
    assert get(server, "/readyz") == (503, "kubelet has not confirmed the registration yet\n")
    status.registered()
    assert get(server, "/readyz") == (200, "ok\n")
    status.refused("driver name clash")
    assert get(server, "/readyz") == (503, "kubelet refused the registration: driver name clash\n")
    status.registered()
    service.fault = "not-ready"
    assert get(server, "/readyz") == (503, "Probe: the plugin is not ready\n")
    assert get(server) == (503, "Probe: the plugin is not ready\n")


def test_a_client_that_sends_nothing_does_not_block_the_probe(
    sick: tuple[FaultInjectingIdentity, str], serve: Serve
) -> None:
    _, target = sick
    server = serve(target)

    with socket.create_connection(("127.0.0.1", server.port)):  # never sends a request
        assert get(server) == (200, "ok\n")


def test_a_port_in_use_is_refused(sick: tuple[FaultInjectingIdentity, str]) -> None:
    _, target = sick
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = health.HealthServer("127.0.0.1", taken.getsockname()[1], target)
        with pytest.raises(EndpointError, match=r"cannot serve /healthz on 127\.0\.0\.1:"):
            server.start()
