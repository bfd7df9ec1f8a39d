"""Soak the plugin: many CSI clients racing through whole volume life cycles on shared
names, against a controller process and a separate node process on this machine
(FileDriver + SQLite in a temporary directory; needs root for loop devices and mounts).

    .venv/bin/python e2e/soak/run.py                      # 16 clients x 60 s
    .venv/bin/python e2e/soak/run.py --clients 4 --seconds 20 --keep

Each client loops CreateVolume -> ControllerPublishVolume -> NodeStageVolume ->
NodePublishVolume -> NodeUnpublishVolume on names drawn from a pool a quarter the size of
the client count, so about four clients race on each name (CreateVolume of it, the
export, the stage at its one staging path, publishes at their own targets, each retried
while ABORTED). After one use in ten the name is done with: as a CO does, nobody starts
using it again until its last user has torn the volume down (NodeUnstageVolume ->
ControllerUnpublishVolume -> DeleteVolume). When the time is up a sweep removes whatever the
races left, through the CSI API. Then, checked (a failed check makes the exit code 1):

- codes: every answer is OK, ABORTED (a race on a name or volume) or a code the spec's
  table names for the RPC; never INVALID_ARGUMENT (every request is well formed),
  UNKNOWN, INTERNAL, UNAVAILABLE or DEADLINE_EXCEEDED;
- progress: every RPC of the cycle succeeded (a run where, say, every stage is refused
  proves nothing);
- store: the SQLite store (read directly) matches the backend: every volume and
  snapshot record has its file in file_volumes_dir and every file its record, no
  record is left in a transitional or error status, and the sweep left none behind;
- host: no mount or loop device is left under the temporary directory;
- resources: open fds, threads and RSS of both plugin processes are sampled every
  second; the final value (after the sweep and a short idle) may exceed the plateau
  (median of the run's second half) by at most: fds +16, threads +4, RSS +10 % +16 MiB
  (a leak of one fd or thread per cycle would exceed these within seconds; RSS varies
  with allocator caching, hence the relative margin);
- both processes stop cleanly (SIGTERM, exit 0).

The result is one JSON line on stdout, also written to ``--output``
(bench-results/soak.json by default). ``SOAK_CLIENTS`` and ``SOAK_SECONDS`` set the
defaults of --clients and --seconds.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc  # noqa: E402

Code = grpc.StatusCode
GiB = 1024**3
MiB = 1024**2
FILE_DRIVER = "csi_driver.storage.drivers.file.FileDriver"
BACKEND = "embedded"
CALL_TIMEOUT = 60.0
START_TIMEOUT = 60.0
Mode = csi_pb2.VolumeCapability.AccessMode.Mode

#: Codes the spec's table names per RPC (v1.13.0 spec.md); the general ones apply to all.
SPEC_CODES: dict[str, set[Code]] = {
    "CreateVolume": {Code.OUT_OF_RANGE, Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED},
    "DeleteVolume": {Code.FAILED_PRECONDITION},
    "ControllerPublishVolume": {
        Code.NOT_FOUND,
        Code.ALREADY_EXISTS,
        Code.RESOURCE_EXHAUSTED,
        Code.FAILED_PRECONDITION,
    },
    "ControllerUnpublishVolume": {Code.NOT_FOUND},
    "NodeStageVolume": {Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION},
    "NodeUnstageVolume": {Code.NOT_FOUND},
    "NodePublishVolume": {Code.NOT_FOUND, Code.ALREADY_EXISTS, Code.FAILED_PRECONDITION},
    "NodeUnpublishVolume": {Code.NOT_FOUND},
}
#: Codes any call of the soak may get besides its RPC's own: ABORTED while another client
#: holds the name or volume. Every request the soak sends is well formed, so
#: INVALID_ARGUMENT (or OUT_OF_RANGE...) would be a plugin fault here; UNAVAILABLE too:
#: nothing is transient on a local FileDriver + SQLite.
GENERAL_CODES = {Code.ABORTED}
#: RPCs of a client's cycle: each must have succeeded many times for the run to count.
CYCLE_RPCS = ("CreateVolume", "ControllerPublishVolume", "NodeStageVolume",
              "NodePublishVolume", "NodeUnpublishVolume", "NodeUnstageVolume",
              "ControllerUnpublishVolume", "DeleteVolume")  # fmt: skip
#: Record statuses an operation passes through, or that a failure leaves: none may remain.
TRANSITIONAL = {
    "creating",
    "deleting",
    "extending",
    "connecting",
    "disconnecting",
    "attaching",
    "detaching",
    "error",
    "error_deleting",
    "error_extending",
}
#: Allowed growth of the final value over the plateau: (absolute, relative).
TOLERANCE = {"fds": (16, 0.0), "threads": (4, 0.0), "rss_bytes": (16 * MiB, 0.10)}


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


# -- the plugin processes --------------------------------------------------------------------


class Plugin:
    """A ``csi-driver`` process as the shipped command runs it, logging to a file."""

    def __init__(self, mode: str, config: Path, root: Path) -> None:
        self.mode = mode
        self.socket = root / f"{mode}.sock"
        self.log_path = root / f"{mode}.log"
        command = [
            sys.executable,
            "-m",
            "csi_driver.cli",
            "--endpoint",
            f"unix://{self.socket}",
            "--mode",
            mode,
            "--config",
            str(config),
            "--log-level",
            "INFO",
        ]
        with open(self.log_path, "wb") as handle:
            self.process = subprocess.Popen(
                command, stdout=handle, stderr=subprocess.STDOUT, cwd=root
            )
        self.channel = grpc.insecure_channel(f"unix:{self.socket}")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{mode} plugin exited at start:\n{self.tail()}")
            with contextlib.suppress(grpc.RpcError):
                probe = csi_pb2_grpc.IdentityStub(self.channel).Probe(
                    csi_pb2.ProbeRequest(), timeout=5
                )
                if probe.ready.value:
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{mode} plugin not ready in {START_TIMEOUT:.0f} s")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def sample(self) -> dict[str, int] | None:
        """Open fds, threads and resident memory of the process (None once it is gone)."""
        pid = self.process.pid
        try:
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "fds": fds,
            "threads": int(fields["Threads"]),
            "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
        }

    def stop(self, timeout: float = 60.0) -> int:
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                return -9
        return self.process.returncode


def write_config(root: Path) -> Path:
    """One config for both processes: the controller uses the store and the backend, the
    node its state directory, the volumes directory as its only local root, and both
    the publish_context signing key."""
    key = root / "signing.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    key.chmod(0o600)
    config = {
        "storage": {
            "persistence_config": {"storage": "sqlite", "path": str(root / "meta.sqlite")},
            "file_locks_path": str(root / "locks"),
        },
        "backends": [
            {
                "name": BACKEND,
                "driver": FILE_DRIVER,
                "options": {"file_volumes_dir": str(root / "volumes")},
            }
        ],
        "node": {
            "state_dir": str(root / "node"),
            "local_roots": [str(root / "volumes")],
            "mount_roots": [str(root)],  # the soak's staging and pod directories
        },
        "signing_key_file": str(key),
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# -- the clients --------------------------------------------------------------------------------


class Tally:
    """Every answer, by RPC and code, and one example message of each unexpected one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        self.unexpected: dict[tuple[str, str], str] = {}
        self.cycles = 0

    def add(self, rpc: str, code: Code, details: str) -> None:
        with self.lock:
            self.codes[rpc][code.name] += 1
            if code != Code.OK and code not in SPEC_CODES.get(rpc, set()) | GENERAL_CODES:
                self.unexpected.setdefault((rpc, code.name), details[:500])


