"""SIGTERM on real plugin processes: the exit is bounded by ``shutdown_grace_seconds``
even while a driver call hangs, and clean when the calls finish in time.

The backend is ``fault_injection.SlowFileDriver`` (tests/storage/fault_injection.py),
a FileDriver faked on purpose so that ``create_volume`` sleeps; it touches a marker
file when its sleep begins, so each test signals only once the call is in the driver.
Exit times are measured from the signal and printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from csi_support import plugin, report
from csi_support.requests import create_request

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc

STORAGE_TESTS = str(Path(__file__).resolve().parents[1] / "storage")
SLOW_DRIVER = "fault_injection.SlowFileDriver"
#: What the process may take beyond the grace, from the signal to its end.
EXIT_MARGIN = 2.0
#: Codes a client gets when the server goes away under its call.
SERVER_GONE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
REQUEST_ID = "shutdown-test-0001"


def _config(root: Path, delay: float, grace: float) -> Path:
    backend = {
        "name": "slow",
        "driver": SLOW_DRIVER,
        "options": {
            "file_volumes_dir": str(root / "volumes"),
            "fault_slow_operations": ["create_volume"],
            "fault_slow_seconds": delay,
            "fault_slow_marker_dir": str(root / "markers"),
        },
    }
    return plugin.write_config(root, backends=[backend], shutdown_grace_seconds=grace)


def _start(root: Path, config: Path, name: str = "controller") -> plugin.PluginProcess:
    process = plugin.PluginProcess(
        config, "controller", root / "csi.sock", root / f"{name}.log",
        env={"PYTHONPATH": STORAGE_TESTS},
    )  # fmt: skip
    return process.start()


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _call_in_driver(
    process: plugin.PluginProcess, root: Path, name: str, request_id: str | None = REQUEST_ID
) -> grpc.Future:
    """A CreateVolume sent and seen to have reached the slow driver."""
    channel = grpc.insecure_channel(f"unix:{process.socket}")
    metadata = (("x-request-id", request_id),) if request_id else ()
    future = csi_pb2_grpc.ControllerStub(channel).CreateVolume.future(
        create_request(name), metadata=metadata, timeout=120
    )
    _wait_for((root / "markers" / "create_volume").exists, "create_volume to reach the driver")
    return future


def _terminate(process: plugin.PluginProcess, signals: int = 1) -> tuple[int, float]:
    """SIGTERM (a second one once the plugin logged it is stopping); exit code and the
    seconds from the first signal to the process's end."""
    assert process.process is not None
    started = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    if signals > 1:
        _wait_for(lambda: "stopping on SIGTERM" in process.log(), "the stopping line")
        process.process.send_signal(signal.SIGTERM)
    code = process.process.wait(timeout=120)
    process.exit_code = code
    return code, time.monotonic() - started


def _probe(socket: Path) -> grpc.StatusCode:
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@dataclass
class ForcedExit:
    """What the ``forced_exit`` fixture saw."""

    root: Path
    config: Path
    process: plugin.PluginProcess
    code: int
    elapsed: float
    grace: float
    call_error: grpc.RpcError
    probe_while_stopping: grpc.StatusCode
    alive_after_probe: bool


@pytest.fixture(scope="module")
def forced_exit(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ForcedExit]:
    """SIGTERM while a CreateVolume sleeps 60s in the driver, with a grace of 2s."""
    root = tmp_path_factory.mktemp("forced")
    grace = 2.0
    config = _config(root, delay=60, grace=grace)
    process = _start(root, config)
    try:
        future = _call_in_driver(process, root, "pvc-forced")
        assert process.process is not None
        started = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: "stopping on SIGTERM" in process.log(), "the stopping line")
        probe_code = _probe(process.socket)
        alive = process.process.poll() is None  # so the probe came within the grace
        code = process.process.wait(timeout=120)
        elapsed = time.monotonic() - started
        process.exit_code = code
        error = future.exception(timeout=30)
        assert isinstance(error, grpc.RpcError), f"the call did not fail: {future.result()}"
        report.show(request, f"forced exit: grace {grace:.1f}s, exited {elapsed:.2f}s after "
                    f"SIGTERM; the interrupted call got {error.code().name}")  # fmt: skip
        yield ForcedExit(root, config, process, code, elapsed, grace, error, probe_code, alive)
    finally:
        process.stop()


def test_forced_exit_comes_within_the_grace_and_exits_0(forced_exit: ForcedExit) -> None:
    assert forced_exit.elapsed <= forced_exit.grace + EXIT_MARGIN, (
        f"exited {forced_exit.elapsed:.2f}s after SIGTERM, grace {forced_exit.grace}s"
    )
    assert forced_exit.elapsed >= forced_exit.grace - 0.1, "did not wait for the grace"
    assert forced_exit.code == 0, forced_exit.process.log()[-3000:]


def test_forced_exit_logs_the_abandoned_call(forced_exit: ForcedExit) -> None:
    log = forced_exit.process.log()
    warnings = [line for line in log.splitlines() if " WARNING csi_driver.server: " in line]
    assert len(warnings) == 1, log[-3000:]
    assert "the grace is over" in warnings[0]
    assert "abandoning 1 call(s)" in warnings[0]
    assert f"CreateVolume [{REQUEST_ID}] running " in warnings[0]
    assert "stopped; backends closed" not in log  # the clean path was not taken


