"""csi_driver.host_fs against real loop devices, filesystems and mounts.

Needs root and losetup. Every loop device and mount a test makes is undone by the
``host`` fixture, even when the test fails: a leaked loop device breaks the machine for
everyone else. Backing files are sparse files in tmp_path.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_driver import host_fs
from csi_driver.host_fs import HostError, NotBlank

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="host_fs tests need root (loop devices, mount)"),
    pytest.mark.skipif(shutil.which("losetup") is None, reason="losetup (util-linux) is missing"),
]

MIB = 1024 * 1024
SIZES = {"ext3": 64 * MIB, "ext4": 64 * MIB, "xfs": 320 * MIB}  # mkfs.xfs wants >= 300 MiB


def needs_tool(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is missing")


def fstype_param(fstype: str) -> object:
    return pytest.param(fstype, marks=needs_tool(f"mkfs.{fstype}"), id=fstype)


def _loops_backed_under(directory: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "--list", "--json", "-O", "NAME,BACK-FILE"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    entries = json.loads(out)["loopdevices"] if out.strip() else []
    prefix = str(directory) + "/"
    return [e["name"] for e in entries if str(e.get("back-file") or "").startswith(prefix)]


class Host:
    """Makes sparse files, loop devices and mounts for one test and undoes them all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.devices: list[str] = []
        self.targets: list[str] = []

    def sparse_file(self, name: str, size: int) -> Path:
        path = self.tmp_path / name
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    def attach(self, path: Path | str) -> str:
        device = host_fs.loop_attach(str(path))
        if device not in self.devices:
            self.devices.append(device)
        return device

    def device(self, size: int = 64 * MIB, name: str = "disk.img") -> str:
        return self.attach(self.sparse_file(name, size))

    def dir(self, name: str) -> str:
        path = self.tmp_path / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def mount(self, source: str, target: str, fstype: str | None = None, **kw: object) -> None:
        self.targets.append(target)
        host_fs.mount(source, target, fstype, **kw)  # type: ignore[arg-type]

    def bind(self, source: str, target: str, read_only: bool = False) -> None:
        self.targets.append(target)
        host_fs.bind_mount(source, target, read_only=read_only)

    def cleanup(self) -> None:
        for target in reversed(self.targets):
            for _ in range(5):  # stacked mounts
                if not host_fs.is_mounted(target):
                    break
                subprocess.run(["umount", target], check=False, timeout=60)
        subprocess.run(["sync"], check=False, timeout=60)
        # Registered devices, then anything else backed by this test's files.
        for device in [*self.devices, *_loops_backed_under(self.tmp_path)]:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False, timeout=60)
        leaked = _loops_backed_under(self.tmp_path)
        assert not leaked, f"loop devices still attached after cleanup: {leaked}"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --- probing ----------------------------------------------------------------------------


def test_blank_device_probes_none(host: Host) -> None:
    device = host.device()
    assert host_fs.is_block_device(device)
    assert not host_fs.is_regular_file(device)
    assert host_fs.probe_filesystem(device) is None


@pytest.mark.parametrize(
    "fstype", [fstype_param("ext4"), fstype_param("ext3"), fstype_param("xfs")]
)
def test_make_filesystem_then_probe_finds_it(host: Host, fstype: str) -> None:
    device = host.device(SIZES[fstype])
    host_fs.make_filesystem(device, fstype)
    assert host_fs.probe_filesystem(device) == fstype


@pytest.mark.parametrize("fstype", [fstype_param("ext4"), fstype_param("xfs")])
def test_make_filesystem_refuses_formatted_device_and_keeps_data(host: Host, fstype: str) -> None:
    device = host.device(SIZES[fstype])
    host_fs.make_filesystem(device, fstype)
    target = host.dir("mnt")
    host.mount(device, target, fstype)
    write_file(os.path.join(target, "keep.txt"), "user data")
    host_fs.unmount(target)
    assert not host_fs.is_mounted(target)

    for other in ("ext4", "xfs"):
        with pytest.raises(NotBlank, match=rf"{device}.*{fstype}"):
            host_fs.make_filesystem(device, other)

    host.mount(device, target, fstype)
    assert Path(target, "keep.txt").read_text() == "user data"


def _write_dos_mbr(path: Path) -> None:
    # One Linux (0x83) partition from LBA 2048, 4096 sectors long, and the 0x55AA signature.
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 4096)
    with open(path, "r+b") as f:
        f.seek(446)
        f.write(entry)
        f.seek(510)
        f.write(b"\x55\xaa")


