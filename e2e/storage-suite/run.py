"""Kubernetes' own storage suite (``e2e.test``, External.Storage) against the chart.

Why: csi-sanity checks the gRPC contract; this is the suite cluster operators trust,
with real pods, the CSI sidecars and the kubelet. ``make e2e-storage-suite`` runs it:

1. a single-node cluster of its own (``e2e/cluster/cluster.py up --node``, a temp
   state directory), the images ``make images`` exported, and the images the suite
   starts, built here: busybox (Debian's busybox-static) and agnhost (built from the
   Kubernetes module with ``e2e.test``), under the local names ``repo-list.yaml``
   gives the suite through ``KUBE_TEST_REPO_LIST``: nothing is pulled from anywhere;
2. the chart with ``values.yaml`` (the FileDriver), as the README installs it;
3. ``ginkgo`` running ``e2e.test`` with ``driver.yaml``, focused on External.Storage;
4. in ``--out``: ``junit.xml``, ``e2e.log``, ``summary.json`` (passed / failed /
   skipped, the failed specs' names) and, when a spec failed, ``logs/`` (every pod's
   containers, kubelet, containerd, the control plane);
5. the release uninstalled and the cluster taken down, whatever happened.

Exit status: 0 when no spec failed. ``--subset ci`` runs the fixed subset ``.ci/run``
uses (``subsets.py``); ``--dry-run`` lists the selected specs without a cluster.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

SUITE_DIR = Path(__file__).resolve().parent
E2E_DIR = SUITE_DIR.parent
sys.path[:0] = [p for p in (str(E2E_DIR / "tests"), str(SUITE_DIR)) if p not in sys.path]

from kube import Kubectl, Tool, save_cluster_logs  # noqa: E402
from release import (  # noqa: E402
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    cluster_overrides,
    read_env,
    wait_for_node_plugin,
)
from subsets import SKIPPED, SUBSETS, skip_pattern  # noqa: E402

DRIVER = SUITE_DIR / "driver.yaml"
VALUES = SUITE_DIR / "values.yaml"
FOCUS = r"External.Storage"
#: Where the suite's images are named (KUBE_TEST_REPO_LIST): a registry that does not
#: exist, so an image not built here fails to start instead of being fetched.
LOCAL_REGISTRY = "localhost/e2e"
#: Images the storage specs start, at the tags e2e.test v1.37 asks for
#: (test/utils/image/manifest.go). The specs run only shell commands in the nginx and
#: glibc-dns-testing images (a script on the volume, a loop, dd): busybox serves them.
BUSYBOX_BASED = {"busybox": "1.37.0-2", "nginx": "1.27.0-2", "glibc-dns-testing": "2.1.1"}
#: Host programs (with the libraries they load) added to an image, image path -> host
#: path: the multi-volume specs write with `dd oflag=nocache` in the glibc image, which
#: busybox's dd lacks; and busybox's sh runs its own applets before any in PATH, so
#: that image's /bin/sh is Debian's dash.
GNU_TOOLS = {"glibc-dns-testing": {"usr/local/bin/dd": "/bin/dd", "bin/sh": "/bin/dash"}}
AGNHOST_TAG = "2.66.1"
PAUSE_TAG = "3.10.2"
#: Where the suite's own image archives are kept (not in the directory `make images`
#: exports to, which `cluster.py up` imports whole).
IMAGES_CACHE = Path.home() / ".cache" / "csi-driver" / "images" / "storage-suite"


def _load(name: str, path: Path) -> ModuleType:
    """A stand-alone harness script as a module (once; dataclasses need it registered)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def repo_list() -> dict[str, str]:
    """Every registry the suite knows, pointed at the local name (see LOCAL_REGISTRY)."""
    fields = (
        "promoterE2eRegistry", "buildImageRegistry", "gcEtcdRegistry", "gcRegistry",
        "sigStorageRegistry", "privateRegistry", "dockerLibraryRegistry",
        "cloudProviderGcpRegistry",
    )  # fmt: skip
    listed = {field: LOCAL_REGISTRY for field in fields}
    listed["invalidRegistry"] = "invalid.localhost/invalid"
    return listed


def test_images(e2e_bin: Path, cache_dir: Path) -> list[tuple[Path, str]]:
    """(archive, reference) of busybox, agnhost and the busybox-based ones under their
    suite names."""
    images = _load("cluster_images", E2E_DIR / "cluster" / "images.py")
    built = [
        images.busybox_image(
            cache_dir,
            name=f"e2e-{name}",
            extra=_with_libraries(GNU_TOOLS.get(name, {})),
            ref=f"{LOCAL_REGISTRY}/{name}:{tag}",
        )
        for name, tag in BUSYBOX_BASED.items()
    ]
    agnhost = images.busybox_image(
        cache_dir,
        name="e2e-agnhost",
        extra={"agnhost": e2e_bin / "agnhost"},
        ref=f"{LOCAL_REGISTRY}/agnhost:{AGNHOST_TAG}",
        entrypoint=["/agnhost"],
        cmd=["pause"],
    )
    return [(image.archive, image.ref) for image in (*built, agnhost)]


