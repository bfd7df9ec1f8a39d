"""What the VM tests look at on the guest itself: devices, filesystems, LVs, targets,
krbd mappings.

Importable as ``vmdisk`` by the tests and by ``node_agent.py`` (which runs as a script
from this directory). Every check reads the kernel or the real tools, never the library,
so the tests compare the library's account with the system's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

CONFIGFS = Path("/sys/kernel/config")
PAYLOAD_BYTES = 4 * 1024 * 1024
PAYLOAD_NAME = "payload.bin"


def run(*cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a tool; a failure raises with its output (test helpers want loud errors)."""
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


def device_size(path: str) -> int:
    return int(run("blockdev", "--getsize64", path).stdout)


def filesystem_type(path: str) -> str | None:
    """The filesystem a low-level probe finds (blkid -p), None for a blank device.

    ``blkid -p`` reads the superblock itself; lsblk relies on udev's database and
    can report a formatted device as blank (see the node-host facts).
    """
    result = run("blkid", "-p", "-s", "TYPE", "-o", "value", path, check=False)
    if result.returncode == 2:
        return None
    if result.returncode != 0:
        raise AssertionError(f"blkid -p {path}: cannot tell ({result.stderr.strip()})")
    return result.stdout.strip() or None


@contextlib.contextmanager
def mounted(device: str, options: str = "rw") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="csi-vm-mnt-", dir="/run") as where:
        run("mount", "-o", options, device, where)
        try:
            yield Path(where)
        finally:
            run("umount", where)


def format_and_write(device: str) -> str:
    """mkfs.ext4 a blank device and write a random payload; returns its SHA-256."""
    assert filesystem_type(device) is None, f"{device} is not blank; refusing to format it"
    run("mkfs.ext4", "-q", device)
    payload = os.urandom(PAYLOAD_BYTES)
    with mounted(device) as root:
        (root / PAYLOAD_NAME).write_bytes(payload)
        os.sync()
    return hashlib.sha256(payload).hexdigest()


def read_back(device: str) -> str:
    """SHA-256 of the payload on a device written by ``format_and_write``."""
    assert filesystem_type(device) == "ext4", f"{device} has no ext4 filesystem"
    with mounted(device, "ro") as root:
        return hashlib.sha256((root / PAYLOAD_NAME).read_bytes()).hexdigest()


def logical_volumes(vg: str) -> dict[str, int]:
    """LV name -> size in bytes."""
    out = run("lvs", "--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", vg)
    return {name: int(size) for name, size in (line.split() for line in out.stdout.splitlines())}


def volume_lv(volume_id: str) -> str:
    """The LV name Cinder gives a volume (``volume_name_template``)."""
    return f"volume-{volume_id}"


def iscsi_sessions() -> list[str]:
    """Target IQNs this initiator is logged in to."""
    result = run("iscsiadm", "-m", "session", check=False)
    if result.returncode == 21:  # no active sessions
        return []
    return [line.split()[3] for line in result.stdout.splitlines() if line.strip()]


def nvme_connected() -> list[str]:
    """Subsystem NQNs the NVMe host is connected to."""
    return sorted(p.read_text().strip() for p in Path("/sys/class/nvme").glob("nvme*/subsysnqn"))


def lio_targets() -> list[str]:
    return sorted(p.name for p in (CONFIGFS / "target/iscsi").glob("iqn.*"))


def lio_chap(iqn: str) -> dict[str, str]:
    """The target's authentication switch and its ACLs' CHAP user ids."""
    tpg = CONFIGFS / "target/iscsi" / iqn / "tpgt_1"
    users = {
        acl.name: (acl / "auth/userid").read_text().strip() for acl in (tpg / "acls").iterdir()
    }
    return {"authentication": (tpg / "attrib/authentication").read_text().strip(), **users}


def nvmet_subsystems() -> list[str]:
    return sorted(p.name for p in (CONFIGFS / "nvmet/subsystems").iterdir())


def nvmet_port(port_id: int) -> dict[str, str] | None:
    port = CONFIGFS / "nvmet/ports" / str(port_id)
    if not port.exists():
        return None
    return {
        "addr": (port / "addr_traddr").read_text().strip(),
        "port": (port / "addr_trsvcid").read_text().strip(),
        "subsystems": ",".join(sorted(p.name for p in (port / "subsystems").iterdir())),
    }


def free_port() -> int:
    """A loopback TCP port nothing listens on (for connections meant to fail)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def privsep_daemons() -> list[dict[str, object]]:
    """Running privsep daemons: their context and effective uid.

    A daemon forks away from the process that started it (init adopts it), so it is
    found by its command line, ``python .../privsep-helper --privsep_context X ...``.
    """
    found: list[dict[str, object]] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            command = (proc / "cmdline").read_bytes().decode().split("\0")
            if not (
                os.path.basename(command[0]).startswith("python")
                and os.path.basename(command[1]) == "privsep-helper"
            ):
                continue
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
            context = command[command.index("--privsep_context") + 1]
            found.append({"context": context, "uid": int(status["Uid"].split()[1])})
    return found


def rbd_showmapped() -> list[dict[str, str]]:
    """``rbd showmapped``: the images krbd has mapped (pool, name, snap, device)."""
    return json.loads(run("rbd", "showmapped", "--format=json").stdout or "[]")


def rbd_sysfs_devices() -> dict[str, dict[str, str]]:
    """The kernel's own account of krbd mappings: ``/sys/bus/rbd/devices/<id>/``."""
    devices = {}
    for dev in Path("/sys/bus/rbd/devices").glob("*"):
        devices[dev.name] = {
            attr: (dev / attr).read_text().strip()
            for attr in ("pool", "name", "current_snap", "size")
        }
    return devices


def rbd_device_for(image: str) -> str | None:
    """``/dev/rbdN`` the kernel has ``image`` mapped on (sysfs), or None."""
    for dev_id, attrs in rbd_sysfs_devices().items():
        if attrs["name"] == image:
            return f"/dev/rbd{dev_id}"
    return None