def _write_gpt(path: Path) -> None:
    tool = shutil.which("sgdisk") or shutil.which("sfdisk")
    if tool is None:
        pytest.skip("neither sgdisk nor sfdisk is installed to write a GPT")
    if tool.endswith("sgdisk"):
        args = [tool, "-n", "1:2048:+8M", "-t", "1:8300", str(path)]
        subprocess.run(args, capture_output=True, check=True, timeout=60)
    else:
        subprocess.run(
            [tool, "--label", "gpt", str(path)],
            input=b"2048,16384,L\n",
            capture_output=True,
            check=True,
            timeout=60,
        )


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partition_table_is_not_blank(host: Host, label: str) -> None:
    image = host.sparse_file("parted.img", 64 * MIB)
    (_write_dos_mbr if label == "dos" else _write_gpt)(image)
    device = host.attach(image)
    assert host_fs.probe_filesystem(device) == f"pttype:{label}"
    with pytest.raises(NotBlank, match=f"pttype:{label}"):
        host_fs.make_filesystem(device, "ext4")
    assert host_fs.probe_filesystem(device) == f"pttype:{label}"


def test_ambivalent_signatures_cannot_tell_and_are_not_formatted(host: Host) -> None:
    device = host.device()
    host_fs.make_filesystem(device, "ext4")
    # Add a swap signature too: blkid -p then exits 8 ("ambivalent result").
    fd = os.open(device, os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack("<II", 1, 16000), 1024)
        os.pwrite(fd, b"SWAPSPACE2", 4096 - 10)
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(HostError, match=r"blkid -p .*exit 8.*ambivalent"):
        host_fs.probe_filesystem(device)
    with pytest.raises(HostError, match="ambivalent"):
        host_fs.make_filesystem(device, "xfs")
    with open(device, "rb") as f:
        f.seek(4096 - 10)
        assert f.read(10) == b"SWAPSPACE2"


def test_probe_of_something_that_is_not_a_device_raises(host: Host, tmp_path: Path) -> None:
    plain = host.sparse_file("plain.img", MIB)
    # blkid -p itself exits 2 ("blank") for all of these: the module must not believe it.
    for path in (str(plain), str(tmp_path), str(tmp_path / "missing"), "/dev/null"):
        with pytest.raises(HostError, match="not an existing block device"):
            host_fs.probe_filesystem(path)
        with pytest.raises(HostError):
            host_fs.make_filesystem(path, "ext4")
    assert plain.read_bytes() == b"\0" * MIB