class Client(threading.Thread):
    """One CO worker: volume life cycles on shared names until the deadline.

    Workers race on everything a CO may do concurrently (CreateVolume of one name,
    ControllerPublishVolume, NodeStageVolume of one volume, NodePublishVolume of it at
    their own targets), but, as a CO does, tear a volume down (unstage, unpublish,
    delete) only when its last user is gone, and start using a name again only after.
    """

    def __init__(self, number: int, run: Run) -> None:
        super().__init__(name=f"client-{number}", daemon=True)
        self.number = number
        self.run_ = run
        self.rng = random.Random(run.seed * 1000 + number)  # noqa: S311 - a schedule, not a secret
        # A channel of its own to each process, as separate COs (sidecars) have.
        self.channels = [
            grpc.insecure_channel(f"unix:{p.socket}") for p in (run.controller, run.node)
        ]
        self.controller = csi_pb2_grpc.ControllerStub(self.channels[0])
        self.node = csi_pb2_grpc.NodeStub(self.channels[1])
        self.pods = run.root / "pods" / f"client-{number}"
        self.pods.mkdir(parents=True)

    def call(self, rpc: str, request: Any, patience: float = 1.0) -> tuple[Code, Any]:
        """The call, retried with a little backoff while it is ABORTED, for up to
        ``patience`` seconds (a CO retries some calls far longer than others)."""
        stub = self.node if rpc.startswith("Node") else self.controller
        give_up = time.monotonic() + patience
        while True:
            try:
                response = getattr(stub, rpc)(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as exc:
                code, details, response = exc.code(), exc.details() or "", None
            else:
                code, details = Code.OK, ""
            self.run_.tally.add(rpc, code, details)
            if code != Code.ABORTED or time.monotonic() > give_up:
                return code, response
            time.sleep(self.rng.uniform(0.01, 0.1))

    def run(self) -> None:
        try:
            while time.monotonic() < self.run_.deadline:
                index = self.rng.randrange(self.run_.names)
                if not self.run_.enter(index):
                    time.sleep(0.01)  # being torn down: come back later
                    continue
                try:
                    self.use(index)
                finally:
                    # Now and then the CO is done with the volume (its claim deleted):
                    # no new users, and the last one out tears it down.
                    if self.run_.leave(index, done=self.rng.random() < 0.1):
                        try:
                            self.tear_down(index)
                        finally:
                            self.run_.torn_down(index)
                with self.run_.tally.lock:
                    self.run_.tally.cycles += 1
        finally:
            for channel in self.channels:
                channel.close()

    def use(self, index: int) -> None:
        """Create (or find) the volume, export, stage and publish it, then unpublish."""
        run = self.run_
        cap = capability(block=index % 3 == 2)
        size = 2 * GiB if self.rng.random() < 0.1 else GiB  # a conflicting request now and then
        code, created = self.call(
            "CreateVolume",
            csi_pb2.CreateVolumeRequest(
                name=f"soak-{index}",
                capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                volume_capabilities=[cap],
            ),
        )
        if code != Code.OK:
            return
        volume_id = created.volume.volume_id
        run.note_volume(index, volume_id)
        code, published = self.call(
            "ControllerPublishVolume",
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=run.node_id, volume_capability=cap
            ),
        )
        if code != Code.OK:
            return
        staging = run.staging(volume_id)
        stage = csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id,
            staging_target_path=str(staging),
            volume_capability=cap,
            publish_context=published.publish_context,
        )
        code, _ = self.call("NodeStageVolume", stage)
        if code != Code.OK:
            return
        if self.rng.random() < 0.1:  # staged elsewhere: must be refused, and change nothing
            other = self.pods / "not-the-staging-path"
            other.mkdir(exist_ok=True)
            stage.staging_target_path = str(other)
            self.call("NodeStageVolume", stage)
        target = self.pods / f"{volume_id}-{self.rng.randrange(2)}"
        run.note_path("target", volume_id, str(target))
        code, _ = self.call(
            "NodePublishVolume",
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id,
                staging_target_path=str(staging),
                target_path=str(target),
                volume_capability=cap,
                readonly=self.rng.random() < 0.2,
            ),
        )
        if code != Code.OK:
            return
        if not cap.HasField("block"):  # the pod writes a little
            with contextlib.suppress(OSError):
                (target / f"client-{self.number}").write_bytes(os.urandom(4096))
        time.sleep(self.rng.uniform(0, 0.05))
        self.call(
            "NodeUnpublishVolume",
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
            patience=30,  # kubelet retries an unmount until done; the volume waits for it
        )

    def tear_down(self, index: int) -> None:
        """The last user gone: unstage, unexport and delete, as a CO does (each step only
        once the one before succeeded; the sweep finishes what is left)."""
        volume_id = self.run_.volume_of(index)
        if volume_id is None:
            return
        staging = str(self.run_.staging(volume_id))
        steps = [
            ("NodeUnstageVolume",
             csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=staging)),
            ("ControllerUnpublishVolume",
             csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id,
                                                      node_id=self.run_.node_id)),
            ("DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=volume_id)),
        ]  # fmt: skip
        for rpc, request in steps:
            code, _ = self.call(rpc, request, patience=30)
            if code != Code.OK:
                return
        self.run_.forget(index)


