"""FileDriver driven the way cinder-volume drives it: real Cinder config and objects, no mocks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OS_CINDER_DISABLE_EVENTLET_PATCHING", "1")

GiB = 1024**3
MiB = 1024**2


@pytest.fixture(scope="module")
def cinder() -> Any:
    """Import and initialise Cinder once, as cinder-volume does at start-up."""
    os.environ["OS_CINDER_DISABLE_EVENTLET_PATCHING"] = "1"
    from cinder import context, exception, objects
    from oslo_config import cfg

    # Before cinder.volume.manager: its imports annotate with objects.Volume & co.
    objects.register_all()
    from cinder.volume import configuration, manager

    if cfg.CONF._args is None:  # parse once per process, as cinder-volume does
        cfg.CONF([], project="cinder", default_config_files=[])

    from csi_driver.storage.drivers import file as file_driver

    class Cinder:
        pass

    c = Cinder()
    c.cfg = cfg
    c.context = context
    c.exception = exception
    c.objects = objects
    c.configuration = configuration
    c.manager = manager
    c.file = file_driver
    return c


def make_driver(cinder: Any, group: str, volumes_dir: str | None, **overrides: Any) -> Any:
    """Build a FileDriver with its own config group, like one enabled_backends entry."""
    conf = backend_conf(cinder, group)
    # Values a cinder.conf section would hold, set before the driver reads them.
    for name, value in overrides.items():
        cinder.cfg.CONF.set_override(name, value, group=group)
    drv = cinder.file.FileDriver(configuration=conf, host=f"test@{group}")
    if volumes_dir is not None:
        # Registered in the group by FileDriver.__init__ (append_config_values).
        cinder.cfg.CONF.set_override("file_volumes_dir", volumes_dir, group=group)
    return drv


def backend_conf(cinder: Any, group: str) -> Any:
    """The per-backend Configuration cinder-volume builds for one enabled_backends entry."""
    from cinder.volume import driver as cinder_driver

    conf = cinder.configuration.Configuration(
        cinder.manager.volume_backend_opts, config_group=group
    )
    # Registered by BaseVD.__init__ anyway; done first so overrides can precede the driver.
    conf.append_config_values(cinder_driver.volume_opts)
    return conf


@pytest.fixture
def group() -> Any:
    name = f"file-{uuid.uuid4().hex[:8]}"
    yield name
    from oslo_config import cfg

    with contextlib.suppress(cfg.NoSuchOptError, cfg.NoSuchGroupError):
        cfg.CONF.clear_override("file_volumes_dir", group=name)


@pytest.fixture
def ctx(cinder: Any) -> Any:
    return cinder.context.RequestContext(user_id="u", project_id="p", is_admin=True)


@pytest.fixture
def voldir(tmp_path: Path) -> Path:
    return tmp_path / "volumes"


@pytest.fixture
def drv(cinder: Any, group: str, voldir: Path, ctx: Any) -> Any:
    d = make_driver(cinder, group, str(voldir))
    d.do_setup(ctx)
    d.check_for_setup_error()
    return d


def new_volume(cinder: Any, ctx: Any, size: int = 1, name_id: str | None = None) -> Any:
    return cinder.objects.Volume(
        context=ctx,
        id=str(uuid.uuid4()),
        _name_id=name_id,
        size=size,
        host="test@g#g",
        status="creating",
        volume_type_id=None,
        volume_type=None,
        encryption_key_id=None,
        metadata={},
        admin_metadata={},
        glance_metadata={},
        multiattach=False,
        user_id="u",
        project_id="p",
    )


def new_snapshot(cinder: Any, ctx: Any, vol: Any) -> Any:
    return cinder.objects.Snapshot(
        context=ctx,
        id=str(uuid.uuid4()),
        volume_id=vol.id,
        volume_size=vol.size,
        volume=vol,
        status="creating",
        metadata={},
        volume_type_id=None,
        encryption_key_id=None,
        user_id="u",
        project_id="p",
    )


def write_at(path: str, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: str, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def allocated(path: str) -> int:
    return os.stat(path).st_blocks * 512


HEAD = b"head-of-volume" * 100
TAIL = b"written-at-700-MiB"


def fill(path: str) -> None:
    write_at(path, 0, HEAD)
    write_at(path, 700 * MiB, TAIL)


def assert_filled(path: str) -> None:
    assert read_at(path, 0, len(HEAD)) == HEAD
    assert read_at(path, 700 * MiB, len(TAIL)) == TAIL
    # The hole between the writes reads as zeros and is still a hole.
    assert read_at(path, 300 * MiB, 4096) == bytes(4096)
    assert allocated(path) < 16 * MiB


# ---------------------------------------------------------------- tests


def test_driver_class_looks_like_an_in_tree_driver(cinder: Any) -> None:
    from cinder.volume import driver as cinder_driver

    cls = cinder.file.FileDriver
    assert issubclass(cls, cinder_driver.VolumeDriver)
    assert cls.SUPPORTS_ACTIVE_ACTIVE is False
    assert cls.VERSION
    assert hasattr(cls, "CI_WIKI_NAME")
    # Registered on import in the shared group, like lvm.py does.
    assert cinder.cfg.CONF.backend_defaults.file_volumes_dir is None
    assert [o.name for o in cls.get_driver_options()] == ["file_volumes_dir"]


def test_loaded_by_dotted_volume_driver_path(cinder: Any, group: str, voldir: Path) -> None:
    from oslo_utils import importutils

    conf = backend_conf(cinder, group)
    cinder.cfg.CONF.set_override(
        "volume_driver", "csi_driver.storage.drivers.file.FileDriver", group=group
    )
    cinder.cfg.CONF.set_override("volume_backend_name", "loaded", group=group)
    try:
        drv = importutils.import_object(
            conf.volume_driver, configuration=conf, host=f"test@{group}", db=None
        )
        cinder.cfg.CONF.set_override("file_volumes_dir", str(voldir), group=group)
        assert isinstance(drv, cinder.file.FileDriver)
        assert drv.volumes_dir == str(voldir)
        assert drv.backend_name == "loaded"
    finally:
        cinder.cfg.CONF.clear_override("volume_driver", group=group)
        cinder.cfg.CONF.clear_override("volume_backend_name", group=group)


def test_do_setup_creates_missing_directory(cinder: Any, group: str, tmp_path: Path, ctx: Any):
    target = tmp_path / "a" / "b"
    d = make_driver(cinder, group, str(target))
    d.do_setup(ctx)
    d.check_for_setup_error()
    assert target.is_dir()


def test_do_setup_removes_leftover_staging_files(drv: Any, voldir: Path, ctx: Any) -> None:
    stale = voldir / ".volume-x.abc123.tmp"
    stale.write_bytes(b"half a copy")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    # Another replica sharing the directory is copying right now: its file stays.
    in_flight = voldir / ".volume-y.def456.tmp"
    in_flight.write_bytes(b"being copied")
    keep = voldir / "volume-keep"
    keep.write_bytes(b"")
    drv.do_setup(ctx)
    assert not stale.exists()
    assert in_flight.exists()
    assert keep.exists()


def test_do_setup_without_dir_names_the_option(cinder: Any, group: str, ctx: Any) -> None:
    d = make_driver(cinder, group, None)
    with pytest.raises(cinder.exception.VolumeDriverException, match="file_volumes_dir"):
        d.do_setup(ctx)
    with pytest.raises(cinder.exception.VolumeDriverException, match="file_volumes_dir"):
        d.check_for_setup_error()


def test_regular_file_as_dir_is_refused(cinder: Any, group: str, tmp_path: Path, ctx: Any):
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_bytes(b"x")
    d = make_driver(cinder, group, str(not_a_dir))
    with pytest.raises(cinder.exception.VolumeDriverException, match="plain-file"):
        d.do_setup(ctx)
    with pytest.raises(cinder.exception.VolumeDriverException, match="not an existing directory"):
        d.check_for_setup_error()


def _rerun_without_capabilities(test_id: str) -> None:
    """Run one test again in a child that keeps uid 0 but holds no capabilities.

    Root with CAP_DAC_OVERRIDE may write into any directory, so a read-only
    directory can only be tested from a process that lost that capability.
    """
    if os.environ.get("CSI_TEST_WITHOUT_CAPS"):
        pytest.fail("still able to write into a 0500 directory after dropping capabilities")
    command = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m",
               "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{test_id}"]  # fmt: skip
    env = {**os.environ, "CSI_TEST_WITHOUT_CAPS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout, done.stdout[-3000:]


def test_read_only_dir_is_refused(cinder: Any, group: str, tmp_path: Path, ctx: Any):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        try:
            (ro / "probe").touch()
        except PermissionError:
            pass
        else:
            _rerun_without_capabilities("test_read_only_dir_is_refused")
            return
        d = make_driver(cinder, group, str(ro))
        d.do_setup(ctx)
        with pytest.raises(cinder.exception.VolumeDriverException, match="not writable"):
            d.check_for_setup_error()
    finally:
        ro.chmod(0o700)


def test_create_volume_is_sparse_file_of_size(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    vol = new_volume(cinder, ctx, size=2)
    assert drv.create_volume(vol) is None
    path = voldir / f"volume-{vol.id}"
    assert path.is_file()
    assert path.stat().st_size == 2 * GiB
    assert allocated(str(path)) < MiB
    # Only the final file remains: no staging file left behind.
    assert sorted(p.name for p in voldir.iterdir()) == [path.name]


def test_create_volume_refuses_to_overwrite(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    fill(drv.volume_path(vol))
    with pytest.raises(cinder.exception.VolumeBackendAPIException, match="already exists"):
        drv.create_volume(vol)
    assert_filled(drv.volume_path(vol))


def test_volume_file_follows_name_id(cinder: Any, drv: Any, ctx: Any, voldir: Path) -> None:
    name_id = str(uuid.uuid4())
    vol = new_volume(cinder, ctx, name_id=name_id)
    drv.create_volume(vol)
    assert (voldir / f"volume-{name_id}").is_file()
    assert not (voldir / f"volume-{vol.id}").exists()
    conn = drv.initialize_connection(vol, {})
    assert conn["data"]["device_path"] == str(voldir / f"volume-{name_id}")
    assert conn["data"]["volume_id"] == vol.id


def test_snapshot_has_the_volume_bytes(cinder: Any, drv: Any, ctx: Any, voldir: Path) -> None:
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    fill(drv.volume_path(vol))
    snap = new_snapshot(cinder, ctx, vol)
    assert drv.create_snapshot(snap) is None
    spath = voldir / f"snapshot-{snap.id}"
    assert spath.stat().st_size == 1 * GiB
    assert_filled(str(spath))
    # The snapshot is a copy: later writes to the volume do not reach it.
    write_at(drv.volume_path(vol), 0, b"X" * len(HEAD))
    assert read_at(str(spath), 0, len(HEAD)) == HEAD


def test_snapshot_of_missing_volume(cinder: Any, drv: Any, ctx: Any, voldir: Path) -> None:
    vol = new_volume(cinder, ctx)
    snap = new_snapshot(cinder, ctx, vol)
    with pytest.raises(cinder.exception.VolumeNotFound):
        drv.create_snapshot(snap)
    assert list(voldir.iterdir()) == []


def test_volume_from_snapshot_bigger(cinder: Any, drv: Any, ctx: Any, voldir: Path) -> None:
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    fill(drv.volume_path(vol))
    snap = new_snapshot(cinder, ctx, vol)
    drv.create_snapshot(snap)
    new = new_volume(cinder, ctx, size=3)
    assert drv.create_volume_from_snapshot(new, snap) is None
    path = drv.volume_path(new)
    assert os.stat(path).st_size == 3 * GiB
    assert_filled(path)
    assert read_at(path, 2 * GiB, 4096) == bytes(4096)


def test_volume_from_snapshot_same_size(cinder: Any, drv: Any, ctx: Any) -> None:
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    fill(drv.volume_path(vol))
    snap = new_snapshot(cinder, ctx, vol)
    drv.create_snapshot(snap)
    new = new_volume(cinder, ctx, size=1)
    drv.create_volume_from_snapshot(new, snap)
    assert os.stat(drv.volume_path(new)).st_size == 1 * GiB
    assert_filled(drv.volume_path(new))


def test_volume_from_snapshot_smaller_refused(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    vol = new_volume(cinder, ctx, size=2)
    drv.create_volume(vol)
    snap = new_snapshot(cinder, ctx, vol)
    drv.create_snapshot(snap)
    small = new_volume(cinder, ctx, size=1)
    with pytest.raises(cinder.exception.InvalidInput, match="never shrink"):
        drv.create_volume_from_snapshot(small, snap)
    assert not os.path.exists(drv.volume_path(small))
    assert not [p for p in voldir.iterdir() if p.name.startswith(".")]


def test_volume_from_missing_snapshot(cinder: Any, drv: Any, ctx: Any) -> None:
    vol = new_volume(cinder, ctx)
    snap = new_snapshot(cinder, ctx, vol)
    new = new_volume(cinder, ctx)
    with pytest.raises(cinder.exception.SnapshotNotFound):
        drv.create_volume_from_snapshot(new, snap)
    assert not os.path.exists(drv.volume_path(new))


def test_clone_bigger(cinder: Any, drv: Any, ctx: Any) -> None:
    src = new_volume(cinder, ctx)
    drv.create_volume(src)
    fill(drv.volume_path(src))
    clone = new_volume(cinder, ctx, size=2)
    assert drv.create_cloned_volume(clone, src) is None
    path = drv.volume_path(clone)
    assert os.stat(path).st_size == 2 * GiB
    assert_filled(path)
    # Independent copy in both directions.
    write_at(path, 0, b"C" * len(HEAD))
    assert read_at(drv.volume_path(src), 0, len(HEAD)) == HEAD


def test_clone_of_missing_volume(cinder: Any, drv: Any, ctx: Any) -> None:
    src = new_volume(cinder, ctx)
    clone = new_volume(cinder, ctx)
    with pytest.raises(cinder.exception.VolumeNotFound):
        drv.create_cloned_volume(clone, src)
    assert not os.path.exists(drv.volume_path(clone))


def test_extend_grows_and_keeps_data(cinder: Any, drv: Any, ctx: Any) -> None:
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    fill(drv.volume_path(vol))
    assert drv.extend_volume(vol, 4) is None
    assert os.stat(drv.volume_path(vol)).st_size == 4 * GiB
    assert_filled(drv.volume_path(vol))
    drv.extend_volume(vol, 4)  # same size: nothing to do
    assert os.stat(drv.volume_path(vol)).st_size == 4 * GiB


def test_extend_to_smaller_refused(cinder: Any, drv: Any, ctx: Any) -> None:
    vol = new_volume(cinder, ctx, size=2)
    drv.create_volume(vol)
    with pytest.raises(cinder.exception.InvalidInput, match="never shrinks"):
        drv.extend_volume(vol, 1)
    assert os.stat(drv.volume_path(vol)).st_size == 2 * GiB


def test_extend_missing_volume(cinder: Any, drv: Any, ctx: Any) -> None:
    vol = new_volume(cinder, ctx)
    with pytest.raises(cinder.exception.VolumeNotFound):
        drv.extend_volume(vol, 2)
    assert not os.path.exists(drv.volume_path(vol))


def test_deletes_remove_files_and_repeat_is_fine(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    snap = new_snapshot(cinder, ctx, vol)
    drv.create_snapshot(snap)
    assert len(list(voldir.iterdir())) == 2

    assert drv.delete_snapshot(snap) is None
    assert not os.path.exists(drv.snapshot_path(snap))
    assert os.path.exists(drv.volume_path(vol))
    drv.delete_snapshot(snap)

    assert drv.delete_volume(vol) is None
    assert not os.path.exists(drv.volume_path(vol))
    drv.delete_volume(vol)
    assert list(voldir.iterdir()) == []


def test_exports_do_nothing(cinder: Any, drv: Any, ctx: Any, voldir: Path) -> None:
    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    before = sorted(voldir.iterdir())
    assert drv.create_export(ctx, vol, {}) is None
    assert drv.ensure_export(ctx, vol) is None
    assert drv.remove_export(ctx, vol) is None
    assert drv.terminate_connection(vol, {}) is None
    assert sorted(voldir.iterdir()) == before


def test_initialize_connection_works_with_os_brick(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    from os_brick.initiator import connector as brick_connector

    vol = new_volume(cinder, ctx)
    drv.create_volume(vol)
    conn = drv.initialize_connection(vol, {"host": "node-1"})
    expected = str(voldir / f"volume-{vol.id}")
    assert conn == {
        "driver_volume_type": "local",
        "data": {"device_path": expected, "volume_id": vol.id},
    }
    assert os.path.isabs(conn["data"]["device_path"])

    brick = brick_connector.InitiatorConnector.factory(conn["driver_volume_type"], None)
    device = brick.connect_volume(conn["data"])
    assert device["path"] == expected
    brick.disconnect_volume(conn["data"], device)


def test_stats(cinder: Any, drv: Any, ctx: Any) -> None:
    for size in (1, 2):
        drv.create_volume(new_volume(cinder, ctx, size=size))
    vol = new_volume(cinder, ctx, size=1)
    drv.create_volume(vol)
    drv.create_snapshot(new_snapshot(cinder, ctx, vol))  # snapshots are not provisioned

    stats = drv.get_volume_stats(refresh=True)
    assert stats is drv._stats
    assert stats["volume_backend_name"] == "FileDriver"
    assert stats["vendor_name"]
    assert stats["driver_version"] == drv.VERSION
    assert stats["storage_protocol"] == "local"
    assert 0 < stats["free_capacity_gb"] <= stats["total_capacity_gb"]
    assert stats["provisioned_capacity_gb"] == 4
    assert stats["thin_provisioning_support"] is True
    assert stats["thick_provisioning_support"] is False
    assert stats["max_over_subscription_ratio"] == 20.0
    assert stats["reserved_percentage"] == 0
    assert stats["multiattach"] is False
    [pool] = stats["pools"]
    assert pool["pool_name"] == "FileDriver"
    assert pool["total_capacity_gb"] == stats["total_capacity_gb"]
    assert pool["provisioned_capacity_gb"] == 4
    assert drv.get_pool(vol) == "FileDriver"

    # refresh=True re-reads the directory.
    drv.delete_volume(vol)
    assert drv.get_volume_stats(refresh=True)["provisioned_capacity_gb"] == 3


def test_stats_follow_configuration(cinder: Any, group: str, voldir: Path, ctx: Any) -> None:
    d = make_driver(
        cinder,
        group,
        str(voldir),
        volume_backend_name="fast",
        max_over_subscription_ratio="3.5",
        reserved_percentage=10,
    )
    try:
        assert d.backend_name == "fast"
        d.do_setup(ctx)
        stats = d.get_volume_stats(refresh=True)
        assert stats["volume_backend_name"] == "fast"
        assert stats["pools"][0]["pool_name"] == "fast"
        assert stats["max_over_subscription_ratio"] == 3.5
        assert stats["reserved_percentage"] == 10
        assert stats["pools"][0]["reserved_percentage"] == 10
    finally:
        for name in ("volume_backend_name", "max_over_subscription_ratio", "reserved_percentage"):
            cinder.cfg.CONF.clear_override(name, group=group)


def test_stats_pass_auto_over_subscription_through(
    cinder: Any, group: str, voldir: Path, ctx: Any
) -> None:
    d = make_driver(cinder, group, str(voldir), max_over_subscription_ratio="auto")
    try:
        d.do_setup(ctx)
        stats = d.get_volume_stats(refresh=True)
        assert stats["max_over_subscription_ratio"] == "auto"
        assert stats["pools"][0]["max_over_subscription_ratio"] == "auto"
    finally:
        cinder.cfg.CONF.clear_override("max_over_subscription_ratio", group=group)


def test_sparse_copy_keeps_holes_and_skips_zero_data(cinder: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    dst = tmp_path / "dst"
    with open(src, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(8 * MiB)
        f.write(b"\0" * (8 * MiB))  # allocated, but all zeros
        f.seek(40 * MiB)
        f.write(b"data" * 1024)
    assert allocated(str(src)) >= 8 * MiB
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        cinder.file.sparse_copy(sfd, dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.stat().st_size == 64 * MiB
    assert src.read_bytes() == dst.read_bytes()
    assert allocated(str(dst)) < 2 * MiB


def test_names_leaving_the_directory_are_refused(cinder: Any, drv: Any, ctx: Any, voldir: Path):
    vol = new_volume(cinder, ctx)
    cinder.cfg.CONF.set_override("volume_name_template", "../volume-%s")
    try:
        with pytest.raises(cinder.exception.InvalidInput, match="unusable file name"):
            drv.create_volume(vol)
    finally:
        cinder.cfg.CONF.clear_override("volume_name_template")
    assert not (voldir.parent / f"volume-{vol.id}").exists()
    assert list(voldir.iterdir()) == []