def test_probe_of_unattached_loop_device_raises(host: Host) -> None:
    free = subprocess.run(
        ["losetup", "--find"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    if host_fs.loop_backing_file(free) is not None:
        pytest.skip(f"{free} got attached by someone else meanwhile")
    with pytest.raises(HostError, match="size 0"):
        host_fs.probe_filesystem(free)


def test_make_filesystem_rejects_unsupported_type(host: Host) -> None:
    device = host.device()
    with pytest.raises(HostError, match=r"btrfs.*ext3, ext4, xfs"):
        host_fs.make_filesystem(device, "btrfs")
    assert host_fs.probe_filesystem(device) is None


# --- loop devices -----------------------------------------------------------------------


def test_loop_attach_is_idempotent_and_detach_removes_it(host: Host) -> None:
    image = host.sparse_file("loop.img", 8 * MIB)
    device = host.attach(image)
    assert device.startswith("/dev/loop")
    assert host.attach(image) == device
    link = host.tmp_path / "link.img"
    link.symlink_to(image)
    assert host.attach(link) == device
    assert host_fs.loop_backing_file(device) == str(image)
    assert _loops_backed_under(host.tmp_path) == [device]

    other = host.attach(host.sparse_file("other.img", 8 * MIB))
    assert other != device
    assert host_fs.loop_backing_file(other) == str(host.tmp_path / "other.img")

    host_fs.loop_detach(device)
    assert host_fs.loop_backing_file(device) is None
    assert device not in _loops_backed_under(host.tmp_path)
    host_fs.loop_detach(device)  # already gone: no error
    assert host_fs.loop_backing_file(other) is not None


def test_loop_attach_refuses_non_files(tmp_path: Path) -> None:
    with pytest.raises(HostError, match="not an existing regular file"):
        host_fs.loop_attach(str(tmp_path / "missing.img"))
    with pytest.raises(HostError, match="not an existing regular file"):
        host_fs.loop_attach(str(tmp_path))


def test_errors_name_command_subject_and_stderr(host: Host) -> None:
    with pytest.raises(HostError) as info:
        host_fs.loop_refresh("/dev/no-such-loop")
    message = str(info.value)
    assert "losetup -c /dev/no-such-loop" in message
    assert "exit" in message and "No such" in message


# --- mounts -----------------------------------------------------------------------------


def test_mount_read_only_refuses_writes(host: Host) -> None:
    device = host.device()
    host_fs.make_filesystem(device, "ext4")
    target = host.dir("ro")
    host.mount(device, target, "ext4", options=["ro", "noatime"])
    info = host_fs.mountinfo(target)
    assert info is not None
    assert info["source"] == device and info["fstype"] == "ext4"
    assert "ro" in info["mount_options"] and "noatime" in info["options"]
    with pytest.raises(OSError) as err:
        write_file(os.path.join(target, "x"), "nope")
    assert err.value.errno == errno.EROFS


def test_bind_mount_read_only_refuses_writes(host: Host) -> None:
    device = host.device()
    host_fs.make_filesystem(device, "ext4")
    staging = host.dir("staging")
    host.mount(device, staging, "ext4")
    write_file(os.path.join(staging, "data.txt"), "hello")

    rw = host.dir("publish-rw")
    ro = host.dir("publish-ro")
    host.bind(staging, rw)
    host.bind(staging, ro, read_only=True)

    write_file(os.path.join(rw, "via-rw.txt"), "ok")
    assert Path(staging, "via-rw.txt").read_text() == "ok"
    assert Path(ro, "data.txt").read_text() == "hello"
    with pytest.raises(OSError) as err:
        write_file(os.path.join(ro, "via-ro.txt"), "nope")
    assert err.value.errno == errno.EROFS
    ro_info = host_fs.mountinfo(ro)
    assert ro_info is not None and "ro" in ro_info["mount_options"]
    rw_info = host_fs.mountinfo(rw)
    assert rw_info is not None and "rw" in rw_info["mount_options"]
    assert not host_fs.is_mounted(host.dir("publish-ro/.."))  # a parent is not a mount point

    # Stacked: unmount takes off the top mount only.
    host.bind(staging, rw, read_only=True)
    assert "ro" in host_fs.mountinfo(rw)["mount_options"]  # type: ignore[index]
    host_fs.unmount(rw)
    assert "rw" in host_fs.mountinfo(rw)["mount_options"]  # type: ignore[index]


def test_mountinfo_decodes_escaped_mount_point(host: Host) -> None:
    source = host.dir("src dir")
    target = host.dir("with space\tand\\backslash")
    host.bind(source, target)
    info = host_fs.mountinfo(target)
    assert info is not None
    assert info["mount_point"] == target
    assert info["root"].endswith("/src dir")
    assert host_fs.is_mounted(target)
    host_fs.unmount(target)
    assert not host_fs.is_mounted(target)
    assert host_fs.mountinfo(target) is None


def test_unmount_of_unmounted_or_missing_path_is_fine(tmp_path: Path) -> None:
    host_fs.unmount(str(tmp_path))
    host_fs.unmount(str(tmp_path / "missing"))
    host_fs.unmount(str(tmp_path / "missing" / "deeper"))


def test_raw_block_bind_to_file_target(host: Host) -> None:
    device = host.device()
    target = str(host.tmp_path / "pods" / "vol")
    with pytest.raises(HostError, match="cannot create file mount target"):
        host_fs.ensure_file(target)  # parent is missing
    host_fs.ensure_dir(str(host.tmp_path / "pods"))
    host_fs.ensure_file(target)
    host_fs.ensure_file(target)
    assert host_fs.is_regular_file(target)

    host.bind(device, target)
    assert host_fs.is_block_device(target)
    host_fs.ensure_file(target)  # the bound device counts as present
    assert host_fs.probe_filesystem(target) is None
    with pytest.raises(HostError, match="still a mount point"):
        host_fs.remove_path(target)

    host_fs.unmount(target)
    host_fs.remove_path(target)
    assert not os.path.lexists(target)
    host_fs.remove_path(target)


def test_ensure_dir_and_remove_path(tmp_path: Path) -> None:
    target = str(tmp_path / "a" / "b")
    host_fs.ensure_dir(target)
    host_fs.ensure_dir(target)
    assert os.path.isdir(target)
    Path(target, "child").write_text("x")
    with pytest.raises(HostError, match="cannot remove"):
        host_fs.remove_path(target)  # never recursive
    assert Path(target, "child").exists()
    os.unlink(os.path.join(target, "child"))
    host_fs.remove_path(target)
    assert not os.path.exists(target)
    host_fs.remove_path(target)

    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(HostError, match="not a directory"):
        host_fs.ensure_dir(str(plain))
    with pytest.raises(HostError, match="not a file"):
        host_fs.ensure_file(str(tmp_path))


# --- sizes ------------------------------------------------------------------------------


def _has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    cap_eff = int(next(ln for ln in status.splitlines() if ln.startswith("CapEff:")).split()[1], 16)
    return bool(cap_eff & (1 << 24))  # CAP_SYS_RESOURCE


@pytest.mark.parametrize(
    ("fstype", "online"),
    [
        pytest.param(
            "ext4",
            True,
            marks=pytest.mark.skipif(
                not _has_cap_sys_resource(),
                reason="online ext4 resize needs CAP_SYS_RESOURCE, which this process lacks",
            ),
            id="ext4-online",
        ),
        pytest.param("ext4", False, id="ext4-offline"),
        pytest.param("xfs", True, marks=needs_tool("mkfs.xfs"), id="xfs-online"),
    ],
)
def test_grow_backing_file_and_filesystem(host: Host, fstype: str, online: bool) -> None:
    size = SIZES[fstype]
    image = host.sparse_file("grow.img", size)
    device = host.attach(image)
    host_fs.make_filesystem(device, fstype)
    target = host.dir("grow")
    host.mount(device, target, fstype)
    write_file(os.path.join(target, "keep.txt"), "still here")
    before = host_fs.filesystem_stats(target)
    assert host_fs.block_device_size(device) == size

    os.truncate(image, 2 * size)
    assert host_fs.block_device_size(device) == size  # not until refreshed
    host_fs.loop_refresh(device)
    assert host_fs.block_device_size(device) == 2 * size
    if not online:
        host_fs.unmount(target)
    host_fs.resize_filesystem(device, target, fstype)
    if not online:
        host.mount(device, target, fstype)

    after = host_fs.filesystem_stats(target)
    assert after["bytes_total"] > before["bytes_total"] + size // 2
    assert after["bytes_available"] > before["bytes_available"]
    assert Path(target, "keep.txt").read_text() == "still here"


def test_online_ext4_resize_without_cap_sys_resource_says_why(host: Host) -> None:
    if _has_cap_sys_resource():
        pytest.skip("this process has CAP_SYS_RESOURCE, so online ext4 resize works")
    image = host.sparse_file("grow.img", 64 * MIB)
    device = host.attach(image)
    host_fs.make_filesystem(device, "ext4")
    target = host.dir("grow")
    host.mount(device, target, "ext4")
    os.truncate(image, 128 * MIB)
    host_fs.loop_refresh(device)
    with pytest.raises(HostError, match=r"(?s)resize2fs .*Permission denied.*CAP_SYS_RESOURCE"):
        host_fs.resize_filesystem(device, target, "ext4")


def test_filesystem_stats_track_usage(host: Host) -> None:
    device = host.device()
    host_fs.make_filesystem(device, "ext4")
    target = host.dir("stats")
    host.mount(device, target, "ext4")
    before = host_fs.filesystem_stats(target)
    assert 0 < before["bytes_available"] <= before["bytes_total"]
    assert before["inodes_used"] + before["inodes_free"] == before["inodes_total"]
    write_file(os.path.join(target, "blob"), "x" * (4 * MIB))
    Path(target, "empty").touch()
    after = host_fs.filesystem_stats(target)
    assert after["bytes_used"] >= before["bytes_used"] + 4 * MIB
    assert after["inodes_used"] == before["inodes_used"] + 2
    with pytest.raises(HostError, match="statvfs"):
        host_fs.filesystem_stats(str(host.tmp_path / "missing"))


def test_resize_rejects_unsupported_type() -> None:
    with pytest.raises(HostError, match=r"btrfs.*ext3, ext4, xfs"):
        host_fs.resize_filesystem("/dev/null", "/mnt", "btrfs")
