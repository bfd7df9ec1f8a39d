"""A Cinder volume driver that keeps every volume as a sparse file in one directory.

It exists so the plugin can be developed, tested in CI and run on a single node without a
storage array: volumes, snapshots and clones are plain files, attached through os-brick's
``LocalConnector`` (``driver_volume_type: local``). It needs no root and no Cinder database.

Configure it like any in-tree driver::

    [file-1]
    volume_driver = csi_driver.storage.drivers.file.FileDriver
    volume_backend_name = file-1
    file_volumes_dir = /var/lib/csi-driver/volumes

Snapshots and clones are reflinks (``FICLONE``) where the filesystem supports them (XFS,
btrfs, ...) and sparse copies otherwise, so holes in the source stay holes in the copy.
Every file that is copied is first written under a temporary dot-name in the same directory
and only then linked under its final name, so a crash never leaves a half-copied volume
under a name Cinder knows.

Durability: each call returns once what it did survives a power loss, with the fewest
fsyncs that give that on a journaling filesystem (ext4, XFS, btrfs), whose metadata
changes become durable in the order they were made:

- a copy (snapshot, clone, volume from snapshot): ``fsync`` of the new file (its data),
  then of the directory (its name);
- a blank volume: only the directory's ``fsync``. The file holds no data; its size is
  metadata like its name, made before the name, and carried by the same journal
  commit. Its own ``fsync`` would flush nothing more;
- extend: the file's ``fsync`` (the new size, before the library records it);
- delete: the directory's ``fsync``, before the library removes the record. Without
  it a power loss could keep the file while the removal, written later, survives: a
  file no record names, which nothing would ever delete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from cinder import exception, interface
from cinder.volume import configuration, driver, volume_utils
from oslo_config import cfg
from oslo_log import log as logging
from oslo_utils import units

if TYPE_CHECKING:
    from cinder.objects.snapshot import Snapshot
    from cinder.objects.volume import Volume

LOG = logging.getLogger(__name__)

file_opts = [
    cfg.StrOpt(
        "file_volumes_dir",
        help="Directory that holds the volume and snapshot files of the FileDriver. "
        "It is created at start-up if missing and must be writable by the plugin. "
        "Reflink-capable filesystems (XFS, btrfs) make snapshots and clones instant.",
    ),
]

CONF = cfg.CONF
CONF.register_opts(file_opts, group=configuration.SHARED_CONF_GROUP)

# ioctl request number of FICLONE, _IOW(0x94, 9, int), from <linux/fs.h>.
FICLONE = 0x40049409
# Copy granularity of the sparse fallback; all-zero chunks of this size become holes.
_CHUNK = units.Mi
_ZEROS = bytes(_CHUNK)
# Staging files are "<dot><final name>.<random><suffix>": hidden, and never a Cinder name.
_TMP_SUFFIX = ".tmp"
#: Seconds without a write after which a staging file counts as a crashed copy's.
_STALE_STAGING_SECONDS = 600


def _reflink(src_fd: int, dst_fd: int) -> bool:
    """Share all of ``src_fd``'s extents with the empty ``dst_fd``; False if unsupported."""
    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError as exc:
        # EOPNOTSUPP/ENOTTY/EINVAL: no reflink on this filesystem; EXDEV: other filesystem.
        LOG.debug("FICLONE not available (%s), falling back to a sparse copy", exc)
        os.ftruncate(dst_fd, 0)
        return False
    return True


def _data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of the regions of ``fd`` that may hold data, skipping holes."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no SEEK_DATA here
                yield offset, size
                return
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end <= start:  # defensive: never loop forever on a confused filesystem
            end = size
        yield start, end
        offset = end


