"""Backends that cannot start say why, naming the backend and the cause, and stay unregistered."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from oslo_concurrency import processutils

from csi_driver import storage

FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"
LVM_DRIVER = "cinder.volume.drivers.lvm.LVMVolumeDriver"

pytestmark = pytest.mark.usefixtures("memory_store")

MakeBackend = Callable[..., storage.Backend]


def causes(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__
    return chain


# -- the real LVM driver against a volume group that does not exist -------------------
def test_lvm_with_missing_volume_group_raises_backend_setup_error_naming_it(
    make_backend: MakeBackend,
) -> None:
    # Not a skip: without lvm2 the driver would fail for another reason and prove nothing.
    assert shutil.which("vgs"), "lvm2's vgs must be installed on this host for this test"
    vg = f"csi-test-missing-{uuid.uuid4().hex[:12]}"
    with pytest.raises(storage.BackendSetupError) as caught:
        make_backend("lvm-missing", LVM_DRIVER, volume_group=vg, target_helper="lioadm")
    error = caught.value
    message = str(error)
    assert error.backend == "lvm-missing"
    assert "'lvm-missing'" in message
    assert vg in message
    assert "not found" in message
    assert not isinstance(error, processutils.ProcessExecutionError)
    assert "lvm-missing" not in storage.Backend.backends


def test_lvm_backend_name_is_free_again_after_failed_setup(make_backend: MakeBackend) -> None:
    assert shutil.which("vgs"), "lvm2's vgs must be installed on this host for this test"
    vg = f"csi-test-missing-{uuid.uuid4().hex[:12]}"
    for _ in range(2):  # the second attempt fails the same way, not "already configured"
        with pytest.raises(storage.BackendSetupError, match="not found"):
            make_backend("lvm-missing", LVM_DRIVER, volume_group=vg, target_helper="lioadm")
    assert "lvm-missing" not in storage.Backend.backends


# -- configuration mistakes ------------------------------------------------------------
def test_unknown_driver_option_is_refused_by_name(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    with pytest.raises(storage.BackendSetupError, match="file_volume_dir") as caught:
        make_backend("typo", FILE_DRIVER, file_volume_dir=str(tmp_path / "v"))
    assert caught.value.backend == "typo"
    assert "typo" not in storage.Backend.backends


@pytest.mark.parametrize(
    "path",
    [
        "no_such_package.drivers.Driver",
        "csi_driver.storage.drivers.file.NoSuchDriver",
    ],
)
def test_non_importable_volume_driver_is_refused_naming_the_path(
    make_backend: MakeBackend, path: str
) -> None:
    with pytest.raises(storage.BackendSetupError) as caught:
        make_backend("unimportable", path)
    assert path in str(caught.value)
    assert caught.value.backend == "unimportable"
    assert "unimportable" not in storage.Backend.backends


@pytest.mark.parametrize("name", ["DEFAULT", "backend_defaults"])
def test_reserved_configuration_group_names_are_refused(
    make_backend: MakeBackend, tmp_path: Path, name: str
) -> None:
    with pytest.raises(storage.BackendSetupError, match="reserved"):
        make_backend(name, FILE_DRIVER, file_volumes_dir=str(tmp_path / "v"))
    assert name not in storage.Backend.backends
    assert not (tmp_path / "v").exists()


def test_failed_setup_leaves_other_backends_working(
    make_backend: MakeBackend, tmp_path: Path
) -> None:
    good = make_backend("good", FILE_DRIVER, file_volumes_dir=str(tmp_path / "good"))
    with pytest.raises(storage.BackendSetupError):
        make_backend("bad", FILE_DRIVER, file_volumes_dir=str(tmp_path / "g"), bogus=1)
    vol = good.create_volume(size=1)
    assert (tmp_path / "good" / f"volume-{vol.id}").exists()
    assert set(storage.Backend.backends) >= {"good"}
    assert "bad" not in storage.Backend.backends