def capability(block: bool) -> Any:
    cap = csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER)
    )
    if block:
        cap.block.SetInParent()
    else:
        cap.mount.fs_type = "ext4"
        cap.mount.SetInParent()
    return cap


# -- the run ------------------------------------------------------------------------------------


class Run:
    def __init__(self, root: Path, clients: int, seconds: float, seed: int) -> None:
        self.root = root
        self.clients = clients
        self.seconds = seconds
        self.seed = seed
        self.names = max(1, clients // 4)
        self.tally = Tally()
        self.lock = threading.Lock()
        self.volume_ids: set[str] = set()
        self.users: collections.Counter[int] = collections.Counter()
        self.tearing: set[int] = set()
        self.owned: set[int] = set()
        self.volumes: dict[int, str] = {}
        self.paths: set[tuple[str, str, str]] = set()
        self.samples: dict[str, list[tuple[float, dict[str, int]]]] = {"controller": [], "node": []}
        self.deadline = 0.0
        config = write_config(root)
        self.controller = Plugin("controller", config, root)
        self.node = Plugin("node", config, root)
        self.node_id = (
            csi_pb2_grpc.NodeStub(self.node.channel)
            .NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=CALL_TIMEOUT)
            .node_id
        )

    # The CO's book-keeping per name: users, whether it is being torn down, its volume.
    def enter(self, index: int) -> bool:
        with self.lock:
            if index in self.tearing:
                return False
            self.users[index] += 1
            return True

    def leave(self, index: int, done: bool) -> bool:
        """One user fewer (``done``: nobody may start using the name until it has been
        torn down); True for the last one out of a name that is done, who tears it down."""
        with self.lock:
            self.users[index] -= 1
            if done:
                self.tearing.add(index)
            if self.users[index] == 0 and index in self.tearing:
                if index in self.owned:
                    return False
                self.owned.add(index)
                return True
            return False

    def torn_down(self, index: int) -> None:
        with self.lock:
            self.tearing.discard(index)
            self.owned.discard(index)

    def note_volume(self, index: int, volume_id: str) -> None:
        with self.lock:
            self.volume_ids.add(volume_id)
            self.volumes[index] = volume_id

    def volume_of(self, index: int) -> str | None:
        with self.lock:
            return self.volumes.get(index)

    def forget(self, index: int) -> None:
        with self.lock:
            self.volumes.pop(index, None)

    def staging(self, volume_id: str) -> Path:
        """The volume's one staging path on this node, made as kubelet makes it."""
        path = self.root / "staging" / volume_id
        path.mkdir(parents=True, exist_ok=True)
        self.note_path("staging", volume_id, str(path))
        return path

    def note_path(self, kind: str, volume_id: str, path: str) -> None:
        with self.lock:
            self.paths.add((kind, volume_id, path))

    def sample(self, phase: str) -> None:
        for name, plugin in (("controller", self.controller), ("node", self.node)):
            values = plugin.sample()
            if values is not None:
                self.samples[name].append((time.monotonic(), {**values, "phase": phase}))

    def load(self) -> float:
        """The clients' run, sampled every second; returns its wall time."""
        started = time.monotonic()
        self.deadline = started + self.seconds
        threads = [Client(n, self) for n in range(self.clients)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            self.sample("load")
            time.sleep(1.0)
        return time.monotonic() - started

    def sweep(self) -> list[str]:
        """Remove what the races left, through the CSI API, in rounds until a round changes
        nothing; returns the calls still failing."""
        controller = csi_pb2_grpc.ControllerStub(self.controller.channel)
        node = csi_pb2_grpc.NodeStub(self.node.channel)
        failing: dict[str, str] = {}
        for _ in range(5):
            before = dict(failing)
            failing.clear()

            def attempt(stub: Any, rpc: str, request: Any, ok: tuple[Code, ...]) -> None:
                try:
                    getattr(stub, rpc)(request, timeout=CALL_TIMEOUT)
                except grpc.RpcError as exc:
                    self.tally.add(f"sweep:{rpc}", exc.code(), exc.details() or "")
                    if exc.code() not in ok:
                        failing[f"{rpc} {request.volume_id}"] = (
                            f"{exc.code().name}: {exc.details()}"
                        )
                else:
                    self.tally.add(f"sweep:{rpc}", Code.OK, "")

            for kind, volume_id, path in sorted(self.paths, key=lambda p: p[0] != "target"):
                if kind == "target":
                    attempt(
                        node,
                        "NodeUnpublishVolume",
                        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=path),
                        (Code.OK, Code.NOT_FOUND),
                    )
                else:
                    attempt(
                        node,
                        "NodeUnstageVolume",
                        csi_pb2.NodeUnstageVolumeRequest(
                            volume_id=volume_id, staging_target_path=path
                        ),
                        (Code.OK,),
                    )
            listed = controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=CALL_TIMEOUT)
            for entry in listed.entries:
                volume_id = entry.volume.volume_id
                attempt(
                    controller,
                    "ControllerUnpublishVolume",
                    csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id),
                    (Code.OK,),
                )
                attempt(
                    controller,
                    "DeleteVolume",
                    csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                    (Code.OK,),
                )
            if not failing or failing == before:
                break
        return [f"{k} -> {v}" for k, v in failing.items()]

    def stop(self) -> dict[str, int]:
        return {"controller": self.controller.stop(), "node": self.node.stop()}


