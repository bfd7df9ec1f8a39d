"""Fsyncs and store commits per controller RPC, and the CreateVolume+DeleteVolume latency.

Counting: a real controller process (embedded FileDriver backend, SQLite store) serves
rounds of CreateVolume, ControllerExpandVolume, CreateSnapshot, ControllerPublishVolume,
ControllerUnpublishVolume, DeleteSnapshot and DeleteVolume, one call at a time.
``strace -f`` attached to it records every fsync, fdatasync, sync_file_range, syncfs and
sync with its time, file and duration; the store is ``counting_store.CommitCountingSQLiteStore``
(the real store that logs the time of each commit). Each event is charged to the RPC
whose call window holds it. A warm-up round is not counted, so the numbers are those
of a running plugin; SQLite's WAL checkpoints (every ~1000 pages) show up as fractions
in long runs.

Timing: ``--pairs`` sequential CreateVolume (1 GiB) + DeleteVolume pairs against a
plugin without strace and with the stock store, p50 of the pair time, ``--runs``
times (a fresh plugin each), and the median of the runs' p50s.

Prints ONE JSON line; nothing here asserts (tests/csi/test_fsync_budget.py does).
Needs ``strace`` (Debian package, installed by ``make install``) and ptrace rights.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO / "tests"))

from csi_support.plugin import PluginProcess, Stubs, file_backend, running, write_config  # noqa: E402
from csi_support.requests import GiB, capability, create_request  # noqa: E402
from rpc_latency import pairs_in_threads  # noqa: E402 - benchmarks/, beside this file

from csi_driver import node_identity  # noqa: E402
from csi_driver.csi_pb import csi_pb2  # noqa: E402

#: The RPCs of one round, in the order they are called.
RPCS = (
    "CreateVolume", "ControllerExpandVolume", "CreateSnapshot", "ControllerPublishVolume",
    "ControllerUnpublishVolume", "DeleteSnapshot", "DeleteVolume",
)  # fmt: skip
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "sync")
_SYNC_LINE = re.compile(
    r"^(?P<pid>\d+)\s+(?P<time>\d+\.\d+)\s+(?P<call>" + "|".join(SYNC_CALLS) + r")\((?P<args>[^)]*)"
)
#: A call strace printed in two lines (another thread's call came between).
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+\S+\s+<\.\.\. \w+ resumed>")
_DURATION = re.compile(r"<(?P<seconds>\d+\.\d+)>$")
_FD_PATH = re.compile(r"^\d+<(?P<path>[^>]*)>")
NODE_ID, _ = node_identity.encode("fsync-bench-node", {"ip": "127.0.0.1"})
#: Readiness wait for strace's attach, not a speed goal.
ATTACH_TIMEOUT = 30.0


@dataclass
class Call:
    """One RPC's window and what happened inside it."""

    rpc: str
    started: float
    ended: float
    fsyncs: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    #: Time spent inside the fsync calls (strace -T).
    fsync_seconds: float = 0.0


@dataclass
class Counts:
    """Every counted call, and the events that fell outside all calls."""

    synchronous: str
    calls: list[Call]
    outside_fsyncs: Counter[str]
    outside_commits: int

    def per_call(self, rpc: str, what: str) -> list[int]:
        """The fsyncs (``what='fsyncs'``) or commits of each call of ``rpc``."""
        calls = [c for c in self.calls if c.rpc == rpc]
        return [sum(c.fsyncs.values()) if what == "fsyncs" else c.commits for c in calls]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for rpc in RPCS:
            calls = [c for c in self.calls if c.rpc == rpc]
            targets: Counter[str] = Counter()
            for c in calls:
                targets.update(c.fsyncs)
            fsyncs, commits = self.per_call(rpc, "fsyncs"), self.per_call(rpc, "commits")
            out[rpc] = {
                "calls": len(calls),
                "fsyncs": round(statistics.mean(fsyncs), 2),
                "fsyncs_max": max(fsyncs),
                "commits": round(statistics.mean(commits), 2),
                "commits_max": max(commits),
                "fsync_targets": {k: round(v / len(calls), 2) for k, v in sorted(targets.items())},
                "fsync_ms": round(statistics.mean(c.fsync_seconds for c in calls) * 1000, 2),
            }
        return out


def _target(path: str, root: Path) -> str:
    """What an fsynced path is, in the layout ``write_config`` makes under ``root``."""
    db = str(root / "meta.sqlite")
    volumes = str(root / "volumes" / "embedded")
    if path == db + "-wal":
        return "sqlite-wal"
    if path == db:
        return "sqlite-db"
    if path == str(root):
        # SQLite fsyncs the directory at a connection's first sync of the WAL (once per
        # connection: the store opens one per thread that writes, at most grpc_workers).
        return "sqlite-dir"
    if path == volumes:
        return "volume-dir"
    if path.startswith(volumes + "/"):
        return "volume-file"
    return "other:" + path


