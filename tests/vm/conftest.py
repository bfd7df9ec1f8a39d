"""Fixtures of the tests that need a real kernel storage stack: they run in the VM.

``make test-vm`` (``e2e/vm/run.py``) boots Debian's kernel, where ``e2e/vm/guest.sh``
loads device-mapper, LIO, the iSCSI and NVMe/TCP modules and krbd, starts iscsid and
creates the volume group named by ``CSI_VM_VG``; then it runs pytest on this directory.
The krbd test starts a Ceph test cluster in the guest (``ceph_cluster``). On any other
machine (``make test``) every test here is skipped.

Two processes take part, as in a deployment: this one is the controller (it also
attaches in-process, with privsep in-process: root's default), and ``node_agent.py``
is a node that receives serialized connections and runs privsep through the venv's
``privsep-helper`` started by sudo.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_driver import storage

VM_TESTS_DIR = str(Path(__file__).resolve().parent)
if VM_TESTS_DIR not in sys.path:
    sys.path.append(VM_TESTS_DIR)  # vmcase and vmdisk, shared with node_agent.py

from vmcase import (  # noqa: E402
    CEPH_DIR,
    CEPH_POOL,
    CEPH_USER,
    CEPH_WAIT_TIMEOUT,
    LOCKS,
    PROTOCOLS,
    NodeAgent,
    load_ceph_harness,
    lvm_options,
)

IN_GUEST = os.environ.get("CSI_VM_GUEST") == "1"


@pytest.fixture(scope="session", autouse=True)
def vm_guest() -> None:
    """Skip everything here unless running in the VM guest prepared by guest.sh."""
    if not IN_GUEST:
        pytest.skip("needs the VM's kernel (device-mapper, LIO, NVMe/TCP, krbd): run make test-vm")


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where logs for the host go (the runner's results directory when there is one)."""
    shared = os.environ.get("CSI_VM_RESULTS")
    return Path(shared) if shared else tmp_path_factory.mktemp("results")


@pytest.fixture(scope="session")
def library(vm_guest: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The controller's library: SQLite store, locks shared with the node process."""
    os.makedirs(LOCKS, exist_ok=True)
    path = tmp_path_factory.mktemp("store") / "metadata.sqlite"
    storage.setup(persistence_config={"storage": "sqlite", "path": str(path)},
                  file_locks_path=LOCKS)  # fmt: skip


@pytest.fixture(scope="session")
def lvm_backend(library: None) -> Iterator[Callable[[str], storage.Backend]]:
    """``lvm_backend(protocol)``: the session's LVM backend for 'iscsi' or 'nvmeof'."""
    made: dict[str, storage.Backend] = {}

    def get(protocol: str) -> storage.Backend:
        if protocol not in made:
            made[protocol] = storage.Backend(
                **lvm_options(f"lvm-{protocol}", **PROTOCOLS[protocol])
            )
        return made[protocol]

    yield get
    for backend in made.values():
        backend.close()


@pytest.fixture(scope="session")
def ceph_cluster(vm_guest: None, results_dir: Path) -> Iterator[Any]:
    """A single-node Ceph cluster on the guest's loopback (``e2e/ceph/cluster.py``), with
    pool ``CEPH_POOL`` and user ``client.CEPH_USER``; started by the first test that needs
    it, stopped at the end of the session. A start that fails or times out fails the test
    with the daemons' log tails; the whole logs go to the results directory either way."""
    harness = load_ceph_harness()
    shutil.rmtree(CEPH_DIR, ignore_errors=True)
    cluster = harness.CephCluster(CEPH_DIR, timeout=CEPH_WAIT_TIMEOUT, stop_timeout=30)
    try:
        cluster.start()  # stops what it started if it fails
        try:
            cluster.create_pools(CEPH_POOL)
            cluster.create_user(CEPH_USER, [CEPH_POOL])
        except BaseException:
            cluster.stop()
            raise
    except harness.ClusterError as exc:
        _keep_ceph_logs(cluster, results_dir)
        pytest.fail(f"the Ceph test cluster did not start in the guest: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        _keep_ceph_logs(cluster, results_dir)


def _keep_ceph_logs(cluster: Any, results_dir: Path) -> None:
    """Copy the daemons' logs next to the guest log, for the host to read."""
    with contextlib.suppress(OSError):
        shutil.copytree(cluster.dir / "log", results_dir / "ceph-logs", dirs_exist_ok=True)


@pytest.fixture(scope="session")
def node(library: None, results_dir: Path) -> Iterator[NodeAgent]:
    """The node process, started once for the session (privsep through privsep-helper)."""
    agent = NodeAgent(results_dir / "node-agent.log")
    yield agent
    agent.close()


@pytest.fixture
def cleanup() -> Iterator[contextlib.ExitStack]:
    """Callbacks undoing what a test made, run even when it fails (errors ignored)."""
    with contextlib.ExitStack() as stack:
        yield stack
