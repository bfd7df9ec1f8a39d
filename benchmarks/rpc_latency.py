"""RPC latency and throughput of CreateVolume+DeleteVolume pairs, and the plugin's RSS.

A real controller process (``python -m csi_driver.cli``, log level INFO as shipped) on
the embedded default: FileDriver volumes and the SQLite store with its durable
defaults. One plugin serves, in order:

- idle: VmRSS once Probe says ready, before any call;
- empty calls: p50/p90/p99 of ControllerGetCapabilities, the cost of a call without
  storage work (the floor under each RPC of a pair);
- sequential: ``--pairs`` CreateVolume (1 GiB) + DeleteVolume pairs one at a time
  after a warm-up; p50/p90/p99 of the pair and of each RPC;
- concurrent: for each of ``--clients`` (8 and 32), that many threads, each with its
  own gRPC channel, each making ``--pairs-per-client`` pairs; pairs/s over the wall
  time and p50/p90/p99 of the pair;
- 1 000 volumes: VmRSS after ``--volumes`` volumes were created (and kept) by 8 clients.

``--profile DIR`` also records the sequential phase with py-spy (when installed; raw
collapsed stacks) and ``strace -c -f -w`` into DIR (``--profile-tools`` picks one), for
finding where a pair spends its time; off by default.
Prints ONE JSON line; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from csi_support.plugin import (  # noqa: E402
    PluginProcess,
    file_backend,
    rss_mib,
    running,
    write_config,
)
from csi_support.requests import create_request  # noqa: E402

from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc  # noqa: E402

TIMEOUT = 120.0


def _percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99 in ms (nearest rank; p99 of fewer than 100 samples is the maximum)."""
    ordered = sorted(seconds)

    def rank(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99)}


class Client:
    """One client: its own channel, its own controller stub."""

    def __init__(self, plugin: PluginProcess) -> None:
        self.channel = grpc.insecure_channel(f"unix:{plugin.socket}")
        self.controller = csi_pb2_grpc.ControllerStub(self.channel)

    def create(self, name: str) -> str:
        answer = self.controller.CreateVolume(create_request(name), timeout=TIMEOUT)
        return answer.volume.volume_id

    def delete(self, volume_id: str) -> None:
        self.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=TIMEOUT
        )

    def pair(self, name: str) -> tuple[float, float]:
        """Seconds of the CreateVolume and of the DeleteVolume."""
        started = time.perf_counter()
        volume_id = self.create(name)
        created = time.perf_counter()
        self.delete(volume_id)
        return created - started, time.perf_counter() - created

    def close(self) -> None:
        self.channel.close()


def empty_calls(plugin: PluginProcess, calls: int = 500) -> dict[str, float]:
    """p50/p90/p99 of ControllerGetCapabilities, one at a time: what any call costs here
    (client, gRPC both ways, the plugin's logging and tracking) without storage work,
    the floor under each half of a pair."""
    client = Client(plugin)
    request = csi_pb2.ControllerGetCapabilitiesRequest()
    times: list[float] = []
    for index in range(calls + 50):
        started = time.perf_counter()
        client.controller.ControllerGetCapabilities(request, timeout=TIMEOUT)
        if index >= 50:
            times.append(time.perf_counter() - started)
    client.close()
    return _percentiles(times)


def sequential(plugin: PluginProcess, pairs: int, warmup: int) -> dict[str, Any]:
    client = Client(plugin)
    creates: list[float] = []
    deletes: list[float] = []
    for index in range(warmup + pairs):
        create, delete = client.pair(f"seq-{index}")
        if index >= warmup:
            creates.append(create)
            deletes.append(delete)
    client.close()
    return {
        "pairs": pairs,
        "pair_ms": _percentiles([c + d for c, d in zip(creates, deletes, strict=True)]),
        "create_ms": _percentiles(creates),
        "delete_ms": _percentiles(deletes),
    }


def _in_threads(
    plugin: PluginProcess, clients: int, work: Callable[[Client, int], list[float]]
) -> tuple[list[float], float]:
    """``work(client, index)`` in ``clients`` threads started together; every sample they
    returned and the wall seconds from the start to the last thread's end."""
    connected = [Client(plugin) for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    samples: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            samples[index] = work(connected[index], index)
        except BaseException as error:  # reported after the join
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for client in connected:
        client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]!r}")
    return [s for per_client in samples for s in per_client], wall


