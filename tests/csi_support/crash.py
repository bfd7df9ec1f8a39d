"""A plugin directory that outlives the processes killed in it, for crash tests.

``Site`` runs the real plugin (FileDriver + SQLite) in one directory: started armed
with a crash point (``CSI_DRIVER_FAULT_CRASH_AT``, fault injection) it SIGKILLs itself
there; started again unarmed it must heal. ``Site.audit`` then compares what the
metadata store says with what is on the backend (the volume files) and on the host
(mounts, loop devices): lost records, orphan files, duplicates, records left in a
transitional status.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from csi_driver.storage import crash_points
from csi_support import plugin

TRANSITIONAL = {"creating", "deleting", "extending", "connecting", "disconnecting"}
CALL_TIMEOUT = 60.0


@dataclass
class Audit:
    """What ``Site.audit`` found; every list must be empty."""

    lost: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    leaked: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        return {k: v for k, v in vars(self).items() if v}


class Site:
    """One plugin directory and the processes started in it, one at a time."""

    def __init__(self, root: Path, mode: str = "all", **config: Any) -> None:
        self.root = root
        self.mode = mode
        self.volumes_dir = root / "volumes" / "embedded"
        self.store = root / "meta.sqlite"
        self.starts = 0
        self._configs: dict[float, Path] = {}
        self._extra = config

    def config(self, reconcile_delay: float) -> Path:
        """The config file; ``reconcile_delay`` 0 lets the reconciler heal at start-up,
        a long one leaves healing to the retried calls."""
        if reconcile_delay not in self._configs:
            folder = self.root / f"config-{len(self._configs)}"
            folder.mkdir()
            backends = [plugin.file_backend(self.root / "volumes")]
            path = plugin.write_config(folder, backends=backends, **self._extra)
            text = path.read_text().replace(str(folder), str(self.root))
            text += f"reconcile_delay_seconds: {reconcile_delay}\nreconcile_interval_seconds: 1\n"
            path.write_text(text)
            self._configs[reconcile_delay] = path
        return self._configs[reconcile_delay]

    @contextmanager
    def running(self, reconcile_delay: float = 3600.0) -> Iterator[plugin.Stubs]:
        """An unarmed plugin, stopped gracefully (asserted) at the end."""
        self.starts += 1
        with plugin.running(self.config(reconcile_delay), self.mode, self.root,
                            name=f"{self.mode}-{self.starts}") as process:  # fmt: skip
            stubs = plugin.Stubs(process)
            try:
                yield stubs
            finally:
                stubs.close()

    def crash(self, point: str, call: Callable[[plugin.Stubs], Any]) -> str:
        """Start the plugin armed at ``point``, make ``call`` and see the process die there."""
        self.starts += 1
        name = f"{self.mode}-{self.starts}-armed"
        return die_at(point, self.config(3600.0), self.mode, self.root, name, call)

    # -- what the store and the backend hold ------------------------------------------------
    def records(self, kind: str) -> list[dict[str, Any]]:
        with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True) as db:
            return [json.loads(data) for (data,) in db.execute(f"SELECT data FROM {kind}")]  # noqa: S608

    def wait_settled(self, timeout: float = 60.0) -> None:
        """Until no record is left transitional (the reconciler's work), or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._transitional():
                return
            time.sleep(0.2)
        raise AssertionError(f"records still transitional after {timeout}s: {self._transitional()}")

    def _transitional(self) -> list[str]:
        return [f"{kind[:-1]} {r['id']} {r['status']}"
                for kind in ("volumes", "snapshots", "connections")
                for r in self.records(kind)
                if r.get("status") in TRANSITIONAL or "operation" in r]  # fmt: skip

    def audit(self, must_exist: dict[str, set[str]] | None = None) -> Audit:
        """Store against backend and host. ``must_exist`` maps 'volumes'/'snapshots' to
        ids that were there before the crash and must still be."""
        found = Audit(stuck=self._transitional())
        volumes = self.records("volumes")
        snapshots = self.records("snapshots")
        connections = self.records("connections")
        for kind, records in (("volumes", volumes), ("snapshots", snapshots)):
            ids = {r["id"] for r in records}
            found.lost += [f"{kind[:-1]} {i}" for i in sorted((must_exist or {}).get(kind, ()))
                           if i not in ids]  # fmt: skip
            names = [r.get("name") for r in records if r.get("name")]
            found.duplicates += sorted({f"{kind[:-1]} name {n}" for n in names
                                        if names.count(n) > 1})  # fmt: skip
        files = set(os.listdir(self.volumes_dir)) if self.volumes_dir.exists() else set()
        expected = {f"volume-{r['id']}" for r in volumes} | {
            f"snapshot-{r['id']}" for r in snapshots
        }
        found.orphans += sorted(f"file {f}" for f in files - expected)
        found.lost += sorted(f"backend file {f}" for f in expected - files)
        volume_ids = {r["id"] for r in volumes}
        found.orphans += [f"connection {c['id']} of missing volume {c['volume_id']}"
                          for c in connections if c["volume_id"] not in volume_ids]  # fmt: skip
        found.orphans += [f"snapshot {s['id']} of missing volume {s['volume_id']}"
                          for s in snapshots if s["volume_id"] not in volume_ids]  # fmt: skip
        found.leaked = plugin.leftovers(self.root)
        return found


def die_at(
    point: str,
    config: Path,
    mode: str,
    directory: Path,
    name: str,
    call: Callable[[plugin.Stubs], Any],
) -> str:
    """Start a plugin armed at ``point``, make ``call`` and see the process die there;
    returns its log. Fails when the call completes instead: the point is then not on
    that call's path.
    """
    process = plugin.PluginProcess(
        config, mode, directory / f"{name}.sock", directory / f"{name}.log",
        env={crash_points.ENV: point},
    ).start()  # fmt: skip
    stubs = plugin.Stubs(process)
    assert process.process is not None
    try:
        try:
            call(stubs)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise AssertionError(
                    f"armed at {point}: the call failed with {exc.code()} ({exc.details()}) "
                    "instead of losing the plugin"
                ) from exc
        else:
            raise AssertionError(f"armed at {point}: the call completed; point not reached")
        code = process.process.wait(timeout=30)
    except BaseException:
        process.process.kill()  # never leave an armed plugin behind
        process.process.wait()
        raise
    finally:
        stubs.close()
    assert code == -9, f"armed at {point}: plugin exited {code}, not by SIGKILL"
    assert f"crash point {point} reached" in process.log()
    if os.path.exists(process.socket):
        os.unlink(process.socket)  # what a killed plugin leaves; the next start checks it
    return process.log()


def retry(call: Callable[[], Any], attempts: int = 40) -> Any:
    """Call as a CO does after losing the plugin: again on ABORTED/UNAVAILABLE."""
    for _ in range(attempts - 1):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE):
                raise
        time.sleep(0.25)
    return call()
