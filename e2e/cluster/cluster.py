"""A real etcd, Kubernetes control plane and (optionally) node for tests, as processes.

Why: the plugin's etcd metadata store and its Kubernetes side can only be proven
against the real servers. Without the node everything runs on 127.0.0.1 without
systemd, containers or root-only changes: Debian's ``etcd`` (package etcd-server) and
the Kubernetes binaries ``make kube-binaries`` builds (``build-kubernetes.sh``).

- ``Etcd(data_dir)``: one member, plain HTTP, client and peer ports picked at the first
  ``start()``. ``stop()`` then ``start()`` restarts it on the same data and the same
  ports (clients reconnect to the endpoint they know).
- ``ControlPlane(state_dir, kube_bin, etcd, address=...)``: a PKI made with openssl
  (``pki.py``), an admin kubeconfig, and kube-apiserver on ``address`` (127.0.0.1 by
  default) and a port picked at the first ``start()``, storing under a key prefix of
  its own (``/registry-<id>``), so one etcd can serve several API servers and other
  clients. With ``controllers=True`` kube-controller-manager and kube-scheduler are
  started too, once the API server is ready (started together with it, the controller
  manager exits on "forbidden"). ``stop()`` then ``start()`` restarts them on the same
  ports and PKI.
- The node (``node.py``, root only): containerd + kubelet on the bridge csi-e2e0; the
  API server then binds to the bridge's 10.244.0.1 so pods reach it.

Processes are run by ``processes.py`` (own session, log file, bounded waits and stops;
by default SIGKILL when the starting process dies, so a killed test run leaves nothing).

As a script (``make cluster-up`` / ``make cluster-down``)::

    python e2e/cluster/cluster.py up --state-dir S [--kube-bin DIR]
                                     [--node [--containerd-bin DIR] [--images DIR]...]
    python e2e/cluster/cluster.py import --state-dir S ARCHIVE...
    python e2e/cluster/cluster.py down --state-dir S

``up`` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler (with
``--node``: the bridge first, then containerd and kubelet, the pause image and every
``*.tar`` of ``--images`` imported; it returns once the node is Ready, untainted and
the default service account exists), leaves them running, records their pids and what
the host looked like in ``S/state.json`` and writes ``S/env`` (``export KUBECONFIG=...
KUBECTL=... ETCD_ENDPOINT=... KUBE_API_HOST=... KUBE_API_PORT=... CLUSTER_STATE=...``;
with the node also CONTAINERD_ADDRESS, CTR, KUBELET_DIR, NODE_NAME, HOST_DATA_DIR).
``import`` loads image archives into the running node (containerd namespace k8s.io).
``down`` deletes the pods (bounded wait), stops only the recorded processes that still
run from this state directory (and our containerd's shims), kills what is left in the
pods' cgroups, unmounts everything below S, detaches loop devices backed by files
below S, removes the bridge, the node's cgroups and the host paths it created, restores
the kernel settings kubelet changed, then removes S. A failed ``up`` does the same.

Standard library only, so the system Python can run it as well as the venv's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import http.client
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# The sibling modules (this directory is not a package: tests load this file by path).
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import images
import node as node_mod
import pki
from processes import (  # ClusterError, alive, processes_naming: tests use them from here
    ClusterError,
    Daemon,
    alive,
    free_ports,
    wait_for,
)
from processes import processes_naming as processes_naming  # re-exported for the tests

_alive = alive  # the name the tests know

KUBE_VERSION = "v1.37.2"
#: Where ``make kube-binaries`` puts the binaries (the Makefile exports it as KUBE_BIN).
DEFAULT_KUBE_BIN = Path.home() / ".cache" / "csi-driver" / f"kubernetes-{KUBE_VERSION}" / "bin"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.244.0.0/16"


# -- locating the programs ----------------------------------------------------------------
def kube_bin_dir(kube_bin: str | os.PathLike[str] | None = None) -> Path:
    """The Kubernetes binaries' directory: the argument, $KUBE_BIN, or make's default."""
    return Path(kube_bin or os.environ.get("KUBE_BIN") or DEFAULT_KUBE_BIN).expanduser()


def missing_kube_binaries(kube_bin: str | os.PathLike[str] | None = None) -> list[str]:
    """The paths of the Kubernetes commands this harness runs that are not there."""
    directory = kube_bin_dir(kube_bin)
    return [str(directory / c) for c in KUBE_COMMANDS if not os.access(directory / c, os.X_OK)]


def find_etcd(etcd: str | os.PathLike[str] | None = None) -> Path | None:
    """The etcd server binary: the argument, $ETCD, or ``etcd`` on PATH (Debian: /usr/bin)."""
    for candidate in (etcd, os.environ.get("ETCD"), shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def find_etcdctl() -> Path | None:
    """etcdctl (Debian package etcd-client): $ETCDCTL or on PATH."""
    for candidate in (os.environ.get("ETCDCTL"), shutil.which("etcdctl"), "/usr/bin/etcdctl"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


# -- etcd -----------------------------------------------------------------------------------
class _Server:
    """``with server:`` starts it and stops it at the end of the block."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Etcd(_Server):
    """A one-member etcd on 127.0.0.1 over plain HTTP, data in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        etcd: str | os.PathLike[str] | None = None,
        log: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = find_etcd(etcd)
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        log_path = Path(log) if log else self.data_dir.with_name(self.data_dir.name + ".log")
        self.daemon = Daemon("etcd", log_path.resolve(), die_with_parent=die_with_parent)
        self.client_port = 0
        self.peer_port = 0
        #: Seconds from process start to healthy, per start (and the last stop's).
        self.timings: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:20417`` (fixed at the first start)."""
        if not self.client_port:
            raise ClusterError("etcd has not been started yet: no endpoint")
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.daemon.pid

    @property
    def running(self) -> bool:
        return self.daemon.running

    def start(self) -> Etcd:
        """Start (or restart, same ports and data) and wait until healthy; no-op if running."""
        if self.running:
            return self
        if self.binary is None:
            raise ClusterError("etcd is not installed; run 'make etcd-deps' (Debian etcd-server)")
        if not self.client_port:
            self.client_port, self.peer_port = free_ports(2)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # etcd warns otherwise
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            str(self.binary),
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--initial-cluster-state=new",  # ignored once the data directory has a member
            "--heartbeat-interval=100",
            "--election-timeout=500",  # one member: elects itself this long after start
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        # etcd reads ETCD_* variables as flags (and warns on unknown ones, e.g. ETCD_ENDPOINT).
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        started = time.monotonic()
        self.daemon.spawn(argv, env)
        try:
            wait_for("etcd to be healthy", self._health, self.timeout, [self.daemon])
        except BaseException:
            self.daemon.stop(self.stop_timeout)
            raise
        self.timings["start"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop etcd (SIGTERM, SIGKILL after ``stop_timeout``); the data stays."""
        started = time.monotonic()
        self.daemon.stop(self.stop_timeout)
        self.timings["stop"] = time.monotonic() - started

    def healthy(self) -> bool:
        """Whether /health says true (a leader, no alarm); False when it does not answer."""
        try:
            return self._health()
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def _health(self) -> bool:
        return bool(_http_json(f"{self.endpoint}/health", timeout=2).get("health") == "true")

    # -- a minimal client over the gRPC gateway (JSON, base64 keys/values) ------------------
    def put(self, key: str, value: str) -> None:
        self._kv("put", {"key": _b64(key), "value": _b64(value)})

    def get(self, key: str) -> str | None:
        kvs = self._kv("range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def count(self, prefix: str) -> int:
        """How many keys start with ``prefix``."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = {"key": _b64(prefix), "range_end": _b64(end), "count_only": True}
        return int(self._kv("range", body).get("count", 0))

    def _kv(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        return _http_json(f"{self.endpoint}/v3/kv/{op}", body=body, timeout=10)


# -- the control plane ------------------------------------------------------------------------
class ControlPlane(_Server):
    """kube-apiserver (and optionally controller manager + scheduler) under ``state_dir``."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        kube_bin: str | os.PathLike[str] | None,
        etcd: Etcd | str,
        *,
        controllers: bool = False,
        etcd_prefix: str | None = None,
        address: str = "127.0.0.1",
        timeout: float = 120.0,
        stop_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.dir = Path(state_dir).resolve()
        self.bin = kube_bin_dir(kube_bin).resolve()
        self.etcd = etcd
        #: Where kube-apiserver listens (and what every client dials): 127.0.0.1, or the
        #: node's bridge address so pods reach it (``node.BRIDGE_ADDRESS``).
        self.address = address
        self.controllers = controllers
        self.etcd_prefix = etcd_prefix or f"/registry-{uuid.uuid4().hex[:12]}"
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.pki = self.dir / "pki"
        logs = self.dir / "logs"
        self.apiserver = Daemon("kube-apiserver", logs / "kube-apiserver.log",
                                die_with_parent=die_with_parent)  # fmt: skip
        self.controller_manager = Daemon("kube-controller-manager",
                                         logs / "kube-controller-manager.log",
                                         die_with_parent=die_with_parent)  # fmt: skip
        self.scheduler = Daemon("kube-scheduler", logs / "kube-scheduler.log",
                                die_with_parent=die_with_parent)  # fmt: skip
        self.port = 0
        self.controller_manager_port = 0
        self.scheduler_port = 0
        self.timings: dict[str, float] = {}

    # -- description ----------------------------------------------------------------------
    @property
    def etcd_endpoint(self) -> str:
        return self.etcd.endpoint if isinstance(self.etcd, Etcd) else self.etcd

    @property
    def server(self) -> str:
        if not self.port:
            raise ClusterError("the API server has not been started yet: no address")
        return f"https://{self.address}:{self.port}"

    @property
    def kubeconfig(self) -> str:
        """The admin kubeconfig (user ``admin``, group system:masters)."""
        return str(self.dir / "admin.kubeconfig")

    @property
    def kubectl(self) -> str:
        return str(self.bin / "kubectl")

    @property
    def kube_cache_dir(self) -> str:
        """kubectl's discovery cache (KUBECACHEDIR), so it does not write to ~/.kube."""
        return str(self.dir / "kube-cache")

    @property
    def daemons(self) -> list[Daemon]:
        return [self.apiserver, self.controller_manager, self.scheduler]

    @property
    def running(self) -> bool:
        return self.apiserver.running

    def kubectl_env(self) -> dict[str, str]:
        """The environment to run kubectl (or a client) as admin against this server."""
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "KUBECACHEDIR": self.kube_cache_dir}

    def run_kubectl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run kubectl as admin; its standard output (ClusterError if it fails and ``check``)."""
        done = subprocess.run([self.kubectl, *args], env=self.kubectl_env(), capture_output=True,
                              text=True, timeout=timeout, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise ClusterError(f"kubectl {shlex.join(args)} exited with {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}")  # fmt: skip
        return done.stdout

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        """Start (or restart on the same port and PKI) and wait for /readyz; no-op if running.

        With ``controllers``, the controller manager and the scheduler start after that
        and are waited for (/healthz). On failure what was started here is stopped.
        """
        if self.running:
            return self
        missing = missing_kube_binaries(self.bin)
        if missing:
            raise ClusterError(f"missing {', '.join(missing)}; run 'make kube-binaries'")
        try:
            if not self.port:
                self.port, self.controller_manager_port, self.scheduler_port = free_ports(3)
            if not (self.pki / "ca.crt").exists():
                started = time.monotonic()
                sans = dict.fromkeys(["IP:127.0.0.1", f"IP:{self.address}", "IP:10.96.0.1",
                                      "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                                      "DNS:kubernetes.default.svc",
                                      "DNS:kubernetes.default.svc.cluster.local"])  # fmt: skip
                pki.make_pki(self.pki, list(sans))
                self.timings["pki"] = time.monotonic() - started
            self._write_kubeconfigs()
            started = time.monotonic()
            self.apiserver.spawn(self._apiserver_argv())
            wait_for("kube-apiserver /readyz", self._readyz, self.timeout, [self.apiserver])
            self.timings["apiserver start"] = time.monotonic() - started
            if self.controllers:
                started = time.monotonic()
                self._start_controllers()
                self.timings["controllers start"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop scheduler, controller manager, then the API server; PKI and data stay."""
        started = time.monotonic()
        for daemon in (self.scheduler, self.controller_manager, self.apiserver):
            daemon.stop(self.stop_timeout)
        self.timings["stop"] = time.monotonic() - started

    def ready(self) -> bool:
        """Whether /readyz answers ok (as admin); False when it does not answer."""
        try:
            return self._readyz()
        except (OSError, ValueError, http.client.HTTPException):
            return False

    def _readyz(self) -> bool:
        url, tls = f"{self.server}/readyz", self._admin_tls()
        try:
            with urllib.request.urlopen(url, timeout=3, context=tls) as answer:  # noqa: S310
                return bool(answer.status == 200 and answer.read().strip() == b"ok")
        except urllib.error.HTTPError:
            return False  # 500 while post-start hooks run

    def get_json(self, path: str) -> dict[str, Any] | None:
        """GET ``path`` as admin: the object, or None if it is not there (404)."""
        request = urllib.request.Request(self.server + path)  # noqa: S310 - our own https URL
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._admin_tls()) as answer:  # noqa: S310
                result = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return result if isinstance(result, dict) else None

    def _admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def _start_controllers(self) -> None:
        p, kc = self.pki, self.dir
        cm = kc / "controller-manager.kubeconfig"
        self.controller_manager.spawn([
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={cm}", f"--authentication-kubeconfig={cm}",
            f"--authorization-kubeconfig={cm}",
            "--bind-address=127.0.0.1", f"--secure-port={self.controller_manager_port}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
            f"--cluster-signing-cert-file={p / 'ca.crt'}",
            f"--cluster-signing-key-file={p / 'ca.key'}",
            "--allocate-node-cidrs=true", f"--cluster-cidr={CLUSTER_CIDR}",
            "--node-cidr-mask-size=24", f"--service-cluster-ip-range={SERVICE_CIDR}",
            # it creates this directory (default /usr/libexec/kubernetes/...)
            f"--flex-volume-plugin-dir={self.dir / 'flexvolume'}",
            "--v=1",
        ])  # fmt: skip
        sc = kc / "scheduler.kubeconfig"
        self.scheduler.spawn([
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={sc}", f"--authentication-kubeconfig={sc}",
            f"--authorization-kubeconfig={sc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.scheduler_port}",
            "--leader-elect=false", "--v=1",
        ])  # fmt: skip
        daemons = [self.apiserver, self.controller_manager, self.scheduler]
        for name, port in (("kube-controller-manager", self.controller_manager_port),
                           ("kube-scheduler", self.scheduler_port)):  # fmt: skip
            wait_for(f"{name} /healthz", lambda port=port: _healthz(port), self.timeout, daemons)

    def _apiserver_argv(self) -> list[str]:
        p = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            f"--bind-address={self.address}", f"--advertise-address={self.address}",
            f"--secure-port={self.port}", f"--cert-dir={p}",
            # the default reconciler refuses a loopback advertise address; without
            # kube-proxy the `kubernetes` Service would lead nowhere anyway
            "--endpoint-reconciler-type=none",
            f"--etcd-servers={self.etcd_endpoint}", f"--etcd-prefix={self.etcd_prefix}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--v=1",
        ]  # fmt: skip

    def _write_kubeconfigs(self) -> None:
        """kubeconfigs for admin, controller manager and scheduler (on ``server``)."""
        for name in ("admin", "controller-manager", "scheduler"):
            pki.write_kubeconfig(self.dir / f"{name}.kubeconfig", self.server, self.pki, name)


