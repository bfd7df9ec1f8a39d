"""Real plugin processes (``csi-driver --endpoint ... --mode ...``) for tests.

Each runs as the shipped command would, on a unix socket in the test's directory;
stopping sends SIGTERM and checks the plugin exits 0 (its graceful shutdown), and
the log is kept for assertions (no secrets, request ids).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc

FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"
# Readiness wait, not a speed goal: a plugin importing Cinder and setting up LVM in
# the software-emulated VM on cold caches has needed more than a minute.
START_TIMEOUT = float(os.environ.get("CSI_TEST_START_TIMEOUT", "60"))


def probe(socket: Path, timeout: float = 5.0) -> bool | None:
    """Whether the plugin on ``socket`` answers Probe ready; None when it does not answer."""
    with grpc.insecure_channel(f"unix:{socket}") as channel:
        try:
            stub = csi_pb2_grpc.IdentityStub(channel)
            reply = stub.Probe(csi_pb2.ProbeRequest(), timeout=timeout)
        except grpc.RpcError:
            return None
    return reply.ready.value


def rss_mib(pid: int) -> float:
    """The process's resident memory (VmRSS) in MiB, one decimal."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for {pid}")


def file_backend(directory: Path, name: str = "embedded", **extra: Any) -> dict[str, Any]:
    return {"name": name, "driver": FILE_DRIVER,
            "options": {"file_volumes_dir": str(directory / name)}, **extra}  # fmt: skip


def write_config(directory: Path, backends: list[dict[str, Any]] | None = None,
                 **overrides: Any) -> Path:  # fmt: skip
    """A plugin config under ``directory``: FileDriver + SQLite unless told otherwise.

    A node in ``--mode node`` also needs ``node={"local_roots": [...]}`` naming the
    FileDriver's directory (``all`` mode derives it from the backends).
    """
    backends = backends or [file_backend(directory / "volumes")]
    config: dict[str, Any] = {
        "storage": {
            "persistence_config": {"storage": "sqlite", "path": str(directory / "meta.sqlite")},
            "file_locks_path": str(directory / "locks"),
        },
        "backends": backends,
        # Tests stage and publish under their temporary directories.
        "node": {"state_dir": str(directory / "node"), "mount_roots": [tempfile.gettempdir()]},
    }
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


#: How the interpreter runs the plugin: the shipped command's module.
PLUGIN_MODULE = ("-m", "csi_driver.cli")


class PluginProcess:
    def __init__(
        self, config: Path, mode: str, socket_path: Path, log: Path,
        env: Mapping[str, str] | None = None, args: Sequence[str] = (),
        launcher: Sequence[str] = PLUGIN_MODULE, python: str | Path = sys.executable,
    ) -> None:  # fmt: skip
        self.config = config
        #: The interpreter: this one, or an older Cinder release's venv (csi_support.releases).
        self.python = str(python)
        #: More command-line options (e.g. the kubelet ones: --registration-dir ...).
        self.args = list(args)
        #: The interpreter's arguments before the plugin's options: the module, or a
        #: ``-c`` script running ``cli.main`` (a test reading what the process imported).
        self.launcher = list(launcher)
        self.env = {**os.environ, **(env or {})}
        self.mode = mode
        self.socket = socket_path
        self.endpoint = f"unix://{socket_path}"
        self.log_path = log
        self.process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def start(self, ready: bool = True) -> PluginProcess:
        """Start and wait until Probe answers ready; with ``ready=False``, until it answers
        at all (a controller whose backends are still starting answers not ready)."""
        command = [
            self.python, *self.launcher, "--endpoint", self.endpoint,
            "--mode", self.mode, "--config", str(self.config), "--log-level", "DEBUG",
            *self.args,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"plugin ({self.mode}) exited at start:\n{self.log()[-3000:]}")
            # "serving CSI" is logged once the registration and health servers run too.
            answer = self.probe() if self.socket.exists() else None
            if answer is not None and (answer or not ready) and "serving CSI" in self.log():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"plugin ({self.mode}) not ready in {START_TIMEOUT}s:\n{self.log()}")

    def probe(self) -> bool | None:
        """Whether Probe answers ready; None when it does not answer."""
        return probe(self.socket)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; SIGKILL (and a failing code) if it does not stop."""
        if self.process is None or self.exit_code is not None:
            return self.exit_code or 0
        self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.exit_code = -9
        return self.exit_code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def running(
    config: Path,
    mode: str,
    directory: Path,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    python: str | Path = sys.executable,
) -> Iterator[PluginProcess]:
    """A started plugin, stopped (gracefully, asserted) when the block ends."""
    name = name or mode
    plugin = PluginProcess(
        config,
        mode,
        directory / f"{name}.sock",
        directory / f"{name}.log",
        env=env,
        args=args,
        python=python,
    )
    plugin.start()
    try:
        yield plugin
    finally:
        code = plugin.stop()
    assert code == 0, f"plugin ({mode}) did not stop cleanly (exit {code}):\n{plugin.log()[-3000:]}"


class Stubs:
    """The three services' stubs over one channel to a plugin."""

    def __init__(self, plugin: PluginProcess) -> None:
        self.channel = grpc.insecure_channel(f"unix:{plugin.socket}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def leftovers(directory: Path) -> list[str]:
    """Mounts and loop devices still pointing under ``directory`` (none may remain)."""
    prefix = str(directory)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(f"mount {point}")
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    found += [f"loop {line.strip()}" for line in out.splitlines() if prefix in line]
    return found


def is_root() -> bool:
    return os.geteuid() == 0
