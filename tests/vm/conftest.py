"""Fixtures of the tests that need a real kernel storage stack: they run in the VM.

``make test-vm`` (``e2e/vm/run.py``) boots Debian's kernel, where ``e2e/vm/guest.sh``
loads device-mapper, LIO, the iSCSI and NVMe/TCP modules, starts iscsid and creates
the volume group named by ``CSI_VM_VG``; then it runs pytest on this directory. On any
other machine (``make test``) every test here is skipped.

Two processes take part, as in a deployment: this one is the controller (it also
attaches in-process, with privsep in-process: root's default), and ``node_agent.py``
is a node that receives serialized connections and runs privsep through the venv's
``privsep-helper`` started by sudo.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from csi_driver import storage

VM_TESTS_DIR = str(Path(__file__).resolve().parent)
if VM_TESTS_DIR not in sys.path:
    sys.path.append(VM_TESTS_DIR)  # vmcase and vmdisk, shared with node_agent.py

from vmcase import LOCKS, PROTOCOLS, NodeAgent, lvm_options  # noqa: E402

IN_GUEST = os.environ.get("CSI_VM_GUEST") == "1"


@pytest.fixture(scope="session", autouse=True)
def vm_guest() -> None:
    """Skip everything here unless running in the VM guest prepared by guest.sh."""
    if not IN_GUEST:
        pytest.skip("needs the VM's kernel (device-mapper, LIO, NVMe/TCP): run make test-vm")


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