def _round(stubs: Stubs, index: int, calls: list[Call]) -> None:
    """One round of the RPCs in ``RPCS``, each call's window appended to ``calls``."""
    controller = stubs.controller

    def call(rpc: str, request: Any) -> Any:
        started = time.time()
        answer = getattr(controller, rpc)(request, timeout=120)
        calls.append(Call(rpc, started, time.time()))
        return answer

    volume_id = call("CreateVolume", create_request(f"fsync-{index}")).volume.volume_id
    bigger = csi_pb2.CapacityRange(required_bytes=2 * GiB)
    call(
        "ControllerExpandVolume",
        csi_pb2.ControllerExpandVolumeRequest(volume_id=volume_id, capacity_range=bigger),
    )
    snapshot = csi_pb2.CreateSnapshotRequest(source_volume_id=volume_id, name=f"fsync-s-{index}")
    snapshot_id = call("CreateSnapshot", snapshot).snapshot.snapshot_id
    call(
        "ControllerPublishVolume",
        csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=NODE_ID, volume_capability=capability()
        ),
    )
    call(
        "ControllerUnpublishVolume",
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=NODE_ID),
    )
    call("DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id))
    call("DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=volume_id))


def _config(root: Path, synchronous: str, counting: bool) -> Path:
    store: dict[str, Any] = {"storage": "sqlite", "path": str(root / "meta.sqlite"),
                             "synchronous": synchronous}  # fmt: skip
    if counting:
        store["storage"] = "counting_store.CommitCountingSQLiteStore"
        store["commit_log"] = str(root / "commits.log")
    return write_config(
        root, [file_backend(root / "volumes", name="embedded")],
        storage={"persistence_config": store},
        # The reconciler's pass would land between the calls: keep it out of the run.
        reconcile_delay_seconds=3600,
    )  # fmt: skip


@contextmanager
def _controller(root: Path, synchronous: str, counting: bool) -> Iterator[PluginProcess]:
    config = _config(root, synchronous, counting)
    paths = [str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, paths))} if counting else None
    with running(config, "controller", root, env=env) as plugin:
        yield plugin


@contextmanager
def _traced(pid: int, output: Path) -> Iterator[None]:
    """strace -f attached to every thread of ``pid`` for the block; it ends with the process."""
    if shutil.which("strace") is None:
        raise RuntimeError("strace is not installed (Debian package strace; make install)")
    command = ["strace", "-f", "-ttt", "-T", "-y", "-e", "trace=" + ",".join(SYNC_CALLS),
               "-o", str(output), "-p", str(pid)]  # fmt: skip
    tracer = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert tracer.stderr is not None
    deadline, said = time.monotonic() + ATTACH_TIMEOUT, ""
    while "attached" not in said:
        if tracer.poll() is not None or time.monotonic() > deadline:
            tracer.kill()
            raise RuntimeError(f"strace did not attach to {pid}: {said}{tracer.stderr.read()}")
        if select.select([tracer.stderr], [], [], 0.1)[0]:
            said += tracer.stderr.readline()
    try:
        yield
    except BaseException:
        tracer.terminate()  # strace detaches, leaving the plugin to the caller to stop
        raise
    finally:
        # The caller's block stopped the plugin (or strace detached): strace has ended.
        tracer.stderr.close()
        tracer.wait()


def _sync_events(trace: Path, root: Path) -> list[tuple[float, str | None, float]]:
    """(time, target, seconds inside) of each fsync-family call in ``trace``."""
    events: list[tuple[float, str | None, float]] = []
    unfinished: dict[str, int] = {}  # pid -> index of its event waiting for a duration
    for line in trace.read_text().splitlines():
        duration = _DURATION.search(line)
        seconds = float(duration["seconds"]) if duration else 0.0
        if match := _SYNC_LINE.match(line):
            fd = _FD_PATH.match(match["args"])
            target = _target(fd["path"], root) if fd else match["call"]
            events.append((float(match["time"]), target, seconds))
            if "<unfinished ...>" in line:
                unfinished[match["pid"]] = len(events) - 1
        elif (resumed := _RESUMED.match(line)) and resumed["pid"] in unfinished:
            stamp, target, _ = events[index := unfinished.pop(resumed["pid"])]
            events[index] = (stamp, target, seconds)
    return events


def _attribute(
    calls: list[Call], events: list[tuple[float, str | None, float]]
) -> tuple[Counter, int]:
    """Charge each (time, fsync target or None for a commit, seconds) to the call holding
    it; return what fell between the calls (the warm-up before and the stop after are
    left out)."""
    outside: Counter[str] = Counter()
    outside_commits = 0
    for stamp, target, seconds in events:
        if not calls[0].started <= stamp <= calls[-1].ended:
            continue
        owner = next((c for c in calls if c.started <= stamp <= c.ended), None)
        if owner is None:
            if target is None:
                outside_commits += 1
            else:
                outside[target] += 1
        elif target is None:
            owner.commits += 1
        else:
            owner.fsyncs[target] += 1
            owner.fsync_seconds += seconds
    return outside, outside_commits


