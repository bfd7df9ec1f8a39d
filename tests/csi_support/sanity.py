"""Runs csi-sanity (the CSI community's conformance suite) and reads its JUnit report.

The binary is built by ``make csi-sanity`` (pinned in mk/csi.mk) and named by the
CSI_SANITY environment variable that make exports. Every spec csi-sanity skips must
match an entry of ``EXPECTED_SKIPS``, which names the capability the spec needs
and why the plugin does not offer it; any other skip fails the test.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

GiB = 1024**3
TIMEOUT = 1800

#: (pattern over the spec's full name, why the plugin does not offer what it needs)
EXPECTED_SKIPS: tuple[tuple[str, str], ...] = (
    (r"ModifyVolume|volume attribute class",
     "MODIFY_VOLUME (VolumeAttributesClass): changing a volume's Cinder volume type "
     "(retype) in place is not offered"),
    (r"GroupController",
     "GROUP_CONTROLLER_SERVICE: volume group snapshots (Cinder group/consistency "
     "snapshots) are not offered"),
    (r"snapshot with accessibility requirement",
     "SNAPSHOT_ACCESSIBILITY_CONSTRAINTS: a snapshot is reachable wherever its backend "
     "is, so the plugin does not advertise separate snapshot topology"),
    (r"NodeGetStorageHealth|ControllerListVolumeHealth|ControllerGetVolumeHealth",
     "GET_STORAGE_HEALTH / LIST_VOLUME_HEALTH / controller GET_VOLUME_HEALTH (alpha in "
     "CSI 1.13): Cinder drivers report no per-volume health to poll"),
    (r"ListVolumes pagination should detect volumes added between pages",
     "not a capability: csi-sanity v5.6.0 marks this spec pending (PIt) itself"),
)  # fmt: skip


@dataclasses.dataclass
class Report:
    passed: list[str]
    failed: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    output: str
    #: The --ginkgo.focus of the run: specs outside it are skipped by request.
    focus: str | None = None

    def unexpected_skips(self) -> list[tuple[str, str]]:
        return [
            (name, why) for name, why in self.skipped
            if not any(re.search(pattern, name) for pattern, _ in EXPECTED_SKIPS)
            and (self.focus is None or re.search(self.focus, name))
        ]  # fmt: skip


def binary() -> str:
    """The csi-sanity make built. When make named it (CSI_SANITY) it must exist; a
    plain pytest run without it skips these tests, saying how to get it."""
    path = os.environ.get("CSI_SANITY")
    if path:
        if not os.access(path, os.X_OK):
            pytest.fail(f"CSI_SANITY={path} is not an executable csi-sanity")
        return path
    found = sorted(glob.glob(os.path.expanduser("~/.cache/csi-driver/go-bin/csi-sanity-*")))
    if not found:
        pytest.skip("csi-sanity is not built: run through `make test` (or `make csi-sanity`)")
    return found[-1]


def run(
    workdir: Path,
    endpoint: str,
    controller_endpoint: str | None = None,
    access_type: str = "mount",
    focus: str | None = None,
    size: int = GiB,
    expand_size: int = 2 * GiB,
    parameters: dict[str, str] | None = None,
    attach_limit: bool = True,
) -> Report:
    """One csi-sanity run against running plugin endpoints."""
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "volume-parameters.yaml"
    params.write_text("".join(f"{k}: {v}\n" for k, v in (parameters or {}).items()) or "{}\n")
    junit = workdir / "junit.xml"
    command = [
        binary(),
        f"--csi.endpoint={endpoint}",
        f"--csi.mountdir={workdir / 'mnt'}",
        f"--csi.stagingdir={workdir / 'stage'}",
        f"--csi.testvolumeaccesstype={access_type}",
        f"--csi.testvolumesize={size}",
        f"--csi.testvolumeexpandsize={expand_size}",
        f"--csi.testvolumeparameters={params}",
        f"--ginkgo.junit-report={junit}",
        "--ginkgo.no-color",
    ]
    if controller_endpoint:
        command.append(f"--csi.controllerendpoint={controller_endpoint}")
    if attach_limit:
        command.append("--csi.testnodevolumeattachlimit")
    if focus:
        command.append(f"--ginkgo.focus={focus}")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    output = proc.stdout + proc.stderr
    if not junit.exists():
        raise AssertionError(f"csi-sanity wrote no report (exit {proc.returncode}):\n{output}")
    report = _parse(junit, output)
    report.focus = focus
    if proc.returncode != 0 and not report.failed:
        report.failed.append(("csi-sanity", f"exit {proc.returncode}:\n{output[-4000:]}"))
    return report


def _parse(junit: Path, output: str) -> Report:
    report = Report([], [], [], output)
    for case in ET.parse(junit).iter("testcase"):  # noqa: S314 - csi-sanity's own report
        name = re.sub(r"^\[It\]\s*", "", case.get("name", ""))
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            report.failed.append((name, (failure.get("message") or "") + (failure.text or "")))
        elif skipped is not None:
            report.skipped.append((name, skipped.get("message") or ""))
        elif case.get("status") not in ("skipped", "pending"):
            report.passed.append(name)
    return report


def assert_clean(report: Report, minimum_passed: int) -> None:
    """No failure, no skip without a stated reason, and the suite really ran."""
    failures = "\n\n".join(f"{name}\n{text[:2000]}" for name, text in report.failed)
    assert not report.failed, f"{len(report.failed)} csi-sanity spec(s) failed:\n{failures}"
    unexpected = report.unexpected_skips()
    assert not unexpected, f"csi-sanity skipped specs with no stated reason: {unexpected}"
    assert len(report.passed) >= minimum_passed, (
        f"only {len(report.passed)} specs passed (expected at least {minimum_passed}):\n"
        + report.output[-3000:]
    )
