"""Shared pieces of the VM tests: backend options, the node process, cleanup, timing.

Importable as ``vmcase`` (``tests/vm`` is put on ``sys.path`` by its conftest).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

VM_TESTS_DIR = Path(__file__).resolve().parent
LOCKS = "/run/csi-vm/locks"  # shared by the controller and node processes

# One LVM backend per target; options exactly as in a cinder.conf backend section.
# NVMe/TCP gets its standard port: LIO's iSCSI portal already holds 3260.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "iscsi": {"target_helper": "lioadm", "target_protocol": "iscsi", "target_port": 3260,
              "use_chap_auth": True},
    "nvmeof": {"target_helper": "nvmet", "target_protocol": "nvmet_tcp", "target_port": 4420,
               "nvmet_port_id": 1},
}  # fmt: skip


# The Ceph test cluster the krbd test starts in the guest (e2e/ceph/cluster.py).
CEPH_HARNESS = VM_TESTS_DIR.parents[1] / "e2e" / "ceph" / "cluster.py"
CEPH_DIR = "/run/csi-vm/ceph"  # tmpfs: the guest's root is read-only
CEPH_POOL, CEPH_USER = "volumes", "cinder"
# Under software emulation the cluster starts in ~30 s and its pool in ~12 s (host: 10-16 s
# in all); each wait of the harness (monitor, OSD up, HEALTH_OK, pool init) gets 5x that.
CEPH_WAIT_TIMEOUT = 150.0


def load_ceph_harness() -> ModuleType:
    """``e2e/ceph/cluster.py``, loaded by path (a harness that is also a script)."""
    name = "ceph_test_cluster"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CEPH_HARNESS)
    assert spec is not None and spec.loader is not None, CEPH_HARNESS
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def rbd_options(name: str, cluster: Any, **options: Any) -> dict[str, Any]:
    """Backend options for Cinder's RBD driver on the guest's Ceph test cluster.

    ``rbd_keyring_conf`` puts the user's keyring into connection info, so os-brick on
    the node maps the image without a keyring file of its own.
    """
    return {
        "volume_backend_name": name,
        "volume_driver": "cinder.volume.drivers.rbd.RBDDriver",
        "rbd_pool": CEPH_POOL,
        "rbd_user": CEPH_USER,
        "rbd_ceph_conf": str(cluster.conf),
        "rbd_keyring_conf": str(cluster.keyring_path(CEPH_USER)),
        "rbd_secret_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"csi-vm/{name}")),
        "rados_connect_timeout": 30,
        "rados_connection_retries": 1,
        **options,
    }


def lvm_options(name: str, **options: Any) -> dict[str, Any]:
    """Backend options for Cinder's LVM driver on the guest's volume group."""
    return {
        "volume_backend_name": name,
        "volume_driver": "cinder.volume.drivers.lvm.LVMVolumeDriver",
        "volume_group": os.environ.get("CSI_VM_VG", "csi-vm"),
        "lvm_type": "thin",  # snapshots and clones without copying whole volumes
        "lvm_conf_file": "None",
        "lvm_suppress_fd_warnings": True,
        "target_ip_address": "127.0.0.1",  # all traffic on the guest's loopback
        "volume_clear": "none",
        **options,
    }


class NodeAgent:
    """The node process (node_agent.py): one JSON request line, one JSON reply line."""

    def __init__(self, log: Path, privsep: str = "helper", root_helper: str = "sudo") -> None:
        self.log = log.open("ab")
        command = [sys.executable, str(VM_TESTS_DIR / "node_agent.py"), "--locks", LOCKS,
                   "--privsep", privsep, "--root-helper", root_helper]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.ready: dict[str, Any] | None = None

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError(f"the node process died; see {self.log.name}")
        return json.loads(line)

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """Send a request; a failed request raises unless the caller expects it."""
        if self.ready is None:
            self.ready = self._reply()  # started at session start, importing in parallel
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def ok(self, op: str, **arguments: Any) -> dict[str, Any]:
        reply = self.call(op, **arguments)
        assert reply["ok"], reply.get("traceback") or reply
        return reply

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            assert self.process.stdin is not None
            self.process.stdin.write('{"op": "exit"}\n')
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def undo(stack: contextlib.ExitStack, action: Callable[[], Any]) -> None:
    """Register a best-effort undo step: a failing test must not break the next ones."""

    def quietly() -> None:
        with contextlib.suppress(Exception):
            action()

    stack.callback(quietly)


def undo_delete(stack: contextlib.ExitStack, resource: Any) -> None:
    """Delete a volume or snapshot at the end unless the test already did."""
    undo(stack, lambda: resource.status == "deleted" or resource.delete())


def undo_detach(stack: contextlib.ExitStack, volume: Any) -> None:
    """Detach and disconnect a volume attached here unless the test already did."""
    undo(stack, lambda: volume.status != "in-use" or volume.detach(force=True))


def undo_disconnect(stack: contextlib.ExitStack, connection: Any) -> None:
    """Disconnect a connection unless the test already did."""
    undo(stack, lambda: connection.status == "disconnected" or connection.disconnect(force=True))


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    timings[name] = round(time.monotonic() - started, 2)
