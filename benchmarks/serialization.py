"""Serialization benchmark: dumps/load time and peak RSS for 1 000 and 10 000 volumes.

Workload (the one the retired cinderlib 5.2 was measured on): N volumes on one
backend, 10 % of them with a snapshot, 10 % with a connection. The volumes are
made through the library's real API on the embedded FileDriver with an SQLite
store, then each measured phase runs in a fresh child process so its peak RSS
is its own:

- ``dumps``: a process that configures the backend, serializes everything from
  the store (``storage.dumps()``, cold: objects built from store records), and
  serializes again with everything loaded (warm, the in-memory case);
- ``load``: a process that configures the backend and ``storage.load()``s that text;
- ``roundtrip``: one process doing both (the worst case for memory).

Prints ONE JSON line. Timings are the best of ``--repeat`` runs inside each child.
Nothing here asserts: targets are compared by whoever reads the output.

The workload uses no Ceph, so the children run with ``CSI_DRIVER_CEPH_BINDINGS=0``:
where Ceph's Python bindings are importable, os-brick loads librados in every process
at import, a fixed cost unrelated to serialization that ``setup_rss_mib`` reports
separately (``with_ceph_bindings``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

BACKEND = "bench"
DRIVER = "csi_driver.storage.drivers.file.FileDriver"
# cinderlib 5.2, same workload, same kind of machine (from the issue).
BASELINE = {"dumps_s": [1.6, 2.5], "load_s": [1.9, 2.7], "peak_rss_mib": 377}


def _setup(workdir: str) -> Any:
    from csi_driver import storage

    storage.setup(
        persistence_config={"storage": "sqlite", "path": os.path.join(workdir, "meta.db")},
        file_locks_path=os.path.join(workdir, "locks"),
    )
    backend = storage.Backend(
        volume_backend_name=BACKEND,
        volume_driver=DRIVER,
        file_volumes_dir=os.path.join(workdir, "volumes"),
    )
    return storage, backend


def _peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _current_rss_mib() -> float:
    """RSS now: after setup it is the price of importing Cinder, before any workload."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def populate(workdir: str, count: int) -> dict[str, int]:
    _, backend = _setup(workdir)
    snapshots = connections = 0
    for index in range(count):
        volume = backend.create_volume(1, name=f"pvc-{index:05d}", metadata={"index": str(index)})
        if index % 10 == 3:
            volume.create_snapshot(name=f"snap-{index:05d}")
            snapshots += 1
        if index % 10 == 7:
            properties = {"host": f"node-{index % 50}", "ip": "192.0.2.10", "multipath": False,
                          "initiator": f"iqn.2026-11.node:{index}"}  # fmt: skip
            volume.connect(properties)
            connections += 1
    return {"volumes": count, "snapshots": snapshots, "connections": connections}


def _best(repeat: int, action: Any) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        result = None  # let the previous result go before the next run
        started = time.perf_counter()
        result = action()
        best = min(best, time.perf_counter() - started)
    return round(best, 4), result


def phase_dumps(workdir: str, repeat: int) -> dict[str, Any]:
    storage, _ = _setup(workdir)
    baseline = _current_rss_mib()
    started = time.perf_counter()
    data = storage.dumps()
    cold = round(time.perf_counter() - started, 4)
    del data
    warm, data = _best(repeat, storage.dumps)
    peak = _peak_rss_mib()  # before writing the file, whose encoding copies the text
    with open(os.path.join(workdir, "dump.json"), "w") as out:
        out.write(data)
    return {"dumps_cold_s": cold, "dumps_s": warm, "json_bytes": len(data.encode()),
            "peak_rss_mib": peak, "setup_rss_mib": baseline}  # fmt: skip


def phase_load(workdir: str, repeat: int) -> dict[str, Any]:
    """Load the dump ``repeat`` times; peak RSS is taken after the first load only."""
    storage, backend = _setup(workdir)
    with open(os.path.join(workdir, "dump.json")) as source:
        data = source.read()
    started = time.perf_counter()
    backends = storage.load(data)
    first = time.perf_counter() - started
    peak = _peak_rss_mib()
    volumes = sum(len(b.volumes) for b in backends)
    del backends
    backend.refresh()  # drops the loaded volumes, which this store does not hold
    seconds, _ = _best(repeat - 1, lambda: storage.load(data)) if repeat > 1 else (first, None)
    return {"load_s": min(round(first, 4), seconds), "loaded_volumes": volumes,
            "peak_rss_mib": peak}  # fmt: skip


def phase_roundtrip(workdir: str, repeat: int) -> dict[str, Any]:
    storage, _ = _setup(workdir)
    dumps_s, data = _best(repeat, storage.dumps)
    load_s, _ = _best(repeat, lambda: storage.load(data))
    return {"dumps_s": dumps_s, "load_s": load_s, "peak_rss_mib": _peak_rss_mib()}


def phase_setup(workdir: str, _: int) -> dict[str, Any]:
    """Only the set-up: the process's fixed memory before any volume is touched."""
    _setup(workdir)
    return {"setup_rss_mib": _current_rss_mib()}


PHASES = {"populate": None, "setup": phase_setup, "dumps": phase_dumps, "load": phase_load,
          "roundtrip": phase_roundtrip}  # fmt: skip


def _child(phase: str, workdir: str, arg: int, ceph_bindings: bool = False) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", phase, "--workdir", workdir, "--arg", str(arg)]
    env = dict(os.environ, CSI_DRIVER_CEPH_BINDINGS="1" if ceph_bindings else "0")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"benchmark phase {phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=PHASES)
    parser.add_argument("--workdir")
    parser.add_argument("--arg", type=int, default=0)
    args = parser.parse_args()

    if args.child:
        import logging

        logging.disable(logging.WARNING)
        if args.child == "populate":
            result = populate(args.workdir, args.arg)
        else:
            result = PHASES[args.child](args.workdir, args.arg)  # type: ignore[misc]
        print(json.dumps(result))
        return

    report: dict[str, Any] = {"benchmark": "serialization", "python": sys.version.split()[0],
                              "repeat": args.repeat, "baseline_cinderlib_5_2": BASELINE,
                              "results": {}}  # fmt: skip
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="csi-bench-") as workdir:
            counts = _child("populate", workdir, size)
            dumps = _child("dumps", workdir, args.repeat)
            load = _child("load", workdir, args.repeat)
            both = _child("roundtrip", workdir, args.repeat)
            with_ceph = _child("setup", workdir, 0, ceph_bindings=True)
        report["results"][str(size)] = {
            **counts,
            "json_bytes": dumps["json_bytes"],
            "dumps_s": dumps["dumps_s"],
            "dumps_cold_s": dumps["dumps_cold_s"],
            "load_s": load["load_s"],
            "peak_rss_mib": {
                "dumps_process": dumps["peak_rss_mib"],
                "load_process": load["peak_rss_mib"],
                "dumps_and_load_process": both["peak_rss_mib"],
            },
            # RSS of a process that has set up the library and one backend, before any
            # volume is touched: mostly Cinder's own imports (register_all).
            "setup_rss_mib": {
                "without_ceph_bindings": dumps["setup_rss_mib"],
                "with_ceph_bindings": with_ceph["setup_rss_mib"],
            },
            "speedup_vs_cinderlib": {
                "dumps": round(BASELINE["dumps_s"][0] / dumps["dumps_s"], 1),
                "load": round(BASELINE["load_s"][0] / load["load_s"], 1),
            },
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
