"""Server processes of the test harnesses: start, wait for, stop; free ports.

Why a module of its own: the control plane (``cluster.py``) and the node (``node.py``)
run their servers the same way. Every process runs in its own session (process group),
logs to a file, is waited for with a timeout (the error carries the log's tail) and is
stopped with SIGTERM, then SIGKILL after a bound. By default a process gets SIGKILL when
the process that started it dies, so a killed test run leaves nothing behind.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``): a port
there is never handed out as the local port of an outgoing connection, so it is still
free when a stopped server starts again.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import random
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_FIRST_PORT = 20000  # below it: well-known ports and kubelet's 10248/10250/...


class ClusterError(RuntimeError):
    """A server failed to start or stop; the message says why, with its log's tail."""


class Daemon:
    """One server process: its own session, output appended to ``log``, bounded stop."""

    def __init__(self, name: str, log: Path, *, die_with_parent: bool = True) -> None:
        self.name = name
        self.log = log
        self.die_with_parent = die_with_parent
        self.process: subprocess.Popen[bytes] | None = None
        #: Called right after each start (e.g. to record the pid before waiting on it).
        self.on_spawn: Callable[[Daemon], None] | None = None

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
        if self.on_spawn is not None:
            self.on_spawn(self)

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


def free_ports(count: int, host: str = "127.0.0.1") -> tuple[int, ...]:
    """Distinct ports nobody listens on at ``host``, below the ephemeral range if possible."""
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
                    sock.bind((host, port))
                    break
                except OSError:
                    continue
            else:
                sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
    return tuple(ports)


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so no server outlives a test run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes (but this one) with ``text`` in an argument: what
    a test checks is gone once a harness stopped."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if alive(int(entry.name)) and any(text.encode() in arg for arg in argv):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited)."""
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
