"""Run part of the pytest suite inside a throw-away VM with Debian's kernel.

This machine's kernel has no device-mapper, LIO, iSCSI, NVMe/TCP or krbd; Debian's
kernel under qemu software emulation has them all. virtme-ng boots it with the host's root
shared read-only, ``e2e/vm/guest.sh`` prepares the storage stack and runs pytest, and
the JUnit XML, guest log and dmesg come back in the results directory.

    .venv/bin/python e2e/vm/run.py                  # tests/vm
    .venv/bin/python e2e/vm/run.py tests/vm/test_errors.py -k portal

Every run is bounded: ``timeout -k`` wraps the VM, the runner owns a process group of
its own and kills exactly that group on a hang, an interrupt or SIGTERM, so no qemu
process outlives it. The exit status is the guest's pytest status (124: timed out).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = REPO / "e2e" / "vm" / "guest.sh"
DEFAULT_RESULTS = REPO / "build" / "vm-results"
# A second 9p share of / that the guest mounts with cache=loose (see guest.sh).
CACHED_ROOT_SHARE = (
    "-fsdev local,id=hostcache,path=/,security_model=none,readonly=on,multidevs=remap "
    "-device virtio-9p-pci,fsdev=hostcache,mount_tag=hostcache"
)
KILL_GRACE = 15  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1  # prctl(2)


def newest_kernel(boot: Path = Path("/boot")) -> Path:
    """Debian's newest installed kernel whose modules are installed (it drifts)."""

    def version_key(path: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", path.name)]

    kernels = [
        k
        for k in boot.glob("vmlinuz-*")
        if Path("/lib/modules", k.name.removeprefix("vmlinuz-"), "modules.dep").exists()
    ]
    if not kernels:
        sys.exit(f"no /boot/vmlinuz-* with modules in /lib/modules: run `make vm-deps` ({boot})")
    return max(kernels, key=version_key)


def vng_command(args: argparse.Namespace, kernel: Path, results: Path) -> list[str]:
    """The whole guest run: vng under ``timeout -k`` so it ends even if we are gone."""
    # The guest's HOME is a throw-away directory: name the host's csi-sanity binary.
    sanity = os.environ.get("CSI_SANITY", "")
    guest = ["env", f"CSI_SANITY={sanity}", "bash", str(GUEST_SCRIPT), str(results), str(REPO),
             *args.pytest_args]  # fmt: skip
    command = [
        "timeout", "-k", str(KILL_GRACE), str(args.timeout),
        "vng", "--run", str(kernel), "--disable-kvm", "--cpus", str(args.cpus),
        "--memory", args.memory, "--rwdir", str(results), "--exec", shlex.join(guest),
    ]  # fmt: skip
    if not args.no_cache:
        command[-2:-2] = [f"--qemu-opts={CACHED_ROOT_SHARE}"]
    return command


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, to the run's own process group (vng, qemu, timeout)."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_group_gone(pgid: int) -> None:
    """Return once no process of the run's group is left: qemu may outlive vng (and
    timeout(1)) by a moment; one that lingers past the grace period is killed."""
    deadline = time.monotonic() + KILL_GRACE
    killed = False
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            if killed:
                print(f"vm: process group {pgid} is still there after SIGKILL", flush=True)
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 5
        time.sleep(0.2)


def die_with_parent() -> None:
    """In the child (``timeout``): get SIGTERM if the runner dies, even by SIGKILL;
    timeout(1) then stops the whole group, qemu included."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_guest(command: list[str], log_path: Path, timeout: int) -> int:
    """Run the VM in its own session, streaming its console to stdout and the log."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent,
    )  # fmt: skip

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    # A backstop behind timeout(1): if the group still lives past this, kill it.
    watchdog = threading.Timer(timeout + KILL_GRACE + 30, kill_group, (process,))
    watchdog.daemon = True
    watchdog.start()
    try:
        with log_path.open("wb") as log:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
                log.write(line)
        return process.wait()
    except KeyboardInterrupt:
        print("\nvm: interrupted; stopping the VM", flush=True)
        return 130
    finally:
        watchdog.cancel()
        if process.poll() is None:
            kill_group(process)
        wait_group_gone(process.pid)
        signal.signal(signal.SIGTERM, previous)


def summarize(junit: Path) -> str:
    """Counts from the JUnit file, plus what tests recorded (timings, error messages)."""
    if not junit.exists():
        return "no JUnit file came back from the guest"
    root = ET.parse(junit).getroot()  # noqa: S314 - written by our own guest
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    lines = [
        "vm: {tests} tests, {failures} failed, {errors} errors, {skipped} skipped".format(**totals)
    ]
    for case in root.iter("testcase"):
        for prop in case.iter("property"):
            lines.append(f"vm:   {case.get('name')}: {prop.get('name')} = {prop.get('value')}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="directory for junit.xml, guest.log, dmesg.log (emptied first)",
    )
    # The whole of tests/vm takes ~430 s here (~110 s of it the krbd test with its cluster).
    parser.add_argument("--timeout", type=int, default=2400, help="whole run, seconds")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--kernel", type=Path, help="default: newest /boot/vmlinuz-*")
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="skip the cache=loose 9p share (slower; sees host changes)",
    )
    parser.add_argument(
        "pytest_args",
        nargs="*",
        default=["tests/vm"],
        help="passed to pytest in the guest (default: tests/vm)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if shutil.which("vng", path=str(Path(sys.executable).parent)) is None:
        sys.exit("virtme-ng is not installed in this venv: run `make vm-deps`")
    kernel = args.kernel or newest_kernel()
    results = args.results.resolve()
    shutil.rmtree(results, ignore_errors=True)
    results.mkdir(parents=True)
    command = vng_command(args, kernel, results)
    print(f"vm: booting {kernel.name}; results in {results}", flush=True)
    started = time.monotonic()
    status = run_guest(command, results / "guest.log", args.timeout)
    elapsed = time.monotonic() - started
    if status in (124, 137) or status < 0:
        print(f"vm: timed out or killed (status {status}); limit {args.timeout}s", flush=True)
    print(summarize(results / "junit.xml"), flush=True)
    if status == 0 and not (results / "junit.xml").exists():
        status = 1  # a guest that ran no pytest has not passed
    print(f"vm: wall time {elapsed:.1f}s, exit status {status}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