def pairs_in_threads(
    plugin: PluginProcess, clients: int, pairs_per_client: int, prefix: str
) -> tuple[list[float], float]:
    """``clients`` clients (a thread and a channel each) making ``pairs_per_client`` pairs
    at once: the seconds of each pair, and the wall seconds of them all."""

    def work(client: Client, index: int) -> list[float]:
        return [sum(client.pair(f"{prefix}-{index}-{n}")) for n in range(pairs_per_client)]

    return _in_threads(plugin, clients, work)


def concurrent(plugin: PluginProcess, clients: int, pairs_per_client: int) -> dict[str, Any]:
    times, wall = pairs_in_threads(plugin, clients, pairs_per_client, f"c{clients}")
    return {
        "clients": clients,
        "pairs": len(times),
        "pairs_per_s": round(len(times) / wall, 1),
        "pair_ms": _percentiles(times),
    }


def fill(plugin: PluginProcess, volumes: int, clients: int = 8) -> float:
    """Create ``volumes`` volumes (kept) with ``clients`` threads; seconds it took."""
    share = -(-volumes // clients)

    def work(client: Client, index: int) -> list[float]:
        count = max(0, min(share, volumes - index * share))
        for n in range(count):
            client.create(f"kept-{index}-{n}")
        return []

    _, wall = _in_threads(plugin, clients, work)
    return wall


@contextmanager
def _profiled(pid: int, directory: Path, tools: str) -> Iterator[None]:
    """py-spy (when installed) and/or ``strace -c -f`` attached to ``pid`` for the block
    (each slows the plugin: run them apart for numbers that are not the other's)."""
    directory.mkdir(parents=True, exist_ok=True)
    tracers: list[subprocess.Popen[bytes]] = []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if "py-spy" in tools and Path(py_spy).exists():
        tracers.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--rate", "500", "--threads", "--nonblocking",
             "--format", "raw", "--output", str(directory / "py-spy.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    if "strace" in tools and shutil.which("strace"):
        tracers.append(subprocess.Popen(
            ["strace", "-c", "-f", "-w", "-o", str(directory / "strace-c.txt"), "-p", str(pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    time.sleep(2.0)  # attach before the calls (not a speed goal)
    try:
        yield
    finally:
        for tracer in tracers:
            tracer.send_signal(signal.SIGINT)
        for tracer in tracers:
            try:
                tracer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as work:
        root = Path(work)
        config = write_config(
            root, [file_backend(root / "volumes", name="embedded")],
            storage={"persistence_config": {"storage": "sqlite",
                                            "path": str(root / "meta.sqlite")}},
            # The reconciler's pass would land inside the timed calls: keep it out.
            reconcile_delay_seconds=3600,
        )  # fmt: skip
        with running(config, "controller", root, args=("--log-level", "INFO")) as plugin:
            assert plugin.process is not None
            pid = plugin.process.pid
            result: dict[str, Any] = {"rss_idle_mib": rss_mib(pid)}
            result["empty_call_ms"] = empty_calls(plugin)
            profile = args.profile and _profiled(pid, Path(args.profile), args.profile_tools)
            with profile or nullcontext():
                result["sequential"] = sequential(plugin, args.pairs, args.warmup)
            counts = [int(n) for n in args.clients.split(",") if n]
            result["concurrent"] = [concurrent(plugin, n, args.pairs_per_client) for n in counts]
            result["rss_after_pairs_mib"] = rss_mib(pid)
            result["fill_s"] = round(fill(plugin, args.volumes), 2)
            result["volumes"] = args.volumes
            result["rss_volumes_mib"] = rss_mib(pid)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="sequential pairs timed")
    parser.add_argument("--warmup", type=int, default=10, help="sequential pairs not timed")
    parser.add_argument("--clients", default="8,32", help="concurrent client counts")
    parser.add_argument("--pairs-per-client", type=int, default=20)
    parser.add_argument("--volumes", type=int, default=1000, help="volumes kept for the RSS")
    parser.add_argument("--profile", help="directory for py-spy and strace -c output")
    parser.add_argument("--profile-tools", default="py-spy,strace", help="py-spy, strace or both")
    args = parser.parse_args()
    result = {"benchmark": "rpc_latency", "backend": "FileDriver", "store": "sqlite",
              "synchronous": "default", **measure(args)}  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