def check_store(root: Path) -> dict[str, Any]:
    """The SQLite store against the files in file_volumes_dir, read directly."""
    database = sqlite3.connect(f"file:{root / 'meta.sqlite'}?mode=ro", uri=True)
    try:
        records = {
            table: {
                row[0]: json.loads(row[1])
                for row in database.execute(f"SELECT id, data FROM {table}")  # noqa: S608
            }
            for table in ("volumes", "snapshots", "connections")
        }
    finally:
        database.close()
    files = {p.name for p in (root / "volumes").iterdir() if not p.name.startswith(".")}
    expected = {f"volume-{i}" for i in records["volumes"]}
    expected |= {f"snapshot-{i}" for i in records["snapshots"]}
    transitional = [
        f"{table[:-1]} {record_id}: {data.get('status')}"
        for table, rows in records.items()
        for record_id, data in rows.items()
        if data.get("status") in TRANSITIONAL
    ]
    problems = [f"record without its file: {n}" for n in sorted(expected - files)]
    problems += [f"file without its record: {n}" for n in sorted(files - expected)]
    problems += [f"record left in a transitional status: {t}" for t in transitional]
    problems += [
        f"{len(rows)} {table} left after the sweep" for table, rows in records.items() if rows
    ]
    counts = {table: len(rows) for table, rows in records.items()}
    return {"records": counts, "files": len(files), "problems": problems}


