"""Two backends of one driver in one process keep their own configuration.

The trap (see cinder-driver-host-facts.md): Cinder's ``configuration.set_default``
writes to the ``[backend_defaults]`` group every backend falls back to, so a value
one backend's driver installs in ``do_setup`` would leak into the others.
``fault_injection.SetDefaultProbeFileDriver`` is a deliberate fake that does just that.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from csi_driver import storage

FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"
SET_DEFAULT_PROBE = "fault_injection.SetDefaultProbeFileDriver"

pytestmark = pytest.mark.usefixtures("memory_store")

MakeBackend = Callable[..., storage.Backend]


def location(backend: storage.Backend) -> str:
    """The directory the driver reports it uses (FileDriver's ``location_info``)."""
    return backend.stats(refresh=True)["location_info"].removeprefix("FileDriver:")


def test_volumes_of_each_backend_land_in_its_own_directory(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    one = make_backend("file-one", FILE_DRIVER, file_volumes_dir=str(tmp_path / "one"))
    two = make_backend("file-two", FILE_DRIVER, file_volumes_dir=str(tmp_path / "two"))
    v1 = one.create_volume(size=1)
    v2 = two.create_volume(size=1)
    assert os.listdir(tmp_path / "one") == [f"volume-{v1.id}"]
    assert os.listdir(tmp_path / "two") == [f"volume-{v2.id}"]
    assert location(one) == str(tmp_path / "one")
    assert location(two) == str(tmp_path / "two")
    assert [v.id for v in one.volumes] == [v1.id]
    assert [v.id for v in two.volumes] == [v2.id]


def test_closing_one_backend_leaves_the_other_working(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    one = make_backend("file-one", FILE_DRIVER, file_volumes_dir=str(tmp_path / "one"))
    two = make_backend("file-two", FILE_DRIVER, file_volumes_dir=str(tmp_path / "two"))
    one.close()
    assert "file-one" not in storage.Backend.backends
    assert storage.Backend.backends["file-two"] is two

    vol = two.create_volume(size=1)
    vol.extend(2)
    snap = vol.create_snapshot()
    clone = snap.create_volume()
    assert sorted(os.listdir(tmp_path / "two")) == sorted(
        [f"volume-{vol.id}", f"snapshot-{snap.id}", f"volume-{clone.id}"]
    )
    assert os.listdir(tmp_path / "one") == []
    assert location(two) == str(tmp_path / "two")
    snap.delete()
    clone.delete()
    vol.delete()
    assert os.listdir(tmp_path / "two") == []


def test_a_closed_backend_name_can_be_configured_again_with_new_options(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    first = make_backend("file-again", FILE_DRIVER, file_volumes_dir=str(tmp_path / "old"))
    first.close()
    again = make_backend("file-again", FILE_DRIVER, file_volumes_dir=str(tmp_path / "new"))
    vol = again.create_volume(size=1)
    assert os.listdir(tmp_path / "new") == [f"volume-{vol.id}"]
    assert os.listdir(tmp_path / "old") == []


def test_set_default_in_do_setup_does_not_leak_to_another_backend(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    # Neither sets file_volumes_dir: each driver fills it in do_setup with set_default.
    one = make_backend(
        "probe-one", SET_DEFAULT_PROBE, probe_default_volumes_dir=str(tmp_path / "one")
    )
    two = make_backend(
        "probe-two", SET_DEFAULT_PROBE, probe_default_volumes_dir=str(tmp_path / "two")
    )
    v1 = one.create_volume(size=1)
    v2 = two.create_volume(size=1)
    assert os.listdir(tmp_path / "one") == [f"volume-{v1.id}"]
    assert os.listdir(tmp_path / "two") == [f"volume-{v2.id}"]
    assert location(one) == str(tmp_path / "one")
    assert location(two) == str(tmp_path / "two")


def test_set_default_does_not_change_a_backend_configured_before(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    plain = make_backend("plain", FILE_DRIVER, file_volumes_dir=str(tmp_path / "plain"))
    make_backend("probe", SET_DEFAULT_PROBE, probe_default_volumes_dir=str(tmp_path / "probe"))
    vol = plain.create_volume(size=1)
    assert location(plain) == str(tmp_path / "plain")
    assert os.listdir(tmp_path / "plain") == [f"volume-{vol.id}"]
    assert os.listdir(tmp_path / "probe") == []


def test_backend_without_volumes_dir_does_not_inherit_one_set_by_another_driver(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    make_backend("probe", SET_DEFAULT_PROBE, probe_default_volumes_dir=str(tmp_path / "probe"))
    with pytest.raises(storage.BackendSetupError, match="file_volumes_dir is not set"):
        make_backend("unset", FILE_DRIVER)  # FILE_DRIVER given: no directory is filled in
    assert "unset" not in storage.Backend.backends


def test_closing_a_stale_backend_object_again_leaves_the_live_one_of_that_name_working(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    old = make_backend("reused", FILE_DRIVER, file_volumes_dir=str(tmp_path / "old"))
    old.close()
    live = make_backend("reused", FILE_DRIVER, file_volumes_dir=str(tmp_path / "new"))
    old.close()  # a second close of the stale object must not touch the live backend
    assert storage.Backend.backends["reused"] is live
    vol = live.create_volume(size=1)
    assert os.listdir(tmp_path / "new") == [f"volume-{vol.id}"]
