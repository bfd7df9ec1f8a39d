"""A real etcd and a real Kubernetes control plane for tests, as plain processes.

Why: the plugin's etcd metadata store and its Kubernetes side can only be proven
against the real servers. Everything runs on 127.0.0.1 without systemd, containers or
root-only changes: Debian's ``etcd`` (package etcd-server) and the Kubernetes binaries
``make kube-binaries`` builds (kube-apiserver, kube-controller-manager, kube-scheduler,
kubectl; ``e2e/cluster/build-kubernetes.sh``).

- ``Etcd(data_dir)``: one member, plain HTTP, client and peer ports picked at the first
  ``start()``. ``stop()`` then ``start()`` restarts it on the same data and the same
  ports (clients reconnect to the endpoint they know).
- ``ControlPlane(state_dir, kube_bin, etcd)``: a PKI made with openssl (CA, apiserver
  serving certificate for IP:127.0.0.1/DNS:localhost, client certificates, service
  account key pair), an admin kubeconfig, and kube-apiserver on a port picked at the
  first ``start()``, storing under a key prefix of its own (``/registry-<id>``), so
  one etcd can serve several API servers and other clients. With ``controllers=True``
  kube-controller-manager and kube-scheduler are started too, once the API server is
  ready (started together with it, the controller manager exits on "forbidden").
  ``stop()`` then ``start()`` restarts them on the same ports and PKI.

Every process runs in its own session (process group), logs to a file next to its
data, is waited for with a timeout (the error carries the log's tail) and is stopped
with SIGTERM, then SIGKILL after a bound. By default a process gets SIGKILL when the
process that started it dies, so a killed test run leaves nothing behind.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``): a port
there is never handed out as the local port of an outgoing connection, so it is still
free when a stopped server starts again.

As a script (``make cluster-up`` / ``make cluster-down``)::

    python e2e/cluster/cluster.py up --state-dir e2e/.cluster --kube-bin DIR
    python e2e/cluster/cluster.py down --state-dir e2e/.cluster

``up`` starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler, leaves
them running, records their pids in ``STATE/state.json`` and writes ``STATE/env``
(``export KUBECONFIG=... KUBECTL=... ETCD_ENDPOINT=...``). The one etcd serves the API
server (under its prefix) and whatever uses ``ETCD_ENDPOINT``. ``down`` stops only the
recorded processes that still run from this state directory, then removes it.

Standard library only, so the system Python can run it as well as the venv's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import random
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

KUBE_VERSION = "v1.37.2"
#: Where ``make kube-binaries`` puts the binaries (the Makefile exports it as KUBE_BIN).
DEFAULT_KUBE_BIN = Path.home() / ".cache" / "csi-driver" / f"kubernetes-{KUBE_VERSION}" / "bin"
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_CIDR = "10.244.0.0/16"
_PR_SET_PDEATHSIG = 1
_FIRST_PORT = 20000  # below it: well-known ports and kubelet's 10248/10250/...


class ClusterError(RuntimeError):
    """A server failed to start or stop; the message says why, with its log's tail."""


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


