"""Host-side block device and filesystem operations of the CSI node service.

Every external tool runs as an argument list with a timeout, a closed stdin and the C
locale; a failure raises :class:`HostError` naming the command, the device or path and
the tool's stderr, so that an admin can act on the message.

Safety rule for formatting: these hosts run no udev, so ``lsblk -o FSTYPE`` reports no
filesystem on devices that have one, and ``mkfs.ext4`` run without a terminal overwrites
an existing filesystem without asking. Only ``blkid -p`` (a low-level probe that reads the
device itself) decides whether a device is blank, and whatever it cannot answer clearly
counts as "not blank".
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from csi_driver.storage import crash_points

LOG = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
"""Seconds allowed to quick tools (losetup, blkid, mount, blockdev)."""
LONG_TIMEOUT = 900.0
"""Seconds allowed to tools whose work grows with the device (mkfs, resize)."""

SUPPORTED_FILESYSTEMS = ("ext3", "ext4", "xfs")
MOUNTINFO = "/proc/self/mountinfo"

_BLKID_FOUND = 0
_BLKID_NOTHING = 2
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")
_loop_lock = threading.Lock()
_LOOP_COLUMNS = "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT"


class HostError(Exception):
    """A host command or file operation failed; the message says which, on what, and why."""


class NotBlank(HostError):
    """Refused to format a device because it already holds a filesystem or partition table."""


class BadPath(HostError):
    """A path the caller gave cannot be used as asked (not a directory, a symlink, a name
    too long, on a read-only filesystem...): the request's fault, not the host's."""


class Busy(HostError):
    """A mount cannot be undone, or made, without hiding or breaking other mounts."""


class MissingCapability(HostError):
    """The plugin's process lacks a privilege the operation needs (a deployment fault)."""