def driver_on_nodes(kubectl: Kubectl, driver: str, keys: Sequence[str]) -> list[str]:
    """Why the suite cannot start yet ([] when it can): every node must list ``driver``
    in its CSINode and carry the topology ``keys`` as labels. The topology specs read
    the labels once, as they start; the node pod's readiness probe already waits for
    kubelet's confirmation, this says so plainly when it did not hold."""
    missing = []
    csinodes = {n["metadata"]["name"]: n for n in kubectl.get("csinodes", namespaced=False)}
    for node in kubectl.get("nodes", namespaced=False):
        name = node["metadata"]["name"]
        drivers = (csinodes.get(name, {}).get("spec") or {}).get("drivers") or []
        if not any(entry.get("name") == driver for entry in drivers):
            missing.append(f"node {name}: {driver} not in its CSINode")
        labels = node["metadata"].get("labels", {})
        missing += [f"node {name}: no label {key}" for key in keys if key not in labels]
    return missing


def _with_libraries(programs: dict[str, str]) -> dict[str, Path]:
    """Image path -> host file for each program and every shared library ldd says it
    loads (at the path it has on the host)."""
    files: dict[str, Path] = {}
    for image_path, program in programs.items():
        files[image_path] = Path(program)
        listed = subprocess.run(["ldd", program], capture_output=True, text=True, check=True)
        for line in listed.stdout.splitlines():
            words = line.split()
            path = words[2] if len(words) > 2 and words[1] == "=>" else words[0]
            if path.startswith("/"):
                files[path.lstrip("/")] = Path(path).resolve()
    return files


def ginkgo_command(
    e2e_bin: Path,
    env: dict[str, str],
    out: Path,
    procs: int,
    subset: str | None,
    dry_run: bool,
) -> list[str]:
    # ginkgo ORs its --focus flags: a subset's specs are each External.Storage ones.
    specs = SUBSETS.get(subset or "", [subset] if subset else [])
    focus = [f"{FOCUS}.*{spec}" for spec in specs] or [FOCUS]
    command = [
        str(e2e_bin / "ginkgo"),
        f"--procs={procs}",
        *(f"--focus={pattern}" for pattern in focus),
        f"--skip={skip_pattern()}",
        "--timeout=4h",
        "--no-color",
        f"--junit-report={out / 'junit.xml'}",
        "--silence-skips",
        *(["--dry-run", "-v"] if dry_run else []),
        str(e2e_bin / "e2e.test"),
        "--",
        f"--storage.testdriver={DRIVER}",
        "--provider=local",
        "--node-os-distro=debian",
        f"--report-dir={out}",
    ]
    if not dry_run:
        command += [
            f"--kubeconfig={env['KUBECONFIG']}",
            f"--kubectl-path={env['KUBECTL']}",
            # Specs look at volume directories below the kubelet's root on the node.
            f"--kubelet-root-dir={env['KUBELET_DIR']}",
        ]
    return command


def summarize(junit: Path) -> dict[str, Any]:
    """What the JUnit report says about the selected specs: counts, the failed ones'
    names, and why each skipped one was skipped (the suite's own reasons).

    ginkgo lists every spec of e2e.test; the ones the focus left out are "skipped"
    with the bare message "skipped" and are not counted.
    """
    root = ET.parse(junit).getroot()  # noqa: S314 (ginkgo's own report, written here)
    passed = 0
    failures: list[str] = []
    skips: dict[str, int] = {}
    for case in root.iter("testcase"):
        name, status = case.get("name", ""), case.get("status", "")
        if name.startswith("[") and "Suite]" in name.split("]", 1)[0] + "]":
            continue  # [SynchronizedBeforeSuite], [ReportAfterSuite], ...
        if status == "passed":
            passed += 1
        elif status in ("skipped", "pending"):
            skipped = case.find("skipped")
            message = (skipped.get("message", "") if skipped is not None else "").strip()
            if message in ("", "skipped"):
                continue  # not selected
            reason = message.removeprefix("skipped - ").strip()
            skips[reason] = skips.get(reason, 0) + 1
        else:  # failed, panicked, timedout, interrupted, aborted
            failures.append(f"{name} [{status}]")
    return {
        "passed": passed,
        "failed": len(failures),
        "skipped": sum(skips.values()),
        "failures": failures,
        "skip_reasons": dict(sorted(skips.items(), key=lambda item: -item[1])),
    }


