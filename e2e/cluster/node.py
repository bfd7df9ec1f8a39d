"""The node of the single-node test cluster: containerd and kubelet on a CNI bridge.

Why: a CSI plugin is only proven on a real node (kubelet registers it, stages and
publishes volumes through it, pods mount them). This runs one as plain processes:
containerd v2 (``make containerd-binaries``) with Debian's runc and CNI plugins, and
the kubelet of ``make kube-binaries``, all state under the cluster's state directory.

The pod network is a Linux bridge, ``csi-e2e0`` with 10.244.0.1/24, made here *before*
the API server starts: the API server binds to 10.244.0.1, so pods (which have no
route off the bridge and no kube-proxy to reach a Service) reach it directly, and the
CNI ``bridge`` plugin reuses the bridge. No default route, no masquerading, no
iptables rule: pods reach the host's bridge address and each other, nothing else.

Host facts this copes with (see e2e/cluster/README.md): root lacks CAP_SYS_RESOURCE
(containerd clamps oom_score_adj), cgroup v1 (kubelet's failCgroupV1: false), ``/`` is
a private mount (the kubelet root is made an rshared bind mount so Bidirectional mount
propagation works), kubelet refuses a loopback node IP (the node is named by a host
name that resolves to 127.0.0.1, so the API server reaches kubelet on loopback).

What the node changes outside the state directory, and the teardown undoes: the
bridge; cgroups (all pods live below ``/csi-e2e`` in every hierarchy, kubelet's
``cgroupRoot``); kernel tunables kubelet sets at start (restored to the recorded
values); the few paths kubelet, containerd and libcni hard-code (``HOST_PATHS``: those
absent before ``up`` are removed, in the others only our entries).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pki
from images import Image, ImageError, archive_image_names
from processes import ClusterError, Daemon, alive, free_ports, terminate_group, wait_for

CONTAINERD_VERSION = "v2.4.2"
#: Where ``make containerd-binaries`` puts containerd, its runc shim and ctr.
DEFAULT_CONTAINERD_BIN = (
    Path.home() / ".cache" / "csi-driver" / f"containerd-{CONTAINERD_VERSION}" / "bin"
)
CONTAINERD_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr")
RUNC = Path("/usr/sbin/runc")  # Debian's runc
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
BRIDGE = "csi-e2e0"
BRIDGE_ADDRESS = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CNI_NETWORK = "csi-e2e"
#: kubelet's cgroupRoot: every pod's cgroup lies below it, in every hierarchy.
CGROUP_ROOT = "csi-e2e"
#: Paths kubelet, containerd or libcni create whatever their configuration says.
HOST_PATHS = (
    "/var/lib/kubelet",  # device-plugins/ (hard-coded)
    "/var/log/containers",  # a symlink per container (hard-coded)
    "/var/log/pods",
    "/var/lib/cni",  # libcni's result cache
    "/run/containerd",  # shim sockets (s/)
    "/run/netns",
    "/etc/cdi",
    "/var/run/cdi",
    "/opt/containerd",
    "/usr/libexec/kubernetes",  # flex volumes, unless volumePluginDir (set) says otherwise
)
#: Kernel tunables kubelet sets at start (protectKernelDefaults: false) and the bridge
#: plugin's forwarding switch: recorded before ``up``, restored by the teardown.
SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
)  # fmt: skip
_NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                     "node.cloudprovider.kubernetes.io/uninitialized")  # fmt: skip


class Plane(Protocol):
    """What the node needs of the control plane (cluster.ControlPlane)."""

    server: str
    pki: Path

    def get_json(self, path: str) -> dict[str, Any] | None: ...


def missing_containerd_binaries(containerd_bin: Path) -> list[str]:
    return [str(containerd_bin / c) for c in CONTAINERD_COMMANDS
            if not os.access(containerd_bin / c, os.X_OK)]  # fmt: skip


# -- the node ---------------------------------------------------------------------------------
class Node:
    """containerd + kubelet under ``state_dir``, registered as ``name`` with ``plane``."""

    def __init__(
        self,
        state_dir: Path,
        kube_bin: Path,
        containerd_bin: Path,
        plane: Plane,
        pause: Image,
        *,
        name: str | None = None,
        timeout: float = 120.0,
        stop_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.dir = state_dir
        self.kube_bin = kube_bin
        self.containerd_bin = containerd_bin
        self.plane = plane
        self.pause = pause
        self.name = name or loopback_host_name()
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.kubelet_dir = state_dir / "kubelet"
        self.containerd_dir = state_dir / "containerd"
        self.address = str(self.containerd_dir / "containerd.sock")
        logs = state_dir / "logs"
        self.containerd = Daemon("containerd", logs / "containerd.log",
                                 die_with_parent=die_with_parent)  # fmt: skip
        self.kubelet = Daemon("kubelet", logs / "kubelet.log", die_with_parent=die_with_parent)
        self.timings: dict[str, float] = {}

    @property
    def ctr(self) -> str:
        return str(self.containerd_bin / "ctr")

    @property
    def daemons(self) -> list[Daemon]:
        return [self.containerd, self.kubelet]

    def start(self, images: Iterable[Path] = ()) -> Node:
        """containerd, the images, kubelet; then wait until the node can run pods."""
        missing = missing_containerd_binaries(self.containerd_bin)
        missing += [str(p) for p in (self.kube_bin / "kubelet", RUNC, CNI_BIN_DIR / "bridge")
                    if not p.exists()]  # fmt: skip
        if missing:
            raise ClusterError(f"missing {', '.join(missing)}; run 'make containerd-binaries "
                               f"kube-binaries node-deps'")  # fmt: skip
        try:
            started = time.monotonic()
            self._start_containerd()
            self.timings["containerd start"] = time.monotonic() - started
            started = time.monotonic()
            self.import_images([self.pause.archive, *images])
            self.timings["image import"] = time.monotonic() - started
            started = time.monotonic()
            self._start_kubelet()
            wait_for(f"node {self.name} Ready", self._node_ready, self.timeout, self.daemons)
            self.timings["kubelet start to node Ready"] = time.monotonic() - started
            wait_for(f"node {self.name} without not-ready taints", self._untainted,
                     self.timeout, self.daemons)  # fmt: skip
            self.timings["kubelet start to untainted"] = time.monotonic() - started
            wait_for("service account default/default and configmap kube-root-ca.crt",
                     self._default_account, self.timeout, self.daemons)  # fmt: skip
            self.timings["kubelet start to schedulable"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop kubelet, then containerd: what ``start`` undoes when it fails. The full
        teardown (pods, shims, mounts, host state) is ``cluster.py down``'s."""
        for daemon in (self.kubelet, self.containerd):
            daemon.stop(self.stop_timeout)

    def import_images(self, archives: Iterable[Path]) -> list[str]:
        """Import OCI/docker archives into containerd's k8s.io namespace (CRI's)."""
        return import_images(self.ctr, self.address, archives)

    # -- containerd -------------------------------------------------------------------------
    def _start_containerd(self) -> None:
        d = self.containerd_dir
        for sub in ("root", "state", "tmp", "opt", "runc"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "ipam").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / f"10-{CNI_NETWORK}.conflist").write_text(
            json.dumps(cni_conflist(cni / "ipam"), indent=2) + "\n"
        )
        config = d / "config.toml"
        config.write_text(containerd_config(d, cni / "net.d", self.pause.ref,
                                            self.containerd_bin))  # fmt: skip
        # the shim is runtime_path; on PATH too, for whatever containerd runs by name
        env = {**os.environ, "PATH": f"{self.containerd_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}
        self.containerd.spawn([str(self.containerd_bin / "containerd"), f"--config={config}"],
                              env)  # fmt: skip
        wait_for("containerd to answer", self._containerd_up, self.timeout, [self.containerd])

    def _containerd_up(self) -> bool:
        if not Path(self.address).is_socket():
            return False
        done = subprocess.run([self.ctr, f"--address={self.address}", "version"],
                              capture_output=True, timeout=10, check=False)  # fmt: skip
        return done.returncode == 0

    # -- kubelet ----------------------------------------------------------------------------
    def _start_kubelet(self) -> None:
        p = self.plane.pki
        pki.add_client_cert(p, "kubelet", f"/O=system:nodes/CN=system:node:{self.name}")
        kubeconfig = self.dir / "kubelet.kubeconfig"
        pki.write_kubeconfig(kubeconfig, self.plane.server, p, "kubelet")
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        make_rshared(self.kubelet_dir)
        make_cgroup_root()
        port, healthz_port = free_ports(2)
        config = self.dir / "kubelet-config.json"  # JSON is YAML
        config.write_text(json.dumps(kubelet_config(self.dir, self.address, p / "ca.crt", port,
                                                    healthz_port), indent=2) + "\n")  # fmt: skip
        self.kubelet.spawn([
            str(self.kube_bin / "kubelet"), f"--config={config}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={self.kubelet_dir}",
            f"--cert-dir={self.kubelet_dir / 'pki'}", f"--hostname-override={self.name}",
            "--v=2",
        ])  # fmt: skip

    def _node_ready(self) -> bool:
        node = self.plane.get_json(f"/api/v1/nodes/{self.name}") or {}
        conditions = node.get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _untainted(self) -> bool:
        node = self.plane.get_json(f"/api/v1/nodes/{self.name}") or {}
        taints = node.get("spec", {}).get("taints") or []
        return not any(t.get("key") in _NOT_READY_TAINTS for t in taints)

    def _default_account(self) -> bool:
        return bool(self.plane.get_json("/api/v1/namespaces/default/serviceaccounts/default")
                    and self.plane.get_json(
                        "/api/v1/namespaces/default/configmaps/kube-root-ca.crt"))  # fmt: skip


def import_images(ctr: str, address: str, archives: Iterable[Path]) -> list[str]:
    """``ctr images import`` each archive into namespace k8s.io (CRI's); the names.

    An archive must name its images (OCI: annotation io.containerd.image.name, docker:
    RepoTags): a pod can only refer to an image by name, and there is no registry.
    """
    imported: list[str] = []
    for archive in dict.fromkeys(Path(a).resolve() for a in archives):
        try:
            names = archive_image_names(archive)
        except ImageError as exc:
            raise ClusterError(str(exc)) from None
        if not names:
            raise ClusterError(f"{archive} names no image (OCI annotation "
                               f"io.containerd.image.name or docker RepoTags)")  # fmt: skip
        done = subprocess.run([ctr, f"--address={address}", "--namespace=k8s.io", "images",
                               "import", "--all-platforms", str(archive)],
                              capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
        if done.returncode != 0:
            raise ClusterError(f"ctr images import {archive} exited with {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}")  # fmt: skip
        imported += names
    listed = subprocess.run([ctr, f"--address={address}", "--namespace=k8s.io", "images", "ls",
                             "--quiet"], capture_output=True, text=True, timeout=60,
                            check=False).stdout.split()  # fmt: skip
    missing = [n for n in imported if n not in listed and f"docker.io/{n}" not in listed]
    if missing:
        raise ClusterError(f"imported, yet containerd does not list {', '.join(missing)}")
    return imported


# -- configuration ----------------------------------------------------------------------------
def cni_conflist(ipam_dir: Path) -> dict[str, Any]:
    """bridge (the existing csi-e2e0, no gateway/masquerade duties) + host-local + portmap."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": False, "isDefaultGateway": False,
             "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                      "ranges": [[{"subnet": POD_SUBNET, "gateway": BRIDGE_ADDRESS}]]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }  # fmt: skip


def containerd_config(d: Path, cni_conf_dir: Path, sandbox_image: str, bin_dir: Path) -> str:
    """containerd's config (version 3), every path under ``d``; TOML strings via JSON."""
    q = json.dumps
    disabled = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs",
                "io.containerd.differ.v1.erofs"]  # fmt: skip
    cri_runtime = '[plugins."io.containerd.cri.v1.runtime"'
    return f"""# Written by e2e/cluster/node.py.
version = 3
root = {q(str(d / "root"))}
state = {q(str(d / "state"))}
temp = {q(str(d / "tmp"))}
imports = []
disabled_plugins = {q(disabled)}

[grpc]
  address = {q(str(d / "containerd.sock"))}

[ttrpc]
  address = {q(str(d / "containerd.sock.ttrpc"))}

[plugins."io.containerd.internal.v1.opt"]
  path = {q(str(d / "opt"))}

[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = {q(sandbox_image)}

{cri_runtime}]
  # Root lacks CAP_SYS_RESOURCE here: a negative oom_score_adj (kubelet asks -998 for
  # the sandbox) makes runc fail; clamp it to containerd's own score.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []

{cri_runtime}.containerd]
  default_runtime_name = "runc"

{cri_runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  runtime_path = {q(str(bin_dir / "containerd-shim-runc-v2"))}

{cri_runtime}.containerd.runtimes.runc.options]
  BinaryName = {q(str(RUNC))}
  Root = {q(str(d / "runc"))}
  SystemdCgroup = false

{cri_runtime}.cni]
  bin_dirs = [{q(str(CNI_BIN_DIR))}]
  conf_dir = {q(str(cni_conf_dir))}
"""


def kubelet_config(
    state_dir: Path, containerd_address: str, client_ca: Path, port: int, healthz_port: int
) -> dict[str, Any]:
    """KubeletConfiguration: loopback-only servers, cgroupfs under CGROUP_ROOT, no GC."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this host has cgroup v1; kubelet refuses it by default
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{containerd_address}",
        "address": "127.0.0.1",
        "port": port,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "readOnlyPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "Webhook"},
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(state_dir / "pod-logs"),
        # the disk is shared with everything else: evict only when it is really full
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        # never garbage-collect the hand-imported images (there is no registry to re-pull)
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "makeIPTablesUtilChains": False,  # else KUBE-* chains in the host's iptables
        "serializeImagePulls": False,
        # kubelet creates this directory (default /usr/libexec/kubernetes/...)
        "volumePluginDir": str(state_dir / "volume-plugins"),
    }  # fmt: skip


# -- host names -------------------------------------------------------------------------------
def loopback_host_name(hosts: Path = Path("/etc/hosts")) -> str:
    """A node name that resolves to 127.0.0.1: the host name, else another /etc/hosts name.

    kubelet refuses a loopback node IP, and the API server reaches kubelet (logs, exec)
    by the node's host name: with a name that resolves to 127.0.0.1 that stays on
    loopback, where kubelet listens.
    """
    names: list[str] = []
    with contextlib.suppress(OSError):
        for line in hosts.read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) > 1 and fields[0].startswith("127."):
                names += [n for n in fields[1:] if n not in names]
    preferred = socket.gethostname()
    candidates = sorted(names, key=lambda n: (n != preferred, n.startswith("localhost"), n))
    for name in candidates:
        if name.startswith("localhost") or not re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?",
                                                            name):  # fmt: skip
            continue
        with contextlib.suppress(OSError):
            if socket.gethostbyname(name).startswith("127."):
                return name
    raise ClusterError(
        f"no host name resolves to 127.0.0.1 in {hosts} (besides localhost): the node needs "
        f"one (kubelet refuses a loopback node IP; the API server must reach kubelet on "
        f"loopback). Add a line such as '127.0.0.1 {preferred.lower()}' to {hosts}"
    )


# -- the bridge -------------------------------------------------------------------------------
def bridge_exists() -> bool:
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def bridge_owner() -> str | None:
    """The state directory of the cluster that made the bridge (its interface alias)."""
    try:
        return Path(f"/sys/class/net/{BRIDGE}/ifalias").read_text().strip() or None
    except OSError:
        return None


def create_bridge(owner: Path) -> None:
    """csi-e2e0 with 10.244.0.1/24, up, its alias naming ``owner`` (the state directory).

    Fails if it exists: one node cluster per machine (fixed names and subnet).
    """
    if bridge_exists():
        holder = bridge_owner() or "an unknown state directory"
        raise ClusterError(
            f"network device {BRIDGE} exists: the node cluster of {holder} is up on this "
            f"machine ('cluster.py down --state-dir {holder}' takes it down; if that "
            f"directory is gone: 'ip link del {BRIDGE}')"
        )
    try:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "alias", str(owner))
        _run("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
    except BaseException:
        delete_bridge()
        raise


def delete_bridge() -> None:
    if bridge_exists():
        _run("ip", "link", "del", BRIDGE)


# -- mounts, loop devices -----------------------------------------------------------------------
def mounts() -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount, from /proc/self/mountinfo."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        separator = fields.index("-")
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        found.append((target, fields[separator + 1]))
    return found


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first."""
    prefix = f"{directory}/"
    targets = {t for t, _ in mounts() if t == str(directory) or t.startswith(prefix)}
    return sorted(targets, key=lambda t: (t.count("/"), t), reverse=True)


def make_rshared(directory: Path) -> None:
    """Bind-mount ``directory`` on itself and make it rshared (``/`` may be private)."""
    if str(directory) not in mounts_under(directory):
        _run("mount", "--bind", str(directory), str(directory))
    _run("mount", "--make-rshared", str(directory))


def unmount_under(directory: Path) -> list[str]:
    """Unmount everything at or below ``directory`` (lazily if busy); what is left."""
    for _round in range(10):
        targets = mounts_under(directory)
        if not targets:
            return []
        for target in targets:
            if subprocess.run(["umount", target], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    return mounts_under(directory)


def detach_loops_under(directory: Path) -> list[str]:
    """Detach loop devices whose backing file lies under ``directory``; those left."""
    left = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            path = backing.read_text().strip().removesuffix(" (deleted)")
            if path.startswith(f"{directory}/"):
                device = f"/dev/{backing.parts[3]}"
                if subprocess.run(["losetup", "-d", device], capture_output=True,
                                  check=False).returncode:  # fmt: skip
                    left.append(f"{device} ({path})")
    return left


# -- cgroups ----------------------------------------------------------------------------------
def cgroup_hierarchies() -> list[Path]:
    """Every mounted cgroup hierarchy (v1 controllers and the v2 one)."""
    return [Path(t) for t, fstype in mounts() if fstype in ("cgroup", "cgroup2")]


def make_cgroup_root() -> None:
    """/csi-e2e in every hierarchy (kubelet wants its cgroupRoot to exist)."""
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        root.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):  # v1 cpuset starts empty
            mine, parent = root / name, hierarchy / name
            if mine.exists() and not mine.read_text().strip():
                mine.write_text(parent.read_text())


def cgroup_processes(name: str) -> set[int]:
    pids: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        for directory, _dirs, _files in os.walk(hierarchy / name):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
    return pids


def kill_cgroup_processes(name: str, timeout: float = 10.0) -> set[int]:
    """SIGKILL every process in cgroup ``name`` (containers left behind); those left."""
    deadline = time.monotonic() + timeout
    while (pids := cgroup_processes(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    return cgroup_processes(name)


def remove_cgroups(names: Iterable[str]) -> list[str]:
    """rmdir cgroup ``name`` and its descendants (the empty ones) in every hierarchy."""
    left = []
    for hierarchy in cgroup_hierarchies():
        for name in names:
            top = hierarchy / name
            if not top.is_dir():
                continue
            for directory, _dirs, _files in os.walk(top, topdown=False):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            if top.exists():
                left.append(str(top))
    return left


# -- host record ------------------------------------------------------------------------------
def top_cgroups() -> list[str]:
    """Names of the top-level cgroups in any hierarchy."""
    names = {p.name for h in cgroup_hierarchies() for p in h.iterdir() if p.is_dir()}
    return sorted(names)


def host_record() -> dict[str, Any]:
    """What exists on the host before ``up``: the teardown removes only what is new."""
    sysctls = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls[key] = Path("/proc/sys", key).read_text().strip()
    return {"paths": [p for p in HOST_PATHS if os.path.lexists(p)], "sysctls": sysctls,
            "cgroups": top_cgroups()}  # fmt: skip


def restore_sysctls(recorded: dict[str, str]) -> list[str]:
    """Write back every recorded kernel tunable that changed; the ones that failed."""
    failed = []
    for key, value in recorded.items():
        path = Path("/proc/sys", key)
        try:
            if path.read_text().strip() != value:
                path.write_text(value + "\n")
        except OSError as exc:
            failed.append(f"{key}: {exc}")
    return failed


def clean_host_paths(recorded: Sequence[str], state_dir: Path) -> list[str]:
    """Remove the HOST_PATHS that were absent before ``up``; in the others, our entries."""
    left = []
    for path in map(Path, HOST_PATHS):
        if str(path) not in recorded:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.exists():
                if unmount_under(path):
                    left.append(str(path))
                    continue
                shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                left.append(str(path))
    logs = Path("/var/log/containers")
    if str(logs) in recorded and logs.is_dir():
        for link in logs.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(f"{state_dir}/"):
                link.unlink()
    results = Path("/var/lib/cni/results")
    if "/var/lib/cni" in recorded and results.is_dir():
        for entry in results.glob(f"{CNI_NETWORK}-*"):
            entry.unlink()
    return left


# -- stopping what runs -----------------------------------------------------------------------
def drain(kubectl: Sequence[str], env: dict[str, str], timeout: float) -> bool:
    """Delete every pod and wait (bounded) until they are gone: kubelet then tears down
    the sandboxes and their networks. Whether they all went."""
    delete = [*kubectl, "delete", "pods", "--all", "--all-namespaces", "--grace-period=1",
              "--wait=false", "--request-timeout=20s"]  # fmt: skip
    subprocess.run(delete, env=env, capture_output=True, timeout=60, check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = subprocess.run([*kubectl, "get", "pods", "--all-namespaces", "-o", "name",
                                 "--request-timeout=10s"], env=env, capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
        if listed.returncode == 0 and not listed.stdout.strip():
            return True
        time.sleep(1)
    return False


def shims_of(containerd_dir: Path) -> list[int]:
    """Pids of the containerd shims our containerd started (their -address names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0]).startswith(b"containerd-shim") and any(
            str(containerd_dir).encode() in arg for arg in argv
        ):
            found.append(int(entry.name))
    return found


def stop_pids(pids: Iterable[int], timeout: float, ours: Callable[[int], bool]) -> list[int]:
    """SIGTERM (SIGKILL after ``timeout``) each pid that is still ``ours``; those left."""
    left = []
    for pid in pids:
        if not ours(pid):
            continue
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid == pid:
            terminate_group(pid, timeout, lambda pid=pid: not alive(pid))
        else:  # not a group leader (a shim): the process alone
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not alive(pid):
                    break
        if alive(pid):
            left.append(pid)
    return left


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} exited with {done.returncode}: "
                           f"{done.stderr.strip()}")  # fmt: skip