def test_the_interrupted_call_fails_as_a_server_going_away(forced_exit: ForcedExit) -> None:
    assert forced_exit.call_error.code() in SERVER_GONE, forced_exit.call_error


def test_new_calls_are_refused_during_the_grace(forced_exit: ForcedExit) -> None:
    assert forced_exit.alive_after_probe
    assert forced_exit.probe_while_stopping == grpc.StatusCode.UNAVAILABLE


def test_forced_exit_removes_the_socket(forced_exit: ForcedExit) -> None:
    assert not forced_exit.process.socket.exists()


def test_a_restart_after_the_forced_exit_serves(forced_exit: ForcedExit) -> None:
    process = _start(forced_exit.root, forced_exit.config, name="restarted")
    try:
        assert _probe(process.socket) == grpc.StatusCode.OK
    finally:
        code = process.stop()
    assert code == 0, process.log()[-3000:]


def test_a_restart_after_sigkill_replaces_the_stale_socket(tmp_path: Path) -> None:
    config = _config(tmp_path, delay=60, grace=2)
    process = _start(tmp_path, config)
    assert process.process is not None
    process.process.kill()
    process.exit_code = process.process.wait(timeout=30)
    assert process.socket.exists()  # left behind, nobody listening
    restarted = _start(tmp_path, config, name="restarted")
    try:
        assert _probe(restarted.socket) == grpc.StatusCode.OK
    finally:
        assert restarted.stop() == 0, restarted.log()[-3000:]


def test_a_call_shorter_than_the_grace_completes_and_the_exit_is_clean(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    grace = 5.0
    process = _start(tmp_path, _config(tmp_path, delay=1, grace=grace))
    try:
        future = _call_in_driver(process, tmp_path, "pvc-short")
        code, elapsed = _terminate(process)
    finally:
        process.stop()
    report.show(request, f"clean exit after a 1s call: grace {grace:.1f}s, exited "
                f"{elapsed:.2f}s after SIGTERM")  # fmt: skip
    response = future.result(timeout=30)
    assert response.volume.volume_id
    log = process.log()
    assert code == 0, log[-3000:]
    assert elapsed < grace, f"exited {elapsed:.2f}s after SIGTERM, grace {grace}s"
    assert "stopped; backends closed: slow" in log
    assert " WARNING csi_driver.server: " not in log
    assert f"[{REQUEST_ID}] CreateVolume ok" in log
    assert not process.socket.exists()


def test_sigterm_while_idle_exits_at_once(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    grace = 20.0
    process = _start(tmp_path, _config(tmp_path, delay=60, grace=grace))
    try:
        code, elapsed = _terminate(process)
    finally:
        process.stop()
    report.show(request, f"idle exit: grace {grace:.1f}s, exited {elapsed:.2f}s after SIGTERM")
    assert code == 0, process.log()[-3000:]
    assert elapsed < 3.0, f"exited {elapsed:.2f}s after SIGTERM while idle"
    assert "stopped; backends closed: slow" in process.log()


def test_a_second_sigterm_ends_the_grace(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    grace = 30.0
    process = _start(tmp_path, _config(tmp_path, delay=60, grace=grace))
    try:
        future = _call_in_driver(process, tmp_path, "pvc-second", request_id=None)
        code, elapsed = _terminate(process, signals=2)
    finally:
        process.stop()
    report.show(request, f"two SIGTERMs: grace {grace:.1f}s, exited {elapsed:.2f}s after the first")
    log = process.log()
    assert code == 0, log[-3000:]
    assert elapsed < EXIT_MARGIN + 1.0, f"exited {elapsed:.2f}s after the first SIGTERM"
    assert "a second signal came" in log
    # The call sent no request id: the warning names the one the handler logged with.
    logged = re.search(r"\[(\w+)\] CreateVolume request: ", log)
    assert logged, log[-3000:]
    assert f"CreateVolume [{logged.group(1)}] running " in log
    assert future.exception(timeout=30).code() in SERVER_GONE


def test_a_second_plugin_on_a_live_socket_leaves_it_alone(tmp_path: Path) -> None:
    config = _config(tmp_path, delay=0, grace=2)
    with plugin.running(config, "controller", tmp_path, env={"PYTHONPATH": STORAGE_TESTS}) as first:
        second = subprocess.run(
            [sys.executable, "-m", "csi_driver.cli", "--endpoint", first.endpoint,
             "--mode", "controller", "--config", str(config)],
            env={**os.environ, "PYTHONPATH": STORAGE_TESTS},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        assert "another process is already serving" in second.stderr
        assert first.socket.exists()
        assert _probe(first.socket) == grpc.StatusCode.OK


def test_the_watchdog_ends_a_shutdown_that_hangs() -> None:
    """The last resort behind the bound: whatever hangs, the process ends on time."""
    script = (
        "import time, threading\n"
        "from csi_driver import server\n"
        "server._start_watchdog(time.monotonic() + 0.5)\n"
        "threading.Event().wait(60)  # a cleanup step that never returns\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-3000:]
    assert "the shutdown did not finish in time" in result.stderr
    assert elapsed < 10, f"the watchdog fired {elapsed:.2f}s after start, not 0.5s"
