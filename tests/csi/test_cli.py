"""The ``csi-driver`` command line: ``--version`` and the usage errors of the kubelet
options, refused (exit 2, the option named) before anything starts."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import csi_driver
from csi_driver import cli
from csi_driver.csi_pb import SPEC_VERSION

INSTALLED = f"cinder {metadata.version('cinder')}, os-brick {metadata.version('os-brick')}"
EXPECTED_VERSION = f"csi-driver {csi_driver.__version__} (CSI spec {SPEC_VERSION}; {INSTALLED})"


def test_version_needs_no_endpoint_nor_config() -> None:
    done = subprocess.run([sys.executable, "-m", "csi_driver.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    assert (done.returncode, done.stdout, done.stderr) == (0, EXPECTED_VERSION + "\n", "")
    assert EXPECTED_VERSION.startswith("csi-driver 0.1.0 (CSI spec v1.13.0; cinder 2")


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    return int(exited.value.code or 0)


BASE = ["--endpoint", "unix:///tmp/never/csi.sock", "--config", "/nonexistent.yaml"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param(["--mode", "controller", "--registration-dir", "/tmp"],
                     "--registration-dir: kubelet registers node plugins",
                     id="controller-registers"),
        pytest.param(["--kubelet-endpoint", "/x/csi.sock"],
                     "--kubelet-endpoint only means something with --registration-dir",
                     id="kubelet-endpoint-alone"),
        pytest.param(["--health-address", "127.0.0.1"],
                     "--health-address and --health-probe-timeout need --health-port",
                     id="health-address-alone"),
        pytest.param(["--health-port", "70000"], "argument --health-port: '70000' is not a port",
                     id="port-out-of-range"),
        pytest.param(["--health-port", "9808", "--health-probe-timeout", "0"],
                     "--health-probe-timeout: a number of seconds above 0", id="probe-timeout-0"),
    ],
)  # fmt: skip
def test_usage_errors(extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert _exit_code([*BASE, *extra]) == 2
    assert message in capsys.readouterr().err


def test_registration_over_tcp_needs_the_endpoint_kubelet_sees(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")

    code = cli.main(["--endpoint", "tcp://127.0.0.1:10000", "--mode", "node", "--config",
                     str(config), "--registration-dir", str(tmp_path)])  # fmt: skip

    assert code == 2
    assert "kubelet reaches CSI plugins on a unix socket" in capsys.readouterr().err


def test_config_is_repeatable_and_errors_name_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = tmp_path / "configmap.yaml"
    first.write_text("backends:\n  - {name: lvm, driver: x.LVMDriver}\n")
    second = tmp_path / "secret.yaml"
    second.write_text("backends:\n  - {name: ceph, options: {rbd_user: csi}}\n")

    code = cli.main(["--endpoint", "unix:///tmp/never/csi.sock", "--config", str(first),
                     "--config", str(second)])  # fmt: skip

    assert code == 2
    assert f"csi-driver: {second}: backends[0].driver: missing" in capsys.readouterr().err
