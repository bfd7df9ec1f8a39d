"""A real single-node Ceph cluster for tests: one mon, one mgr, one memstore OSD.

Why: Cinder's RBD driver can only be proven against a real cluster. This one runs
from Debian's packages in userspace: everything (configuration, keys, daemon data,
logs) lives under one directory, the daemons bind to 127.0.0.1 (or the given
address) on ports chosen at run time, run in the foreground (``-f``) as child
processes without systemd, and ``stop()`` ends every one of them (SIGTERM, then
SIGKILL after a timeout).

Two ways to use it:

- imported by tests (``tests/storage/rbd/conftest.py`` loads this file by path)::

      with CephCluster(directory) as cluster:
          cluster.create_pools("volumes")
          cluster.create_user("cinder", ["volumes"])

- as a script, for harnesses that need a cluster elsewhere (inside a VM guest)::

      python e2e/ceph/cluster.py start --dir DIR --pool volumes --user cinder
      python e2e/ceph/cluster.py stop --dir DIR

  ``start`` prints the cluster's description as JSON and leaves the daemons running;
  their pids are kept in ``DIR/cluster.json`` for ``stop``.

Standard library only, so the system Python can run it as well as the venv's.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

GIB = 1024**3
MON, MGR, OSD = "mon.a", "mgr.x", "osd.0"
# Stop order: the OSD and the mgr report to the mon, so the mon goes last.
_STOP_ORDER = ((OSD, MGR), (MON,))
_PORT_LOCK = Path(tempfile.gettempdir()) / "csi-driver-ceph-ports.lock"
# Children get SIGKILL when the test process dies, so no daemon outlives a run. util-linux's
# setpriv sets that up, not a preexec_fn: a preexec_fn makes Python fork() instead of
# vfork(), and a fork() of a process running gRPC threads (the etcd client, the plugin
# stubs) can abort in gRPC's fork handlers ("epoll_wait error: Bad file descriptor").
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


class ClusterError(RuntimeError):
    """The cluster failed to start or a command failed; the message says why, with logs."""


class CephCluster:
    """One throw-away cluster under ``directory`` (created if missing)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        timeout: float = 120.0,
        stop_timeout: float = 10.0,
        die_with_parent: bool = True,
        memstore_bytes: int = 4 * GIB,
        address: str = "127.0.0.1",
    ) -> None:
        self.dir = Path(directory).resolve()
        #: The IPv4 address every daemon binds to: loopback unless clients live elsewhere
        #: (pods of a test cluster reach the host at its bridge address).
        self.address = address
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        #: Daemons get SIGKILL when the process that started them dies (tests);
        #: the script's ``start`` turns this off so they outlive it.
        self.die_with_parent = die_with_parent
        self.memstore_bytes = memstore_bytes
        self.conf = self.dir / "ceph.conf"
        self.fsid = str(uuid.uuid4())
        self.mon_ports: tuple[int, int] = (0, 0)  # (v2, v1)
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self.timings: dict[str, float] = {}

    # -- description -------------------------------------------------------------------
    @property
    def mon_host(self) -> str:
        v2, v1 = self.mon_ports
        return f"[v2:{self.address}:{v2},v1:{self.address}:{v1}]"

    @property
    def admin_keyring(self) -> Path:
        return self.keyring_path("admin")

    def keyring_path(self, user: str) -> Path:
        """Where a client's keyring is; ``ceph.conf`` points every client there."""
        return self.dir / f"ceph.client.{user}.keyring"

    def describe(self) -> dict[str, Any]:
        """What a client needs, as JSON-ready data (also written to ``cluster.json``)."""
        return {
            "dir": str(self.dir),
            "conf": str(self.conf),
            "fsid": self.fsid,
            "mon_host": self.mon_host,
            "mon_ports": {"v2": self.mon_ports[0], "v1": self.mon_ports[1]},
            "admin_keyring": str(self.admin_keyring),
            "pids": {name: p.pid for name, p in self._processes.items()},
        }

    def _save_state(self) -> None:
        state = self.dir / "cluster.json"
        state.write_text(json.dumps(self.describe(), indent=2) + "\n")

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> CephCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> CephCluster:
        """Create and start the cluster; wait until HEALTH_OK with the OSD up.

        On any failure every daemon started so far is stopped before the error
        (which carries the daemon logs' tail) propagates.
        """
        started = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        return self

    def _start(self) -> None:
        for sub in ("mon", "mgr", "osd", "log", "run", "crash"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._make_keys()
        # Ports are picked and bound under a machine-wide lock, so two clusters
        # starting at once never pick the same ones.
        with _port_lock():
            self.mon_ports = _free_ports(2, self.address)
            self.conf.write_text(_conf_text(self))
            self._start_mon()
        self.ceph("osd", "set-require-min-compat-client", "mimic")
        self._start_mgr()
        self._start_osd()
        self._wait("the OSD to be up and in", self._osd_up)
        self._wait("HEALTH_OK", self._healthy)

    def _make_keys(self) -> None:
        mon_keyring = self.dir / "mon.keyring"  # outside mon data: mkfs wants that empty
        new_keyring(mon_keyring, "mon.", {"mon": "allow *"})
        caps = {"mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *"}
        new_keyring(self.admin_keyring, "client.admin", caps)
        _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(self.admin_keyring)])

    def _start_mon(self) -> None:
        monmap = self.dir / "monmap"
        _run(["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a", self.mon_host,
              str(monmap)])  # fmt: skip
        _run(["ceph-mon", "--mkfs", "-i", "a", "-c", str(self.conf), "--monmap", str(monmap),
              "--keyring", str(self.dir / "mon.keyring")])  # fmt: skip
        # ceph-mon --mkfs can fail and still exit 0: check what it should have made.
        if not (self.dir / "mon" / "ceph-a" / "keyring").exists():
            raise ClusterError(f"ceph-mon --mkfs made no monitor store\n{self.log_tail()}")
        self._spawn(MON, ["ceph-mon", "-f", "-i", "a"])
        self._wait("the monitor to listen", lambda: _listening(self.mon_ports[1], self.address))

    def _start_mgr(self) -> None:
        data = self.dir / "mgr" / "ceph-x"
        data.mkdir(exist_ok=True)
        self.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *",
                  "mds", "allow *", "-o", str(data / "keyring"))  # fmt: skip
        self._spawn(MGR, ["ceph-mgr", "-f", "-i", "x"])

    def _start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise ClusterError(f"expected OSD id 0 from 'ceph osd new', got {osd_id!r}")
        data = self.dir / "osd" / "ceph-0"
        data.mkdir(exist_ok=True)
        _run(["ceph-osd", "-i", "0", "-c", str(self.conf), "--mkfs", "--mkkey", "--osd-uuid",
              osd_uuid, "--no-mon-config"])  # fmt: skip
        self.ceph("auth", "add", "osd.0", "osd", "allow *", "mon", "allow profile osd",
                  "mgr", "allow profile osd", "-i", str(data / "keyring"))  # fmt: skip
        self._spawn(OSD, ["ceph-osd", "-f", "-i", "0"])

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "ab")  # noqa: SIM115 - owned by the child
        with out:
            self._processes[name] = subprocess.Popen(
                [*(DIE_WITH_PARENT if self.die_with_parent else ()), *argv, "-c", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._save_state()

    def stop(self) -> None:
        """Stop every daemon this object started: SIGTERM, then SIGKILL after a timeout."""
        started = time.monotonic()
        for group in _STOP_ORDER:
            running = {n: self._processes[n] for n in group if n in self._processes}
            _terminate({n: p.pid for n, p in running.items()}, self.stop_timeout, running)
            for name in running:
                del self._processes[name]
        if self.dir.exists():
            self._save_state()
        self.timings["stop"] = time.monotonic() - started

    @classmethod
    def stop_directory(cls, directory: str | os.PathLike[str], timeout: float = 10.0) -> None:
        """Stop the daemons of a cluster started by another process (``cluster.json``)."""
        state_file = Path(directory).resolve() / "cluster.json"
        state = json.loads(state_file.read_text())
        pids: dict[str, int] = state.get("pids", {})
        for group in _STOP_ORDER:
            ours = {n: pids[n] for n in group if n in pids and _runs_conf(pids[n], state["conf"])}
            _terminate(ours, timeout, {})
        state["pids"] = {}
        state_file.write_text(json.dumps(state, indent=2) + "\n")

    # -- waiting ---------------------------------------------------------------------------
    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until true; fail loudly (with the logs' tail) on timeout or death."""
        deadline = time.monotonic() + self.timeout
        last = ""
        while True:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise ClusterError(
                        f"{name} exited with {process.returncode} while waiting for {what}\n"
                        + self.log_tail()
                    )
            try:
                if ready():
                    return
            except ClusterError as exc:
                last = f"; last error: {exc}"
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out after {self.timeout:g}s waiting for {what}{last}\n"
                    + self._health_detail()
                    + self.log_tail()
                )
            time.sleep(0.25)

    def _osd_up(self) -> bool:
        stat = self.ceph_json("osd", "stat")
        return stat.get("num_up_osds", 0) >= 1 and stat.get("num_in_osds", 0) >= 1

    def _healthy(self) -> bool:
        return self.ceph_json("health").get("status") == "HEALTH_OK"

    def _health_detail(self) -> str:
        try:
            return "ceph health detail:\n" + self.ceph("health", "detail", timeout=5) + "\n"
        except ClusterError as exc:
            return f"ceph health detail failed: {exc}\n"

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of every daemon log, for error messages."""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts) or f"(no daemon logs under {self.dir / 'log'})"

    # -- commands ------------------------------------------------------------------------
    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        """Run the ``ceph`` command as client.admin; its standard output."""
        return self._tool("ceph", args, timeout)

    def ceph_json(self, *args: str) -> Any:
        return json.loads(self.ceph(*args, "--format=json") or "null")

    def rbd(self, *args: str, timeout: float = 60.0) -> str:
        """Run the ``rbd`` command as client.admin; its standard output."""
        return self._tool("rbd", args, timeout)

    def _tool(self, tool: str, args: Sequence[str], timeout: float) -> str:
        argv = [tool, "-c", str(self.conf), "-n", "client.admin", *args]
        if tool == "ceph":
            argv[1:1] = ["--connect-timeout", str(int(timeout))]
        return _run(argv, timeout=timeout)

    def create_pools(self, *names: str, pg_num: int = 8) -> None:
        """Replicated pools of size 1 (the conf's default), initialised for RBD.

        ``rbd pool init`` waits for the new placement groups to peer (~3 s), so the
        pools are initialised in parallel; then waits for HEALTH_OK.
        """
        started = time.monotonic()
        for name in names:
            self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num), "replicated")
        argv = ["rbd", "-c", str(self.conf), "-n", "client.admin", "pool", "init"]
        inits = {name: subprocess.Popen([*DIE_WITH_PARENT, *argv, name], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
                 for name in names}  # fmt: skip
        for name, init in inits.items():
            try:
                output, _ = init.communicate(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                init.kill()
                output, _ = init.communicate()
            if init.returncode != 0:
                raise ClusterError(f"rbd pool init {name} failed ({init.returncode}): {output}")
        self._wait(f"pools {', '.join(names)} to be healthy", self._healthy)
        self.timings[f"create pools {' '.join(names)}"] = time.monotonic() - started

    def delete_pool(self, name: str) -> None:
        self.ceph("osd", "pool", "delete", name, name, "--yes-i-really-really-mean-it")

    def create_user(self, name: str, pools: Iterable[str]) -> str:
        """A ``client.<name>`` with ``profile rbd`` caps on ``pools``; returns its key.

        Its keyring goes where ``ceph.conf`` sends clients (``keyring_path``).
        """
        caps = ", ".join(f"profile rbd pool={pool}" for pool in pools)
        keyring = self.keyring_path(name)
        self.ceph("auth", "get-or-create", f"client.{name}", "mon", "profile rbd", "osd", caps,
                  "mgr", caps, "-o", str(keyring))  # fmt: skip
        return key_of(keyring)

    def client_conf(self, path: Path, *, mon_host: str | None = None,
                    keyring: Path | None = None) -> Path:  # fmt: skip
        """A copy of ``ceph.conf`` for clients with another mon address or keyring."""
        path.write_text(_conf_text(self, mon_host=mon_host, keyring=keyring))
        return path


# -- helpers --------------------------------------------------------------------------------
def new_keyring(path: Path, entity: str, caps: dict[str, str] | None = None) -> str:
    """A keyring file holding a fresh key for ``entity`` (e.g. ``client.x``); its key.

    The cluster knows nothing of it until ``ceph auth add``: tests use such keyrings
    as the wrong key of a user, or the key of a user the cluster does not know.
    """
    argv = ["ceph-authtool", "--create-keyring", str(path), "--gen-key", "-n", entity]
    for daemon, cap in (caps or {}).items():
        argv += ["--cap", daemon, cap]
    _run(argv)
    return key_of(path)


def key_of(keyring: Path) -> str:
    """The base64 key of the first entity in a keyring file."""
    for line in keyring.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() == "key":
            return value.strip()
    raise ClusterError(f"no key in {keyring}")


def _conf_text(
    cluster: CephCluster, mon_host: str | None = None, keyring: Path | None = None
) -> str:
    """ceph.conf: loopback only, cephx on, and what makes one memstore OSD healthy."""
    d = cluster.dir
    settings = {
        "fsid": cluster.fsid,
        "mon host": mon_host or cluster.mon_host,
        "public addr": cluster.address,
        "ms bind ipv6": "false",
        "auth cluster required": "cephx",
        "auth service required": "cephx",
        "auth client required": "cephx",
        "auth allow insecure global id reclaim": "false",
        "run dir": f"{d}/run",
        "crash dir": f"{d}/crash",
        # one OSD: pools of size 1, no "no redundancy" or "too few OSDs" warnings
        "osd pool default size": "1",
        "osd pool default min size": "1",
        "osd pool default pg autoscale mode": "off",
        "osd crush chooseleaf type": "0",
        "mon allow pool size one": "true",
        "mon allow pool delete": "true",
        "mon warn on pool no redundancy": "false",
        # shared disks here can be less than 30 % free
        "mon data avail warn": "2",
        "mon data avail crit": "1",
        "osd objectstore": "memstore",
        "memstore device bytes": str(cluster.memstore_bytes),
        "mgr stats period": "1",
    }
    lines = ["[global]", *(f"{k} = {v}" for k, v in settings.items())]
    lines += ["", "[client]", f"keyring = {keyring or f'{d}/$cluster.$name.keyring'}"]
    for kind in ("mon", "mgr", "osd"):
        lines += ["", f"[{kind}]", f"{kind} data = {d}/{kind}/$cluster-$id",
                  f"keyring = {d}/{kind}/$cluster-$id/keyring",
                  f"log file = {d}/log/$name.log"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _run(argv: list[str], timeout: float = 60.0) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{' '.join(argv)} timed out after {timeout:.0f}s") from None
    except FileNotFoundError:
        raise ClusterError(
            f"{argv[0]} is not installed; run 'make ceph-deps' (Debian's Ceph packages)"
        ) from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()
        raise ClusterError(f"{' '.join(argv)} exited with {done.returncode}: {output}")
    return done.stdout


@contextlib.contextmanager
def _port_lock() -> Iterator[None]:
    with open(_PORT_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _free_ports(count: int, address: str = "127.0.0.1") -> tuple[int, ...]:
    """Ports nobody listens on now (held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((address, 0))
            ports.append(sock.getsockname()[1])
        return tuple(ports)


def free_port() -> int:
    """A loopback port nobody listens on (for a conf pointing at nothing)."""
    return _free_ports(1)[0]


def _listening(port: int, address: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((address, port)) == 0


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited


def _runs_conf(pid: int, conf: str) -> bool:
    """Whether ``pid`` is still a daemon of this cluster (pids get reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return conf.encode() in argv


def _terminate(
    pids: dict[str, int], timeout: float, children: dict[str, subprocess.Popen[bytes]]
) -> None:
    """SIGTERM every pid, wait up to ``timeout``, SIGKILL what is left, reap children."""

    def gone(name: str) -> bool:
        child = children.get(name)
        return child.poll() is not None if child else not _alive(pids[name])

    for name, pid in pids.items():
        if not gone(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while not all(gone(n) for n in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in pids.items():
        if not gone(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for child in children.values():
        child.wait()
    deadline = time.monotonic() + timeout
    while not all(gone(n) for n in pids) and time.monotonic() < deadline:
        time.sleep(0.1)


# -- script ----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("--dir", required=True, help="the cluster's directory")
    parser.add_argument("--pool", action="append", default=[], help="create this RBD pool")
    parser.add_argument(
        "--user", action="append", default=[], help="create client.USER (profile rbd on the pools)"
    )
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.action == "stop":
        CephCluster.stop_directory(args.dir)
        return 0
    cluster = CephCluster(args.dir, timeout=args.timeout, die_with_parent=False)
    try:
        cluster.start()
        if args.pool:
            cluster.create_pools(*args.pool)
        keys = {user: cluster.create_user(user, args.pool) for user in args.user}
    except BaseException as exc:
        cluster.stop()
        if isinstance(exc, ClusterError):
            print(f"ceph test cluster: {exc}", file=sys.stderr)
            return 1
        raise
    description = cluster.describe()
    description["users"] = {u: str(cluster.keyring_path(u)) for u in keys}
    description["timings"] = cluster.timings
    cluster._save_state()
    print(json.dumps(description, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