def run(args: argparse.Namespace) -> int:
    out: Path = args.out.resolve()  # ginkgo runs e2e.test from the binary's directory
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        command = ginkgo_command(args.e2e_bin, {}, out, 1, args.subset, dry_run=True)
        return subprocess.run(command, check=False).returncode
    harness = Tool([sys.executable, str(E2E_DIR / "cluster" / "cluster.py")], dict(os.environ))
    state = Path(tempfile.mkdtemp(prefix="csi-ss-", dir="/tmp"))
    kubectl: Kubectl | None = None
    started = time.monotonic()
    failed = True
    try:
        harness.run("up", "--state-dir", str(state), "--node", "--kube-bin", args.kube_bin,
                    "--containerd-bin", args.containerd_bin, "--images", args.images,
                    timeout=900)  # fmt: skip
        env = read_env(state / "env")
        tool_env = {**os.environ, **env}
        kubectl = Kubectl(env["KUBECTL"], env["KUBECONFIG"], tool_env, "default")
        archives = test_images(args.e2e_bin, args.images_cache)
        harness.run("import", "--state-dir", str(state),
                    *(str(archive) for archive, _ in archives), timeout=900)  # fmt: skip
        ctr = Tool([env["CTR"], "--address", env["CONTAINERD_ADDRESS"], "-n", "k8s.io"], tool_env)
        pause = _load("cluster_images", E2E_DIR / "cluster" / "images.py").pause_image().ref
        ctr.run("images", "tag", "--force", pause, f"{LOCAL_REGISTRY}/pause:{PAUSE_TAG}")
        print(f"cluster up, test images imported in {time.monotonic() - started:.0f} s")
        helm = Tool([args.helm, f"--kubeconfig={env['KUBECONFIG']}"], tool_env)
        helm.run(
            "install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
            "--create-namespace", "-f", str(VALUES), *cluster_overrides(env),
            "--set", "crds.keepOnUninstall=false", "--wait", "--timeout", "5m",
            timeout=420,
        )  # fmt: skip
        wait_for_node_plugin(kubectl)
        print(f"chart installed after {time.monotonic() - started:.0f} s")
        info = yaml.safe_load(DRIVER.read_text())["DriverInfo"]
        missing = functools.partial(driver_on_nodes, kubectl, info["Name"], info["TopologyKeys"])
        waited = time.monotonic()
        kubectl.wait_for("the driver registered on every node", lambda: not missing(),
                         timeout=120, explain=lambda: "; ".join(missing()))  # fmt: skip
        print(f"driver registered on every node ({time.monotonic() - waited:.1f} s after install)")
        repo_list_file = out / "repo-list.yaml"
        repo_list_file.write_text(
            "".join(f"{key}: {value}\n" for key, value in repo_list().items())
        )
        command = ginkgo_command(args.e2e_bin, env, out, args.procs, args.subset, dry_run=False)
        print("running:", shlex.join(command), flush=True)
        suite_started = time.monotonic()
        with (out / "e2e.log").open("w") as log:
            done = subprocess.run(
                command,
                env={**tool_env, "KUBE_TEST_REPO_LIST": str(repo_list_file)},
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        summary = summarize(out / "junit.xml") if (out / "junit.xml").exists() else None
        seconds = round(time.monotonic() - suite_started)
        if summary is None:
            print(f"e2e.test wrote no JUnit report (exit {done.returncode}): see {out}/e2e.log")
        else:
            summary.update(
                seconds=seconds, subset=args.subset or "all", procs=args.procs,
                kubernetes=args.kube_version, date=time.strftime("%Y-%m-%d"),
                skipped_by_runner=list(SKIPPED),
            )  # fmt: skip
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(
                f"storage suite: {summary['passed']} passed, {summary['failed']} failed, "
                f"{summary['skipped']} skipped in {seconds} s (ginkgo exit {done.returncode})"
            )
            for name in summary["failures"]:
                print(f"  FAILED {name}")
        failed = done.returncode != 0 or summary is None or bool(summary["failed"])
        return 1 if failed else 0
    finally:
        if failed:
            save_cluster_logs(kubectl, state, out / "logs")
            print(f"component logs: {out / 'logs'}")
        harness.run("down", "--state-dir", str(state), timeout=900)
        print(f"done in {time.monotonic() - started:.0f} s; reports in {out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--e2e-bin", type=Path, required=True,
                        help="directory of e2e.test, ginkgo and agnhost")  # fmt: skip
    parser.add_argument("--kube-bin", required=True)
    parser.add_argument("--kube-version", required=True)
    parser.add_argument("--containerd-bin", required=True)
    parser.add_argument("--images", required=True, help="image archives to import (make images)")
    parser.add_argument("--images-cache", type=Path, default=IMAGES_CACHE)
    parser.add_argument("--helm", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument(
        "--subset",
        help=f"a named subset ({', '.join(sorted(SUBSETS))}) or a regular expression "
        "matching the specs to run",
    )
    parser.add_argument("--dry-run", action="store_true")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