# -- processes ----------------------------------------------------------------------------------
class Daemon:
    """One server process: its own session, output appended to ``log``, bounded stop."""

    def __init__(self, name: str, log: Path, *, die_with_parent: bool = True) -> None:
        self.name = name
        self.log = log
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        if self.running:
            raise ClusterError(f"{self.name} is already running (pid {self.pid})")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"=== {stamp} starting: {shlex.join(argv)}\n".encode())
            out.flush()
            try:
                self.process = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,
                )
            except OSError as exc:
                raise ClusterError(f"cannot run {argv[0]}: {exc}") from None

    def check_alive(self, waiting_for: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ClusterError(
                f"{self.name} exited with {self.process.returncode} while waiting for "
                f"{waiting_for}\n{self.tail()}"
            )

    def stop(self, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``, reap the process."""
        process = self.process
        if process is None:
            return
        terminate_group(process.pid, timeout, lambda: process.poll() is not None)
        process.wait()
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"--- {self.log}: {exc}"
        return f"--- {self.log} (last {len(text)} lines)\n" + "\n".join(text)


def wait_for(
    what: str,
    ready: Callable[[], bool],
    timeout: float,
    daemons: Sequence[Daemon],
) -> float:
    """Poll ``ready`` until true; the seconds it took. Fails on timeout or on a death."""
    started = time.monotonic()
    last = ""
    while True:
        for daemon in daemons:
            daemon.check_alive(what)
        try:
            if ready():
                return time.monotonic() - started
        except (OSError, ValueError, http.client.HTTPException) as exc:
            last = f"; last error: {exc}"
        if time.monotonic() - started > timeout:
            tails = "\n".join(d.tail() for d in daemons)
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}{last}\n{tails}")
        time.sleep(0.1)


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
        timeout: float = 120.0,
        stop_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        self.dir = Path(state_dir).resolve()
        self.bin = kube_bin_dir(kube_bin).resolve()
        self.etcd = etcd
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
        return f"https://127.0.0.1:{self.port}"

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
                self._make_pki()
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
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", f"--cert-dir={p}",
            # the default reconciler refuses a loopback advertise address
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

    # -- PKI ------------------------------------------------------------------------------------
    def _make_pki(self) -> None:
        """ECDSA P-256 keys (fast to make), certificates valid for a year, all by openssl."""
        tmp = self.dir / "pki.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        tmp.chmod(0o700)
        cnf = tmp / "openssl.cnf"
        cnf.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[ca]\nbasicConstraints = critical,CA:TRUE\n"
            "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        _new_key(tmp / "ca.key")
        _openssl("req", "-x509", "-new", "-key", tmp / "ca.key", "-subj",
                 "/CN=csi-driver-test-ca", "-days", "365", "-config", cnf, "-extensions", "ca",
                 "-out", tmp / "ca.crt")  # fmt: skip
        _new_key(tmp / "sa.key")
        _openssl("pkey", "-in", tmp / "sa.key", "-pubout", "-out", tmp / "sa.pub")
        sans = ["IP:127.0.0.1", "IP:10.96.0.1", "DNS:localhost", "DNS:kubernetes",
                "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local"]  # fmt: skip
        _new_cert(tmp, cnf, "apiserver", "/CN=kube-apiserver", "serverAuth", sans)
        for name, subject in (
            ("admin", "/O=system:masters/CN=admin"),
            ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client"),
            ("controller-manager", "/CN=system:kube-controller-manager"),
            ("scheduler", "/CN=system:kube-scheduler"),
        ):
            _new_cert(tmp, cnf, name, subject, "clientAuth")
        cnf.unlink()
        for leftover in tmp.glob("*.csr"):
            leftover.unlink()
        shutil.rmtree(self.pki, ignore_errors=True)
        tmp.rename(self.pki)

    def _write_kubeconfigs(self) -> None:
        """kubeconfigs (JSON is YAML) for admin, controller manager and scheduler."""
        for name in ("admin", "controller-manager", "scheduler"):
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "csi-test", "cluster": {
                    "server": self.server,
                    "certificate-authority": str(self.pki / "ca.crt")}}],
                "users": [{"name": name, "user": {
                    "client-certificate": str(self.pki / f"{name}.crt"),
                    "client-key": str(self.pki / f"{name}.key")}}],
                "contexts": [{"name": "csi-test", "context": {"cluster": "csi-test",
                                                              "user": name}}],
                "current-context": "csi-test",
            }  # fmt: skip
            path = self.dir / f"{name}.kubeconfig"
            path.write_text(json.dumps(config, indent=2) + "\n")
            path.chmod(0o600)


def _openssl(*args: str | Path) -> None:
    argv = ["openssl", *map(str, args)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ClusterError("openssl is not installed; run 'make etcd-deps'") from None
    if done.returncode != 0:
        raise ClusterError(f"{shlex.join(argv)} exited with {done.returncode}: {done.stderr}")


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


def _new_cert(
    directory: Path, cnf: Path, name: str, subject: str, usage: str, sans: Sequence[str] = ()
) -> None:
    key, csr, crt = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}.ext"
    lines = ["basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature",
             f"extendedKeyUsage = {usage}", "authorityKeyIdentifier = keyid",
             "subjectKeyIdentifier = hash"]  # fmt: skip
    if sans:
        lines.append(f"subjectAltName = {','.join(sans)}")
    ext.write_text("\n".join(lines) + "\n")
    _new_key(key)
    _openssl("req", "-new", "-key", key, "-subj", subject, "-config", cnf, "-out", csr)
    _openssl("x509", "-req", "-in", csr, "-CA", directory / "ca.crt",
             "-CAkey", directory / "ca.key", "-set_serial", str(random.getrandbits(63)),
             "-days", "365", "-extfile", ext, "-out", crt)  # fmt: skip
    ext.unlink()


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


def free_ports(count: int) -> tuple[int, ...]:
    """Distinct loopback ports nobody listens on, below the ephemeral range if possible."""
    low = _FIRST_PORT
    try:
        high = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) - 1
    except (OSError, ValueError, IndexError):
        high = 0
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _attempt in range(200 if high - low > 1000 else 0):
                port = random.randint(low, high)  # noqa: S311 - not for secrets
                if port in ports:
                    continue
                try:
                    sock.bind(("127.0.0.1", port))
                    break
                except OSError:
                    continue
            else:
                sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return tuple(ports)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so no server outlives a test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def terminate_group(pid: int, timeout: float, gone: Callable[[], bool]) -> None:
    """SIGTERM process group ``pid``; SIGKILL it if ``gone()`` is not true within ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        if gone():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)


# -- script: cluster-up / cluster-down ---------------------------------------------------------
STATE_FILE = "state.json"
ENV_FILE = "env"


def _ours(pid: int, state_dir: Path) -> bool:
    """Whether ``pid`` still runs one of our servers (its arguments name the state dir)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and any(str(state_dir).encode() in arg for arg in argv)


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


def _recorded_pids(state_dir: Path) -> dict[str, int]:
    try:
        return dict(json.loads((state_dir / STATE_FILE).read_text()).get("pids", {}))
    except (OSError, ValueError):
        return {}


def cluster_up(state_dir: Path, kube_bin: str | None, etcd: str | None, timeout: float) -> int:
    with _locked(state_dir):
        running = {n: p for n, p in _recorded_pids(state_dir).items() if _ours(p, state_dir)}
        if running:
            print(f"a cluster is already up in {state_dir} ({', '.join(running)}); "
                  f"'make cluster-down' stops it")  # fmt: skip
            return 0
        if state_dir.exists():
            cluster_down(state_dir, locked=True)  # leftovers of a dead cluster
        state_dir.mkdir(parents=True)
        etcd_server = Etcd(state_dir / "etcd", etcd=etcd, log=state_dir / "logs" / "etcd.log",
                           timeout=timeout, die_with_parent=False)  # fmt: skip
        plane = ControlPlane(state_dir, kube_bin, etcd_server, controllers=True,
                             timeout=timeout, die_with_parent=False)  # fmt: skip
        try:
            etcd_server.start()
            plane.start()
        except BaseException as exc:
            plane.stop()
            etcd_server.stop()
            shutil.rmtree(state_dir, ignore_errors=True)
            if isinstance(exc, ClusterError):
                print(f"cluster-up failed: {exc}", file=sys.stderr)
                return 1
            raise
        pids = {d.name: d.pid for d in [etcd_server.daemon, *plane.daemons] if d.pid}
        state = {
            "pids": pids,
            "etcd_endpoint": etcd_server.endpoint,
            "server": plane.server,
            "etcd_prefix": plane.etcd_prefix,
            "kubeconfig": plane.kubeconfig,
            "kubectl": plane.kubectl,
            "timings": {"etcd start": etcd_server.timings["start"], **plane.timings},
        }
        (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        env = {
            "KUBECONFIG": plane.kubeconfig,
            "KUBECTL": plane.kubectl,
            "ETCD_ENDPOINT": etcd_server.endpoint,
            "KUBECACHEDIR": plane.kube_cache_dir,
        }
        (state_dir / ENV_FILE).write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        )
        took = ", ".join(f"{k} {v:.1f} s" for k, v in state["timings"].items())
        print(f"cluster up: kube-apiserver {plane.server}, etcd {etcd_server.endpoint} ({took})\n"
              f"use it: source {state_dir / ENV_FILE}; $KUBECTL get ns")  # fmt: skip
        return 0


def cluster_down(state_dir: Path, *, locked: bool = False) -> int:
    if not locked:
        with _locked(state_dir):
            return cluster_down(state_dir, locked=True)
    if not state_dir.exists():
        print(f"no cluster in {state_dir}")
        return 0
    pids = _recorded_pids(state_dir)
    # Clients first, etcd last (the API server shuts down cleanly with etcd there).
    order = ["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"]
    for name in sorted(pids, key=lambda n: order.index(n) if n in order else -1):
        pid = pids[name]
        if _ours(pid, state_dir):
            terminate_group(pid, 15.0, lambda pid=pid: not _alive(pid))
            if _alive(pid):
                print(f"cluster-down: {name} (pid {pid}) did not exit", file=sys.stderr)
                return 1
    for mount in _mounts_under(state_dir):  # none expected; never leave one behind
        subprocess.run(["umount", "-l", mount], check=False)
    shutil.rmtree(state_dir)
    print(f"cluster down: stopped {', '.join(pids) or 'nothing'}; removed {state_dir}")
    return 0


def _mounts_under(directory: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    prefix = f"{directory}/"
    targets = [line.split()[4] for line in lines if len(line.split()) > 4]
    return sorted((t for t in targets if t.startswith(prefix) or t == str(directory)),
                  reverse=True)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("action", choices=("up", "down"))
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--kube-bin", help=f"default: $KUBE_BIN or {DEFAULT_KUBE_BIN}")
    parser.add_argument("--etcd", help="the etcd binary (default: $ETCD or etcd on PATH)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.action == "down":
        return cluster_down(state_dir)
    return cluster_up(state_dir, args.kube_bin, args.etcd, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