def host_leftovers(root: Path) -> list[str]:
    """Mounts and loop devices still pointing under root."""
    prefix = str(root)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point.startswith(prefix):
                found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = backing.read_text(errors="replace").strip()
            if name.startswith(prefix):
                found.append(f"loop /dev/{backing.parent.parent.name} {name}")
    return found


def force_clean(root: Path) -> None:
    """Never leave our mounts or loop devices on the host, whatever failed; in passes, as a
    mount over a parent hides the mounts below it until it is gone."""
    for _ in range(5):
        leftovers = host_leftovers(root)
        if not leftovers:
            return
        for line in sorted(leftovers, key=len, reverse=True):
            kind, rest = line.split(" ", 1)
            command = (
                ["umount", "-l", rest] if kind == "mount" else ["losetup", "-d", rest.split()[0]]
            )
            subprocess.run(command, capture_output=True, check=False, timeout=60)


def resources(run: Run) -> dict[str, Any]:
    """Per process and measure: plateau (median of the load's second half), final, max,
    and whether the final stays within the tolerance."""
    report: dict[str, Any] = {}
    for name, samples in run.samples.items():
        load = [s for _, s in samples if s["phase"] == "load"]
        final = [s for _, s in samples if s["phase"] == "final"]
        report[name] = {}
        for measure, (absolute, relative) in TOLERANCE.items():
            values = [s[measure] for s in load]
            if not values or not final:
                report[name][measure] = {"ok": False, "why": "not sampled"}
                continue
            plateau = statistics.median(values[len(values) // 2 :])
            limit = plateau * (1 + relative) + absolute
            last = final[-1][measure]
            report[name][measure] = {
                "plateau": plateau,
                "final": last,
                "max": max([*values, last]),
                "first": values[0],
                "limit": round(limit),
                "ok": last <= limit,
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=int(os.environ.get("SOAK_CLIENTS", 16)))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 60)))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", 1)))
    parser.add_argument("--output", type=Path, default=REPO / "bench-results" / "soak.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the node needs root: loop devices and mounts")

    root = Path(tempfile.mkdtemp(prefix="csi-soak-")).resolve()
    ok = False
    try:
        ok = soak(root, args)
    finally:
        force_clean(root)
        if args.keep or not ok:
            log(f"kept {root} (logs, store)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


def soak(root: Path, args: argparse.Namespace) -> bool:
    """The run, the sweep and the checks; prints the JSON line and says if all passed."""
    log(f"{args.clients} clients x {args.seconds:g} s in {root}")
    run = Run(root, args.clients, args.seconds, args.seed)
    try:
        wall = run.load()
        log(f"{run.tally.cycles} cycles in {wall:.1f} s; sweeping")
        sweep = run.sweep()
        time.sleep(2.0)  # idle: what is still held now is held for good
        for _ in range(3):
            run.sample("final")
            time.sleep(0.5)
        leftovers_running = host_leftovers(root)
    finally:
        exits = run.stop()
    store = check_store(root)
    leftovers = sorted(set(leftovers_running + host_leftovers(root)))
    usage = resources(run)
    codes = {rpc: dict(counter) for rpc, counter in sorted(run.tally.codes.items())}
    unexpected = [f"{rpc} -> {code}: {msg}" for (rpc, code), msg in run.tally.unexpected.items()]
    checks = {
        "codes": not unexpected,
        "progress": all(codes.get(rpc, {}).get("OK", 0) > 0 for rpc in CYCLE_RPCS),
        "store": not store["problems"],
        "sweep": not sweep,
        "host": not leftovers,
        "resources": all(m["ok"] for p in usage.values() for m in p.values()),
        "clean_exit": all(code == 0 for code in exits.values()),
    }
    result = {
        "clients": args.clients,
        "seconds": args.seconds,
        "wall_s": round(wall, 1),
        "cycles": run.tally.cycles,
        "names": run.names,
        "volumes_made": len(run.volume_ids),
        "ok": all(checks.values()),
        "checks": checks,
        "codes": codes,
        "unexpected_codes": unexpected,
        "sweep_failures": sweep,
        "store": store,
        "leftovers": leftovers,
        "resources": usage,
        "exit_codes": exits,
        "tolerance": {k: {"absolute": a, "relative": r} for k, (a, r) in TOLERANCE.items()},
        "logs": {"controller": str(run.controller.log_path), "node": str(run.node.log_path)},
    }
    line = json.dumps(result, sort_keys=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(line + "\n")
    print(line, flush=True)
    if not result["ok"]:
        log(f"FAILED: {', '.join(k for k, v in checks.items() if not v)} (see {args.output})")
    return bool(result["ok"])


if __name__ == "__main__":
    sys.exit(main())