# -- helpers ----------------------------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _http_json(url: str, *, body: Any = None, timeout: float = 5.0) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)  # noqa: S310 - our own http:// URL
    with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
        result = json.loads(answer.read() or b"{}")
    return result if isinstance(result, dict) else {}


def _healthz(port: int) -> bool:
    """A component's /healthz (self-signed serving certificate, anonymous access allowed)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3, context=context) as answer:
            return bool(answer.read().strip() == b"ok")
    except urllib.error.HTTPError:
        return False


# -- script: cluster-up / cluster-down ---------------------------------------------------------
STATE_FILE = "state.json"
ENV_FILE = "env"
#: How long ``down`` waits for kubelet to delete every pod before it forces them.
DRAIN_TIMEOUT = 60.0


def _ours(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` still runs one of our servers (its arguments name the state dir)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return alive(pid) and any(str(state_dir).encode() in arg for arg in argv)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialises up/down on one state directory (flock on its parent, no lock file)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_state(state_dir: Path) -> dict[str, Any]:
    try:
        state = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    """state.json, replaced atomically: ``down`` trusts whatever it finds there."""
    tmp = state_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.rename(state_dir / STATE_FILE)


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    return dict(_read_state(state_dir).get("pids", {}))


def cluster_up(
    state_dir: Path,
    kube_bin: str | None,
    etcd: str | None,
    timeout: float,
    *,
    node: bool = False,
    containerd_bin: Path | None = None,
    image_archives: Sequence[Path] = (),
) -> int:
    """Start the cluster in ``state_dir`` and leave it running (see the module's doc)."""
    with _locked(state_dir):
        running = {n: p for n, p in _recorded_pids(state_dir).items() if _ours(p, state_dir)}
        if running:
            print(f"a cluster is already up in {state_dir} ({', '.join(running)}); "
                  f"'make cluster-down' stops it")  # fmt: skip
            return 0
        if state_dir.exists():
            cluster_down(state_dir, locked=True)  # leftovers of a dead cluster
        state_dir.mkdir(parents=True)
        state: dict[str, Any] = {"pids": {}}
        try:
            _up(state_dir, state, kube_bin, etcd, timeout, node, containerd_bin, image_archives)
        except BaseException as exc:
            print(f"cluster-up failed, tearing down what it started: {exc}", file=sys.stderr)
            cluster_down(state_dir, locked=True)
            if isinstance(exc, ClusterError | images.ImageError):
                return 1
            raise
        took = ", ".join(f"{k} {v:.1f} s" for k, v in state["timings"].items())
        print(
            f"cluster up: kube-apiserver {state['server']}, etcd {state['etcd_endpoint']}"
            + (f", node {state['node']['name']} Ready" if node else "")
            + f" ({took})\nuse it: source {state_dir / ENV_FILE}; $KUBECTL get nodes,ns"
        )
        return 0


def _up(
    state_dir: Path,
    state: dict[str, Any],
    kube_bin: str | None,
    etcd: str | None,
    timeout: float,
    with_node: bool,
    containerd_bin: Path | None,
    image_archives: Sequence[Path],
) -> None:
    """Start everything, recording in ``state`` (and state.json) as it goes."""
    address = "127.0.0.1"
    if with_node:
        # Everything ``down`` must undo is recorded before it is done.
        pause = images.pause_image()
        name = node_mod.loopback_host_name()
        state["node"] = {"name": name, "bridge": False, "host": node_mod.host_record()}
        _write_state(state_dir, state)
        node_mod.create_bridge(owner=state_dir)
        state["node"]["bridge"] = True
        _write_state(state_dir, state)
        address = node_mod.BRIDGE_ADDRESS
    etcd_server = Etcd(state_dir / "etcd", etcd=etcd, log=state_dir / "logs" / "etcd.log",
                       timeout=timeout, die_with_parent=False)  # fmt: skip
    plane = ControlPlane(state_dir, kube_bin, etcd_server, controllers=True, address=address,
                         timeout=timeout, die_with_parent=False)  # fmt: skip
    daemons = [etcd_server.daemon, *plane.daemons]

    def record(daemon: Daemon | None = None) -> None:
        """Write every pid to state.json as soon as it runs: ``down`` finds it there."""
        state["pids"].update({d.name: d.pid for d in daemons if d.pid})
        _write_state(state_dir, state)

    for daemon in daemons:
        daemon.on_spawn = record
    etcd_server.start()
    plane.start()
    state.update({
        "etcd_endpoint": etcd_server.endpoint, "server": plane.server,
        "etcd_prefix": plane.etcd_prefix, "kubeconfig": plane.kubeconfig,
        "kubectl": plane.kubectl, "kube_cache_dir": plane.kube_cache_dir,
        "timings": {"etcd start": etcd_server.timings["start"], **plane.timings},
    })  # fmt: skip
    record()
    env = {
        "KUBECONFIG": plane.kubeconfig,
        "KUBECTL": plane.kubectl,
        "ETCD_ENDPOINT": etcd_server.endpoint,
        "KUBECACHEDIR": plane.kube_cache_dir,
        "KUBE_API_HOST": plane.address,
        "KUBE_API_PORT": str(plane.port),
        "CLUSTER_STATE": str(state_dir),
    }
    if with_node:
        worker = node_mod.Node(state_dir, plane.bin, Path(containerd_bin or
                                                          node_mod.DEFAULT_CONTAINERD_BIN),
                               plane, pause, name=state["node"]["name"], timeout=timeout,
                               die_with_parent=False)  # fmt: skip
        daemons += worker.daemons
        for daemon in worker.daemons:
            daemon.on_spawn = record
        host_data = state_dir / "host-data"
        host_data.mkdir()
        state["node"].update({
            "kubelet_dir": str(worker.kubelet_dir), "containerd_dir": str(worker.containerd_dir),
            "containerd_address": worker.address, "ctr": worker.ctr,
            "pause_image": pause.ref,
        })  # fmt: skip
        worker.start(image_archives)
        state["timings"].update(worker.timings)
        env.update({
            "CONTAINERD_ADDRESS": worker.address, "CTR": worker.ctr,
            "KUBELET_DIR": str(worker.kubelet_dir), "NODE_NAME": worker.name,
            "HOST_DATA_DIR": str(host_data),
        })  # fmt: skip
    record()
    (state_dir / ENV_FILE).write_text(
        "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
    )


def cluster_down(state_dir: Path, *, locked: bool = False) -> int:
    """Stop what ``up`` recorded and undo what it changed; 1 if something is left."""
    if not locked:
        with _locked(state_dir):
            return cluster_down(state_dir, locked=True)
    if not state_dir.exists():
        print(f"no cluster in {state_dir}")
        return 0
    state = _read_state(state_dir)
    pids: dict[str, int] = dict(state.get("pids", {}))
    worker: dict[str, Any] | None = state.get("node")
    # The node's host-wide traces (bridge, cgroups, sysctls, host paths) are ours to clear
    # unless the bridge names another state directory: that cluster is up.
    owner = node_mod.bridge_owner() if node_mod.bridge_exists() else str(state_dir)
    if worker and owner != str(state_dir):
        print(f"cluster-down: the node on this machine is {owner}'s; leaving its bridge, "
              f"cgroups and host paths alone", file=sys.stderr)  # fmt: skip
        worker = None
    problems: list[str] = []

    def ours(pid: int) -> bool:
        return _ours(pid, state_dir)

    def stop(*names: str) -> None:
        for name in names:
            pid = pids.pop(name, None)
            if pid and node_mod.stop_pids([pid], 15.0, ours):
                problems.append(f"{name} (pid {pid}) did not exit")

    if worker:
        # Nothing may re-create a pod (DaemonSets) or place one while the node drains.
        stop("kube-scheduler", "kube-controller-manager")
        if "kubectl" in state and all(ours(pids.get(n, 0)) for n in ("kube-apiserver",
                                                                       "kubelet")):  # fmt: skip
            kubectl = [state["kubectl"], f"--kubeconfig={state['kubeconfig']}"]
            env = {**os.environ, "KUBECACHEDIR": state["kube_cache_dir"]}
            if not node_mod.drain(kubectl, env, DRAIN_TIMEOUT):
                print(f"cluster-down: pods still there after {DRAIN_TIMEOUT:g} s; "
                      f"killing their containers", file=sys.stderr)  # fmt: skip
        stop("kubelet")
        left = node_mod.kill_cgroup_processes(node_mod.CGROUP_ROOT)
        problems += [f"process {pid} in cgroup /{node_mod.CGROUP_ROOT}" for pid in left]
        containerd_dir = Path(worker.get("containerd_dir", state_dir / "containerd"))
        shims = node_mod.shims_of(containerd_dir)
        problems += [f"shim {p}" for p in node_mod.stop_pids(shims, 10.0, ours)]
        stop("containerd")
    # Clients first, etcd last (the API server shuts down cleanly with etcd there).
    order = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    stop(*sorted(pids, key=lambda n: order.index(n) if n in order else -1))
    problems += [f"mount {m}" for m in node_mod.unmount_under(state_dir)]
    problems += [f"loop device {d}" for d in node_mod.detach_loops_under(state_dir)]
    if worker:
        host = worker.get("host", {})
        if worker.get("bridge"):
            try:
                node_mod.delete_bridge()
            except ClusterError as exc:
                problems.append(str(exc))
        created = {node_mod.CGROUP_ROOT, "kubepods", "k8s.io"} - set(host.get("cgroups", []))
        problems += [f"cgroup {c}" for c in node_mod.remove_cgroups(sorted(created))]
        problems += [f"sysctl {s}" for s in node_mod.restore_sysctls(host.get("sysctls", {}))]
        problems += node_mod.clean_host_paths(host.get("paths", list(node_mod.HOST_PATHS)),
                                              state_dir)  # fmt: skip
    if node_mod.mounts_under(state_dir):
        problems.append(f"{state_dir} kept: something is still mounted below it")
    else:
        shutil.rmtree(state_dir)
    if problems:
        print("cluster-down: left behind: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"cluster down: stopped {', '.join(state.get('pids', {})) or 'nothing'}; "
          f"removed {state_dir}")  # fmt: skip
    return 0


def cluster_import(state_dir: Path, archives: Sequence[Path]) -> int:
    """Import image archives into the running node's containerd (namespace k8s.io)."""
    worker = _read_state(state_dir).get("node")
    if not worker or not _ours(_recorded_pids(state_dir).get("containerd", 0), state_dir):
        print(f"no node cluster is up in {state_dir} ('make cluster-up')", file=sys.stderr)
        return 1
    try:
        names = node_mod.import_images(worker["ctr"], worker["containerd_address"], archives)
    except ClusterError as exc:
        print(f"cluster import: {exc}", file=sys.stderr)
        return 1
    print("imported: " + ", ".join(names))
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", choices=("up", "down", "import"))
    parser.add_argument("archives", nargs="*", type=Path, help="import: image archives")
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--kube-bin", help=f"default: $KUBE_BIN or {DEFAULT_KUBE_BIN}")
    parser.add_argument("--etcd", help="the etcd binary (default: $ETCD or etcd on PATH)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--node", action="store_true", help="up: also containerd + kubelet")
    parser.add_argument("--containerd-bin", type=Path,
                        help=f"default: {node_mod.DEFAULT_CONTAINERD_BIN}")  # fmt: skip
    parser.add_argument("--images", type=Path, action="append", default=[],
                        help="up --node: import every *.tar archive in this directory")  # fmt: skip
    args = parser.parse_intermixed_args(argv)  # archives may follow the options
    state_dir = args.state_dir.resolve()
    if args.action == "import":
        return cluster_import(state_dir, args.archives)
    if args.archives:
        parser.error(f"{args.action} takes no archives")
    if args.action == "down":
        return cluster_down(state_dir)
    signal.signal(signal.SIGTERM, _interrupted)  # a killed `up` tears down what it started
    archives = []
    for directory in args.images:
        if not directory.is_dir():
            parser.error(f"--images {directory}: not a directory")
        archives += sorted(directory.resolve().glob("*.tar"))
    try:
        return cluster_up(state_dir, args.kube_bin, args.etcd, args.timeout, node=args.node,
                          containerd_bin=args.containerd_bin, image_archives=archives)  # fmt: skip
    except KeyboardInterrupt:
        return 130  # torn down already (cluster_up)


if __name__ == "__main__":
    sys.exit(main())