def sparse_copy(src_fd: int, dst_fd: int) -> None:
    """Copy the contents of ``src_fd`` into the empty ``dst_fd``, keeping holes.

    Holes of the source are skipped with SEEK_DATA/SEEK_HOLE, and data chunks that are
    entirely zero are not written either (like ``cp --sparse=always``), so the copy
    allocates no more than the source. The destination ends with the source's size.
    """
    size = os.fstat(src_fd).st_size
    for start, end in _data_extents(src_fd, size):
        pos = start
        while pos < end:
            chunk = os.pread(src_fd, min(_CHUNK, end - pos), pos)
            if not chunk:  # source shrank under us; the final ftruncate pads with zeros
                break
            if chunk != _ZEROS[: len(chunk)]:
                view = memoryview(chunk)
                written = 0
                while written < len(view):
                    written += os.pwrite(dst_fd, view[written:], pos + written)
            pos += len(chunk)
    os.ftruncate(dst_fd, size)


@interface.volumedriver
class FileDriver(driver.VolumeDriver):
    """Volumes are sparse files in ``file_volumes_dir``, attached with the local connector.

    Meant for development, CI and single-node clusters: data lives on one host's
    filesystem, so it is neither shared between nodes nor replicated.
    """

    VERSION = "1.0.0"
    # No third-party CI wiki page: the driver ships with the plugin and is tested with it.
    CI_WIKI_NAME = None
    # Two services sharing one directory would race on it: no Active-Active.
    SUPPORTS_ACTIVE_ACTIVE = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.configuration.append_config_values(file_opts)
        self.backend_name: str = self.configuration.safe_get("volume_backend_name") or "FileDriver"
        self._stats: dict[str, Any] = {}

    @staticmethod
    def get_driver_options() -> list[cfg.Opt]:
        """Return the options this driver adds (used by Cinder's option listing tools)."""
        return file_opts

    # ------------------------------------------------------------------ setup

    @property
    def volumes_dir(self) -> str:
        """Absolute path of ``file_volumes_dir``; raises if the option is not set."""
        path = self.configuration.safe_get("file_volumes_dir")
        if not path:
            raise exception.VolumeDriverException(
                message=(
                    f"FileDriver backend {self.backend_name!r}: option file_volumes_dir "
                    "is not set; set it to the directory that should hold the volume files"
                )
            )
        return os.path.abspath(path)

    def do_setup(self, context: Any) -> None:
        """Create ``file_volumes_dir`` if needed and drop staging files of crashed copies."""
        path = self.volumes_dir
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise exception.VolumeDriverException(
                message=f"FileDriver: cannot create file_volumes_dir {path!r}: {exc}"
            ) from exc
        if not os.path.isdir(path):  # e.g. a symlink to a regular file
            raise exception.VolumeDriverException(
                message=f"FileDriver: file_volumes_dir {path!r} is not a directory"
            )
        # A staging file nobody has written to for a while is a crashed copy's. A recent
        # one may belong to another process sharing the directory (a second controller
        # replica starting while the first copies): left alone.
        stale_before = time.time() - _STALE_STAGING_SECONDS
        for entry in os.scandir(path):
            if not (entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < stale_before:
                    LOG.warning("Removing leftover staging file %s", entry.path)
                    os.unlink(entry.path)

    def check_for_setup_error(self) -> None:
        """Verify that ``file_volumes_dir`` is a directory we can really create files in.

        A probe file is created and removed, because ``os.access`` is not conclusive for
        root, for read-only mounts on some systems, or for ACLs.
        """
        path = self.volumes_dir
        if not os.path.isdir(path):
            raise exception.VolumeDriverException(
                message=f"FileDriver: file_volumes_dir {path!r} is not an existing directory"
            )
        try:
            fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-", suffix=_TMP_SUFFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise exception.VolumeDriverException(
                message=f"FileDriver: file_volumes_dir {path!r} is not writable: {exc}"
            ) from exc

    # ------------------------------------------------------------------ paths

    def _path(self, name: str) -> str:
        """Absolute path of the file called ``name``, refusing names that escape the dir."""
        if not name or os.sep in name or name.startswith(".") or "\0" in name:
            raise exception.InvalidInput(reason=f"unusable file name {name!r} for FileDriver")
        return os.path.join(self.volumes_dir, name)

    def volume_path(self, volume: Volume) -> str:
        """Path of ``volume``'s file; ``volume.name`` follows ``_name_id`` after migrations."""
        return self._path(volume.name)

    def snapshot_path(self, snapshot: Snapshot) -> str:
        """Path of ``snapshot``'s file."""
        return self._path(snapshot.name)

    def _fsync_dir(self) -> None:
        fd = os.open(self.volumes_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _staged(self, final: str, has_data: bool = True) -> Iterator[int]:
        """Yield the fd of a new staging file that becomes ``final`` when the block ends.

        The file is published with ``link()``, which fails instead of replacing an
        existing file, so a name collision can never destroy another volume's data. On
        any error the staging file is removed and ``final`` is untouched. Without
        ``has_data`` (a blank sparse file) only the directory is fsynced (see the
        module's docstring).
        """
        if os.path.lexists(final):
            raise exception.VolumeBackendAPIException(
                data=f"{final} already exists; refusing to overwrite it"
            )
        fd, tmp = tempfile.mkstemp(
            dir=os.path.dirname(final), prefix=f".{os.path.basename(final)}.", suffix=_TMP_SUFFIX
        )
        try:
            yield fd
            if has_data:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            self._publish(tmp, final)
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._fsync_dir()

    @staticmethod
    def _publish(tmp: str, final: str) -> None:
        try:
            os.link(tmp, final)
        except FileExistsError as exc:
            raise exception.VolumeBackendAPIException(
                data=f"{final} appeared while it was being written; refusing to overwrite it"
            ) from exc
        except OSError as exc:
            # Filesystems without hard links: rename is still atomic, only the
            # no-overwrite guarantee falls back to the check done before copying.
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
                raise
            if os.path.lexists(final):
                raise exception.VolumeBackendAPIException(
                    data=f"{final} already exists; refusing to overwrite it"
                ) from exc
            os.rename(tmp, final)

    @contextlib.contextmanager
    def _os_errors(self, action: str) -> Iterator[None]:
        """Turn unexpected OS errors (ENOSPC, EIO, ...) into a Cinder backend error."""
        try:
            yield
        except OSError as exc:
            raise exception.VolumeBackendAPIException(
                data=f"FileDriver backend {self.backend_name!r}: {action} failed: {exc}"
            ) from exc

    def _grow(self, fd: int, size: int) -> None:
        """Set a new or growing file to ``size`` bytes.

        A size the filesystem cannot hold (EFBIG; beyond off_t is OverflowError) is the
        request's fault, not the backend's: it is raised as Cinder's
        ``VolumeSizeExceedsLimit`` naming the largest size that fits.
        """
        try:
            os.ftruncate(fd, size)
        except OverflowError as exc:
            raise self._too_big(size) from exc
        except OSError as exc:
            if exc.errno != errno.EFBIG:
                raise
            raise self._too_big(size) from exc

    def _too_big(self, size: int) -> exception.VolumeSizeExceedsLimit:
        return exception.VolumeSizeExceedsLimit(
            size=-(-size // units.Gi), limit=self._largest_file_gib()
        )

    def _largest_file_gib(self) -> int:
        """The largest whole number of GiB a file in ``file_volumes_dir`` can have, found
        by growing an empty staging file (sparse: nothing is allocated) by bisection."""
        fd, probe = tempfile.mkstemp(dir=self.volumes_dir, prefix=".probe-", suffix=_TMP_SUFFIX)
        try:
            fits, too_big = 0, 2**63 // units.Gi  # 2**63 bytes is beyond off_t
            while too_big - fits > 1:
                middle = (fits + too_big) // 2
                try:
                    os.ftruncate(fd, middle * units.Gi)
                except (OSError, OverflowError):
                    too_big = middle
                else:
                    fits = middle
            return fits
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(probe)

    def _copy_file(self, src: str, dst: str, min_size: int, not_found: Exception) -> None:
        """Copy ``src`` to a new file ``dst`` (reflink or sparse copy), then grow it to
        ``min_size`` bytes. ``not_found`` is raised when ``src`` does not exist."""
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise not_found from None
        try:
            src_size = os.fstat(src_fd).st_size
            if min_size < src_size:
                raise exception.InvalidInput(
                    reason=(
                        f"{os.path.basename(dst)} would be {min_size // units.Gi} GiB, smaller "
                        f"than its source {os.path.basename(src)} "
                        f"({src_size / units.Gi:g} GiB); volumes never shrink"
                    )
                )
            with self._staged(dst) as dst_fd:
                if not _reflink(src_fd, dst_fd):
                    sparse_copy(src_fd, dst_fd)
                if min_size > src_size:
                    self._grow(dst_fd, min_size)
        finally:
            os.close(src_fd)

    # ------------------------------------------------------------------ volumes

    def create_volume(self, volume: Volume) -> None:
        """Create an empty sparse file of ``volume.size`` GiB: allocates nothing up front."""
        with (
            self._os_errors(f"create_volume {volume.id}"),
            self._staged(self.volume_path(volume), has_data=False) as fd,
        ):
            self._grow(fd, volume.size * units.Gi)

    def delete_volume(self, volume: Volume) -> None:
        """Remove the volume's file; a file that is already gone counts as deleted.

        Removing the file is enough to keep its data from leaking: new volumes are new
        sparse files and never reuse this one's blocks with their old contents.
        """
        with self._os_errors(f"delete_volume {volume.id}"):
            try:
                os.unlink(self.volume_path(volume))
            except FileNotFoundError:
                # Perhaps by a process that died before the fsync below: do it here.
                LOG.info("Volume file of %s already gone; nothing to delete", volume.id)
            self._fsync_dir()

    def extend_volume(self, volume: Volume, new_size: int) -> None:
        """Grow the volume file to ``new_size`` GiB; shrinking is refused, equal is a no-op.

        ``truncate`` to a larger size is a single system call, so it cannot be half done;
        the ``fsync`` after it makes the size durable before the library records it (a
        recorded size the file lost in a power loss would let a filesystem grow past
        the device's end).
        """
        path = self.volume_path(volume)
        new_bytes = new_size * units.Gi
        with self._os_errors(f"extend_volume {volume.id}"):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise exception.VolumeNotFound(volume_id=volume.id) from None
            try:
                current = os.fstat(fd).st_size
                if new_bytes < current:
                    raise exception.InvalidInput(
                        reason=(
                            f"cannot extend volume {volume.id} to {new_size} GiB: it already "
                            f"has {current / units.Gi:g} GiB and FileDriver never shrinks volumes"
                        )
                    )
                if new_bytes > current:
                    self._grow(fd, new_bytes)
                # Also when equal: finishing an extend a crash interrupted before its fsync.
                os.fsync(fd)
            finally:
                os.close(fd)

    def create_cloned_volume(self, volume: Volume, src_vref: Volume) -> None:
        """Copy ``src_vref``'s file (reflink or sparse copy), grown to ``volume.size`` GiB."""
        with self._os_errors(f"create_cloned_volume {volume.id} from {src_vref.id}"):
            self._copy_file(
                self.volume_path(src_vref),
                self.volume_path(volume),
                volume.size * units.Gi,
                exception.VolumeNotFound(volume_id=src_vref.id),
            )

    # ------------------------------------------------------------------ snapshots

    def create_snapshot(self, snapshot: Snapshot) -> None:
        """Freeze the volume's current contents into a snapshot file (reflink or copy).

        The copy is taken from the file as it is; as with any crash-consistent snapshot,
        writes still cached in an attached consumer are not included.
        """
        volume = snapshot.volume
        with self._os_errors(f"create_snapshot {snapshot.id}"):
            self._copy_file(
                self.volume_path(volume),
                self.snapshot_path(snapshot),
                snapshot.volume_size * units.Gi,
                exception.VolumeNotFound(volume_id=snapshot.volume_id),
            )

    def delete_snapshot(self, snapshot: Snapshot) -> None:
        """Remove the snapshot's file; one that is already gone counts as deleted."""
        with self._os_errors(f"delete_snapshot {snapshot.id}"):
            try:
                os.unlink(self.snapshot_path(snapshot))
            except FileNotFoundError:
                # Perhaps by a process that died before the fsync below: do it here.
                LOG.info("Snapshot file of %s already gone; nothing to delete", snapshot.id)
            self._fsync_dir()

    def create_volume_from_snapshot(self, volume: Volume, snapshot: Snapshot) -> None:
        """Copy the snapshot's file into a new volume file, grown to ``volume.size`` GiB."""
        with self._os_errors(f"create_volume_from_snapshot {volume.id} from {snapshot.id}"):
            self._copy_file(
                self.snapshot_path(snapshot),
                self.volume_path(volume),
                volume.size * units.Gi,
                exception.SnapshotNotFound(snapshot_id=snapshot.id),
            )

    # ------------------------------------------------------------------ exports

    def create_export(self, context: Any, volume: Volume, connector: Any) -> None:
        """Nothing to export: the file is reached directly on this host."""
        return None

    def ensure_export(self, context: Any, volume: Volume) -> None:
        """Nothing to re-create at start-up: files need no target."""
        return None

    def remove_export(self, context: Any, volume: Volume) -> None:
        """Nothing was exported."""
        return None

    def initialize_connection(self, volume: Volume, connector: Any) -> dict[str, Any]:
        """Hand out the file path for os-brick's ``LocalConnector``."""
        return {
            "driver_volume_type": "local",
            "data": {"device_path": self.volume_path(volume), "volume_id": volume.id},
        }

    def terminate_connection(self, volume: Volume, connector: Any, **kwargs: Any) -> None:
        """Nothing to tear down: no target was created for the connection."""
        return None

    # ------------------------------------------------------------------ stats

    def get_pool(self, volume: Volume) -> str:
        """The driver has a single pool, named after the backend."""
        return self.backend_name

    def _provisioned_bytes(self) -> int:
        """Sum of the apparent sizes of the volume files (not snapshots, not staging)."""
        prefix, _, suffix = CONF.volume_name_template.partition("%s")
        total = 0
        for entry in os.scandir(self.volumes_dir):
            name = entry.name
            if (
                name.startswith(".")
                or not name.startswith(prefix)
                or not name.endswith(suffix)
                or len(name) <= len(prefix) + len(suffix)
            ):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted while we scan
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def _update_volume_stats(self) -> None:
        """Refresh ``self._stats`` from the filesystem holding ``file_volumes_dir``."""
        path = self.volumes_dir
        st = os.statvfs(path)
        total_gb = round(st.f_blocks * st.f_frsize / units.Gi, 2)
        free_gb = round(st.f_bavail * st.f_frsize / units.Gi, 2)
        provisioned_gb = round(self._provisioned_bytes() / units.Gi, 2)
        # "auto" is passed through: Cinder's scheduler derives the ratio from the
        # provisioned/used capacity reported here (sched_utils), as it does for LVM.
        mosr = volume_utils.get_max_over_subscription_ratio(
            self.configuration.max_over_subscription_ratio, supports_auto=True
        )
        reserved = self.configuration.safe_get("reserved_percentage") or 0
        pool = {
            "pool_name": self.backend_name,
            "total_capacity_gb": total_gb,
            "free_capacity_gb": free_gb,
            "provisioned_capacity_gb": provisioned_gb,
            "reserved_percentage": reserved,
            "max_over_subscription_ratio": mosr,
            "thin_provisioning_support": True,
            "thick_provisioning_support": False,
            "multiattach": False,
            "QoS_support": False,
            "location_info": f"FileDriver:{path}",
            "backend_state": "up",
        }
        self._stats = {
            "volume_backend_name": self.backend_name,
            "vendor_name": "Open Source",
            "driver_version": self.VERSION,
            "storage_protocol": "local",
            **{k: v for k, v in pool.items() if k != "pool_name"},
            "pools": [pool],
        }