def _run(
    args: list[str],
    subject: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    ok_codes: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run a tool; raise HostError naming command, subject and stderr unless it exits in ok_codes.

    stdin is /dev/null so that no tool can wait for an answer, and LC_ALL=C keeps the
    messages in the admin's documentation language.
    """
    command = " ".join(args)
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError as exc:
        raise HostError(
            f"{command!r} on {subject}: {args[0]} is not installed or not on PATH"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"{command!r} on {subject}: timed out after {timeout:g}s") from exc
    except OSError as exc:
        raise HostError(f"{command!r} on {subject}: could not start: {exc}") from exc
    if proc.returncode not in ok_codes:
        detail = proc.stderr.strip() or proc.stdout.strip() or "no output"
        raise HostError(f"{command!r} on {subject} failed (exit {proc.returncode}): {detail}")
    return proc


def _stat_mode(path: str) -> int | None:
    """The file mode of path (following symlinks such as /dev/disk/by-id), None if missing."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise HostError(f"cannot stat {path}: {exc}") from exc


def is_block_device(path: str) -> bool:
    """Whether path is (or links to) a block device; guards probes that report missing
    paths as blank."""
    mode = _stat_mode(path)
    return mode is not None and stat.S_ISBLK(mode)


def is_regular_file(path: str) -> bool:
    """Whether path is (or links to) a regular file, i.e. something a loop device can map."""
    mode = _stat_mode(path)
    return mode is not None and stat.S_ISREG(mode)


# --- loop devices -----------------------------------------------------------------------


def _loop_devices() -> list[dict[str, Any]]:
    """Every attached loop device as losetup reports it (name, backing file and inode)."""
    proc = _run(
        [
            "losetup",
            "--list",
            "--json",
            "-O",
            "NAME,BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET,SIZELIMIT",
        ],
        "all loop devices",
    )
    if not proc.stdout.strip():
        return []  # losetup prints nothing at all when no loop device is attached
    try:
        return list(json.loads(proc.stdout)["loopdevices"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HostError(f"'losetup --list --json' printed unparseable output: {exc}") from exc


def _identity(st: os.stat_result) -> dict[str, Any]:
    return {"dev": f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", "ino": st.st_ino}


def file_identity(path: str) -> dict[str, Any] | None:
    """What identifies a file to losetup (device and inode), even after it is deleted."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return None


def _maps(entry: dict[str, Any], identity: dict[str, Any]) -> bool:
    """Whether a losetup entry's backing file is the one of ``identity``."""
    # losetup pads "back-maj:min" with blanks inside the JSON string.
    majmin = str(entry.get("back-maj:min") or "").strip()
    return str(entry.get("back-ino")) == str(identity["ino"]) and majmin == identity["dev"]


def _same_backing(entry: dict[str, Any], path: str, st: os.stat_result) -> bool:
    """Whether a losetup entry maps all of the file at path (by inode, or by exact name)."""
    if int(entry.get("offset") or 0) or int(entry.get("sizelimit") or 0):
        return False
    # A deleted backing file shows as "<path> (deleted)", so an exact name never matches it.
    return _maps(entry, _identity(st)) or entry.get("back-file") == path


def loop_maps(device: str, identity: dict[str, Any]) -> bool:
    """Whether loop ``device`` maps the file of ``identity`` (``file_identity``), also
    when that file was deleted since (losetup then shows '<path> (deleted)')."""
    name = os.path.realpath(device)
    return any(e.get("name") == name and _maps(e, identity) for e in _loop_devices())


def loop_with(identity: dict[str, Any]) -> str | None:
    """The loop device mapping the file of ``identity``, deleted or not; None if none."""
    for entry in sorted(_loop_devices(), key=lambda e: str(e.get("name"))):
        if _maps(entry, identity):
            return str(entry["name"])
    return None


def loop_find(file_path: str) -> str | None:
    """The loop device that maps all of this file (compared by inode, so a path reached
    through a symlink matches), None when no loop device does."""
    path = os.path.realpath(file_path)
    try:
        st = os.stat(path)
    except OSError:
        return None
    for entry in sorted(_loop_devices(), key=lambda e: str(e.get("name"))):
        if _same_backing(entry, path, st):
            return str(entry["name"])
    return None


def loop_attach(file_path: str) -> str:
    """Map a regular file to a loop device and return the device; reuse the device that
    already maps this exact file so that retries never stack loop devices."""
    path = os.path.realpath(file_path)
    if not is_regular_file(path):
        raise HostError(f"cannot attach {file_path} to a loop device: not an existing regular file")
    with _loop_lock:
        existing = loop_find(path)
        if existing is not None:
            return existing
        proc = _run(["losetup", "--find", "--show", "--direct-io=off", path], path)
    device = proc.stdout.strip()
    if not device.startswith("/dev/"):
        raise HostError(f"'losetup --find --show {path}' printed no device: {proc.stdout!r}")
    LOG.info("attached %s to %s", path, device)
    return device


def loop_backing_file(device: str) -> str | None:
    """The file a loop device maps, None if the device is not an attached loop device."""
    name = os.path.realpath(device)
    for entry in _loop_devices():
        if entry.get("name") == name:
            return str(entry.get("back-file") or "") or None
    return None


def loop_detach(device: str) -> None:
    """Detach a loop device; a device that is already gone is fine (retries must succeed).

    A device that is still open (e.g. mounted) is only marked autoclear by the kernel and
    disappears at its last close: this returns without error in that case too.
    """
    if loop_backing_file(device) is None:
        return
    try:
        _run(["losetup", "-d", device], device)
    except HostError:
        if loop_backing_file(device) is None:
            return  # detached concurrently
        raise
    LOG.info("detached %s", device)


def loop_refresh(device: str) -> None:
    """Make a loop device re-read its backing file's size after the file was grown."""
    _run(["losetup", "-c", device], device)


# --- probing and formatting -------------------------------------------------------------


def _check_readable_device(device: str) -> None:
    """Fail unless device is a block device with a readable, non-empty start.

    blkid -p exits 2 ("nothing found") for a missing path, a character device and an
    unattached loop device of size 0, so "blank" is only believed for a device proven
    real and readable here.
    """
    if not is_block_device(device):
        raise HostError(f"cannot probe {device}: not an existing block device")
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(f"cannot probe {device}: open failed: {exc}") from exc
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size <= 0:
            raise HostError(
                f"cannot probe {device}: it reports size 0 (no media, or a loop device "
                "without backing file)"
            )
        if not os.pread(fd, 4096, 0):
            raise HostError(f"cannot probe {device}: reading its first sector returned nothing")
    except OSError as exc:
        raise HostError(f"cannot probe {device}: reading it failed: {exc}") from exc
    finally:
        os.close(fd)


def probe_filesystem(device: str) -> str | None:
    """What the device holds: a filesystem type ('ext4', 'xfs', ...), 'pttype:<type>' for a
    partition table without filesystem, or None only when blkid -p proved it blank.

    Anything unclear (blkid exit other than 0/2, ambivalent signatures, unreadable device)
    raises HostError: a caller deciding whether to format must then refuse.
    """
    _check_readable_device(device)
    args = ["blkid", "-p", "-o", "export", device]
    proc = _run(args, device, ok_codes=(_BLKID_FOUND, _BLKID_NOTHING))
    if proc.returncode == _BLKID_NOTHING:
        if proc.stderr.strip():
            raise HostError(
                f"{' '.join(args)!r} on {device}: unclear result: {proc.stderr.strip()}"
            )
        return None
    fields = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    if fields.get("TYPE"):
        return fields["TYPE"]
    if fields.get("PTTYPE"):
        return f"pttype:{fields['PTTYPE']}"
    raise HostError(
        f"{' '.join(args)!r} on {device} found something without TYPE or PTTYPE: "
        f"{proc.stdout.strip()!r}"
    )


def make_filesystem(
    device: str, fstype: str, options: list[str] | None = None, redo_own: bool = False
) -> None:
    """Create a filesystem on a device that blkid -p proves blank, never over existing data.

    The probe repeats here (defence in depth) because mkfs.ext4 without a terminal does not
    ask before overwriting. NotBlank is raised if anything is found, HostError if the
    probe cannot tell. ``redo_own`` is for the one case where the caller's own records
    prove that what is on the device is its own unfinished mkfs of a blank device (a
    crash interrupted it before anything was mounted): that is overwritten.
    """
    if fstype not in SUPPORTED_FILESYSTEMS:
        raise HostError(
            f"cannot format {device} as {fstype!r}: supported filesystems are "
            f"{', '.join(SUPPORTED_FILESYSTEMS)}"
        )
    found = probe_filesystem(device)
    if found is not None and not redo_own:
        raise NotBlank(f"refusing to format {device} as {fstype}: blkid -p found {found} on it")
    extra = list(options or [])
    if fstype == "xfs":
        # No -f unless redoing our own: mkfs.xfs then refuses existing signatures as well.
        args = ["mkfs.xfs", "-q", *(["-f"] if found is not None else []), *extra, device]
    else:
        # -F only skips mke2fs's questions about whole devices (and, with redo_own, about
        # our own unfinished filesystem); the device was just proven blank above.
        args = [f"mkfs.{fstype}", "-F", "-q", *extra, device]
    LOG.info("formatting %s: %s%s", device, " ".join(args),
             f" (over {found} left by an interrupted stage)" if found else "")  # fmt: skip
    crash_points.run_killed_midway(args, "node_stage.during-mkfs")
    _run(args, device, timeout=LONG_TIMEOUT)


# --- mounts -----------------------------------------------------------------------------


def _unescape(field: bytes) -> str:
    """Decode a mountinfo field: the kernel writes space, tab, newline and backslash as
    octal escapes (\\040 ...), and paths are bytes in the filesystem encoding."""
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def _parse_mountinfo_line(line: bytes) -> dict[str, Any] | None:
    """One /proc/self/mountinfo line as a dict, None if the line is malformed."""
    parts = line.split()
    try:
        sep = parts.index(b"-", 6)
    except ValueError:
        return None
    if len(parts) < sep + 3:
        return None
    mount_options = _unescape(parts[5]).split(",")
    super_options = _unescape(parts[sep + 3]).split(",") if len(parts) > sep + 3 else []
    return {
        "source": _unescape(parts[sep + 2]),
        "fstype": _unescape(parts[sep + 1]),
        "options": list(dict.fromkeys(mount_options + super_options)),
        "mount_options": mount_options,
        "super_options": super_options,
        "root": _unescape(parts[3]),
        "mount_point": _unescape(parts[4]),
    }


def mountinfo(path: str) -> dict[str, Any] | None:
    """The mount whose mount point is realpath(path) (the top one if mounts are stacked),
    with keys source, fstype, options, root, mount_point; None if path is no mount point.

    options holds the per-mount then the superblock options; mount_options alone says
    whether this mount is read-only.
    """
    target = os.path.realpath(path)
    try:
        with open(MOUNTINFO, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise HostError(f"cannot read {MOUNTINFO} to look up {path}: {exc}") from exc
    found = None
    for line in lines:
        entry = _parse_mountinfo_line(line)
        if entry is not None and entry["mount_point"] == target:
            found = entry
    return found


def device_number(device: str) -> int | None:
    """The device number (st_rdev) of a block device, None if path is not one."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def mounted_from(path: str, device: str, block: bool) -> bool:
    """Whether the top mount on ``path`` shows ``device``: for a filesystem the mount's
    files live on it (st_dev), for a raw block bind the mounted node is it (st_rdev).

    This is how the node tells its own mounts from anything else mounted at a path the
    CO names, before it unmounts or mounts over it.
    """
    number = device_number(device)
    if number is None or not is_mounted(path):
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    if block:
        return stat.S_ISBLK(st.st_mode) and st.st_rdev == number
    return st.st_dev == number


def is_under(path: str, roots: Sequence[str]) -> bool:
    """Whether canonical ``path`` lies strictly below one of the canonical ``roots``."""
    return any(path != root and os.path.commonpath([path, root]) == root for root in roots)


def canonical_target(path: str) -> str:
    """A CO-given mount target made canonical: its parent resolved (symlinks and '..'),
    its own name kept. A target that is itself a symlink is refused: mounting or
    removing through it would act on wherever it points."""
    parent, name = os.path.split(os.path.abspath(path))
    if not name or name in (".", ".."):
        raise BadPath(f"{path} names no file or directory to use as a mount target")
    target = os.path.join(os.path.realpath(parent), name)
    if os.path.islink(target):
        raise BadPath(f"refusing to use {path} as a mount target: it is a symbolic link")
    return target


def mounts_beneath(path: str) -> list[str]:
    """Mount points strictly below path (a mount on path would hide them)."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    try:
        with open(MOUNTINFO, "rb") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise HostError(f"cannot read {MOUNTINFO} to look below {path}: {exc}") from exc
    found = []
    for line in lines:
        entry = _parse_mountinfo_line(line)
        if entry is not None and entry["mount_point"].startswith(prefix):
            found.append(entry["mount_point"])
    return sorted(set(found))


def is_mounted(path: str) -> bool:
    """Whether something is mounted on path itself (not merely on a parent directory)."""
    return mountinfo(path) is not None


def mount(
    source: str, target: str, fstype: str | None = None, options: list[str] | None = None
) -> None:
    """Mount source on target with the given filesystem type and options."""
    args = ["mount"]
    if fstype:
        args += ["-t", fstype]
    if options:
        args += ["-o", ",".join(options)]
    args += [source, target]
    _run(args, f"{source} -> {target}")
    LOG.info("mounted %s on %s", source, target)


def bind_mount(source: str, target: str, read_only: bool = False) -> None:
    """Bind source (a directory or a device file) onto target, read-only if asked.

    Read-only takes a separate remount (older kernels ignore ro on the bind itself); if
    that fails the bind is undone, so that a writable mount is never left behind.
    """
    _run(["mount", "--bind", source, target], f"{source} -> {target}")
    if read_only:
        try:
            remount_read_only(target)
        except HostError:
            try:
                _run(["umount", target], target)
            except HostError as undo:
                LOG.error("could not undo writable bind mount on %s: %s", target, undo)
            raise
    LOG.info("bind-mounted %s on %s%s", source, target, " read-only" if read_only else "")


def is_read_only(path: str) -> bool:
    """Whether the top mount on path is read-only (its per-mount options)."""
    entry = mountinfo(path)
    return entry is not None and "ro" in entry["mount_options"]


def remount_read_only(target: str) -> None:
    """Make a bind mount read-only (the second half of a read-only ``bind_mount``)."""
    _run(["mount", "-o", "remount,bind,ro", target], target)


def unmount(target: str) -> None:
    """Unmount the top mount on target; a missing or unmounted target is fine (retries)."""
    try:
        os.lstat(target)
    except FileNotFoundError:
        return
    except OSError:
        pass  # a stale mount point (ENOTCONN, ESTALE) still needs unmounting
    if not is_mounted(target):
        return
    beneath = mounts_beneath(target)
    if beneath:
        raise Busy(
            f"cannot unmount {target}: {len(beneath)} mount(s) below it would be cut off "
            f"({', '.join(beneath[:3])}{', ...' if len(beneath) > 3 else ''}); unmount them first"
        )
    try:
        _run(["umount", target], target)
    except HostError:
        if not is_mounted(target):
            return  # unmounted concurrently
        raise
    LOG.info("unmounted %s", target)


# --- sizes and stats --------------------------------------------------------------------


def resize_filesystem(device: str, mount_point: str, fstype: str) -> None:
    """Grow the filesystem to fill its (already grown) device: ext* by device, xfs by
    mount point, since xfs_growfs only works on a mounted filesystem."""
    if fstype in ("ext3", "ext4"):
        try:
            _run(["resize2fs", device], device, timeout=LONG_TIMEOUT)
        except HostError as exc:
            if "Permission denied" in str(exc):
                # Measured: the kernel refuses online ext4 growth (EPERM) to a root
                # process without CAP_SYS_RESOURCE, and resize2fs gives no reason.
                raise MissingCapability(
                    f"{exc} (growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE; "
                    "check the node plugin container's capabilities)"
                ) from exc
            raise
    elif fstype == "xfs":
        _run(
            ["xfs_growfs", mount_point], f"{device} mounted on {mount_point}", timeout=LONG_TIMEOUT
        )
    else:
        raise HostError(
            f"cannot resize {fstype!r} on {device}: supported filesystems are "
            f"{', '.join(SUPPORTED_FILESYSTEMS)}"
        )


def filesystem_size(device: str, fstype: str, mount_point: str = "") -> int:
    """Bytes the filesystem spans (not what statvfs shows free or total after its own
    metadata): ext* from its superblock, xfs from the mounted filesystem's geometry."""
    if fstype in ("ext3", "ext4"):
        out = _run(["dumpe2fs", "-h", device], device).stdout
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in out.splitlines())
        )
        try:
            return int(fields["Block count"]) * int(fields["Block size"])
        except (KeyError, ValueError) as exc:
            raise HostError(f"'dumpe2fs -h {device}' gave no block count and size") from exc
    if fstype == "xfs":
        out = _run(["xfs_info", mount_point], f"{device} mounted on {mount_point}").stdout
        for line in out.splitlines():
            if line.startswith("data"):
                words = dict(w.split("=", 1) for w in line.split() if "=" in w)
                try:
                    return int(words["bsize"]) * int(words["blocks"].rstrip(","))
                except (KeyError, ValueError):
                    break
        raise HostError(f"'xfs_info {mount_point}' gave no data section size")
    raise HostError(f"cannot size {fstype!r} on {device}")


def grow_unmounted_ext(device: str) -> None:
    """Grow an unmounted ext3/ext4 filesystem to its device. resize2fs refuses an
    unmounted filesystem not checked since its last mount, so e2fsck -f -p (fixes
    only what is safe without asking) runs first. Offline growth needs no
    CAP_SYS_RESOURCE, which online ext4 growth does."""
    # e2fsck: 0 clean, 1 errors corrected; 2 would need a reboot (not for an unmounted
    # device); 4 and up left errors or failed.
    _run(["e2fsck", "-f", "-p", device], device, timeout=LONG_TIMEOUT, ok_codes=(0, 1))
    _run(["resize2fs", device], device, timeout=LONG_TIMEOUT)


def block_device_size(device: str) -> int:
    """The size of a block device in bytes, as the kernel currently sees it."""
    proc = _run(["blockdev", "--getsize64", device], device)
    try:
        return int(proc.stdout.strip())
    except ValueError as exc:
        raise HostError(f"'blockdev --getsize64 {device}' printed {proc.stdout!r}") from exc


def filesystem_stats(path: str) -> dict[str, int]:
    """Byte and inode usage of the filesystem holding path (for NodeGetVolumeStats)."""
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise HostError(f"statvfs on {path} failed: {exc}") from exc
    return {
        "bytes_total": st.f_blocks * st.f_frsize,
        "bytes_available": st.f_bavail * st.f_frsize,
        "bytes_used": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "inodes_total": st.f_files,
        "inodes_free": st.f_ffree,
        "inodes_used": st.f_files - st.f_ffree,
    }


# --- mount targets ----------------------------------------------------------------------


def ensure_file(path: str) -> None:
    """Create an empty regular file as bind target for a raw block volume; the parent must
    exist. A block device already bound there counts as present."""
    try:
        mode = _stat_mode(path)
    except HostError as exc:
        raise BadPath(str(exc)) from exc
    if mode is not None:
        if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
            return
        raise BadPath(f"cannot use {path} as file mount target: it exists and is not a file")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise _path_error(f"cannot create file mount target {path}", exc) from exc
    os.close(fd)


def ensure_dir(path: str) -> None:
    """Create a directory mount target (and missing parents) if it does not exist."""
    try:
        os.makedirs(path, mode=0o750, exist_ok=True)
    except FileExistsError as exc:
        raise BadPath(f"cannot use {path} as directory mount target: not a directory") from exc
    except OSError as exc:
        raise _path_error(f"cannot create directory mount target {path}", exc) from exc


#: errno values that say the path given is unusable, not that the host is failing.
_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.EROFS, errno.ENOTDIR, errno.ENOENT,
                          errno.EEXIST, errno.ELOOP})  # fmt: skip


def _path_error(what: str, exc: OSError) -> HostError:
    kind = BadPath if exc.errno in _PATH_ERRNOS else HostError
    return kind(f"{what}: {exc.strerror or exc}")


def remove_path(path: str) -> None:
    """Remove an unmounted mount target: an empty directory or a file; missing is fine.

    Never recursive and never while mounted, so it cannot delete a volume's data.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HostError(f"cannot remove {path}: {exc}") from exc
    if is_mounted(path):
        raise HostError(f"refusing to remove {path}: it is still a mount point")
    try:
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HostError(f"cannot remove {path}: {exc}") from exc