def count(rounds: int = 10, synchronous: str = "FULL", warmup: int = 1) -> Counts:
    """Run ``warmup`` + ``rounds`` rounds under strace; count the rounds after the warm-up."""
    with tempfile.TemporaryDirectory(prefix="bench-fsyncs-") as work:
        root = Path(work)
        trace = root / "strace.out"
        calls: list[Call] = []
        with _controller(root, synchronous, counting=True) as plugin:
            stubs = Stubs(plugin)
            for index in range(warmup):
                _round(stubs, -1 - index, [])
            assert plugin.process is not None
            with _traced(plugin.process.pid, trace):
                for index in range(rounds):
                    _round(stubs, index, calls)
                stubs.close()
                plugin.stop()
        events = _sync_events(trace, root)
        for line in (root / "commits.log").read_text().splitlines():
            events.append((float(line), None, 0.0))
        outside, outside_commits = _attribute(calls, events)
        return Counts(synchronous.upper(), calls, outside, outside_commits)


def grouped(clients: int, pairs_per_client: int, synchronous: str = "FULL") -> dict[str, Any]:
    """Fsyncs per CreateVolume+DeleteVolume pair while ``clients`` clients (a thread and
    a channel each) make pairs at once, under strace: commits that overlap share the
    WAL's fsync (group commit), so it falls below a lone pair's."""
    with tempfile.TemporaryDirectory(prefix="bench-grouped-") as work:
        root = Path(work)
        trace = root / "strace.out"
        with _controller(root, synchronous, counting=False) as plugin:
            # A warm-up round at full width: every worker thread has its connection.
            pairs_in_threads(plugin, clients, 1, "warm")
            assert plugin.process is not None
            with _traced(plugin.process.pid, trace):
                started = time.time()
                pairs_in_threads(plugin, clients, pairs_per_client, "grouped")
                ended = time.time()
                plugin.stop()
        events = _sync_events(trace, root)
    targets = Counter(target for stamp, target, _ in events if started <= stamp <= ended)
    pairs = clients * pairs_per_client
    per_pair = {k: round(v / pairs, 2) for k, v in sorted(targets.items())}
    return {"clients": clients, "pairs": pairs, "wal_fsyncs_per_pair": per_pair.get("sqlite-wal"),
            "fsyncs_per_pair": round(sum(targets.values()) / pairs, 2),
            "fsync_targets": per_pair}  # fmt: skip


def pair_latency(pairs: int = 100, synchronous: str = "FULL", warmup: int = 5) -> list[float]:
    """Seconds of each CreateVolume (1 GiB) + DeleteVolume pair, one pair at a time."""
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as work:
        root = Path(work)
        with _controller(root, synchronous, counting=False) as plugin:
            stubs = Stubs(plugin)
            times: list[float] = []
            for index in range(warmup + pairs):
                started = time.perf_counter()
                _pair(stubs, index)
                if index >= warmup:
                    times.append(time.perf_counter() - started)
            stubs.close()
    return times


def _pair(stubs: Stubs, index: int) -> None:
    volume = stubs.controller.CreateVolume(create_request(f"pair-{index}"), timeout=120).volume
    stubs.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=120
    )


def _timing(pairs: int, runs: int, synchronous: str) -> dict[str, Any]:
    p50s = [statistics.median(pair_latency(pairs, synchronous)) * 1000 for _ in range(runs)]
    return {"pairs": pairs, "runs": runs, "pair_ms_p50_runs": [round(p, 2) for p in p50s],
            "pair_ms_p50": round(statistics.median(p50s), 2)}  # fmt: skip


def _measure(what: str, action: Callable[[], Any]) -> Any:
    print(f"fsyncs benchmark: {what}...", file=sys.stderr, flush=True)
    return action()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="counted rounds (0: no counting)")
    parser.add_argument("--pairs", type=int, default=100, help="timed pairs a run")
    parser.add_argument("--runs", type=int, default=3, help="timing runs (0: no timing)")
    parser.add_argument("--synchronous", default="FULL", choices=("FULL", "NORMAL"))
    parser.add_argument(
        "--clients", type=int, default=8, help="concurrent clients of the grouped count (0: none)"
    )
    parser.add_argument("--pairs-per-client", type=int, default=10)  # fmt: skip
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "controller_fsyncs", "backend": "FileDriver", "store": "sqlite",
        "synchronous": args.synchronous, "rounds": args.rounds,
    }  # fmt: skip
    if args.rounds:
        counts = _measure("counting", lambda: count(args.rounds, args.synchronous))
        result["rpcs"] = counts.summary()
        result["between_calls"] = {"fsyncs": dict(counts.outside_fsyncs),
                                   "commits": counts.outside_commits}  # fmt: skip
    if args.clients:
        result["concurrent"] = _measure("grouped commits", lambda: grouped(
            args.clients, args.pairs_per_client, args.synchronous))  # fmt: skip
    if args.runs:
        result["timing"] = _measure(
            "timing", lambda: _timing(args.pairs, args.runs, args.synchronous)
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
