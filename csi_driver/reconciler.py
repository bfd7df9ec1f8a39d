"""The controller's reconciler: heals operations that a crash left half-done and that no
CO call will retry (a snapshot whose VolumeSnapshot was deleted meanwhile, an export
whose VolumeAttachment is gone...).

A retried request heals its own resource on the way (see ``controller.py``); this runs
the same ``storage.recovery.heal`` for everything else, at start-up and then every
``reconcile_interval_seconds``. It takes the same in-flight locks as the RPCs, without
waiting: a resource an RPC is working on is skipped until the next round, so the two
never act on one resource at once. One active controller per store is assumed (the CSI
sidecars' leader election gives that in Kubernetes).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from csi_driver import errors, rpc, storage
from csi_driver.storage import Connection, NotFound, Snapshot, StorageError, Volume, recovery
from csi_driver.storage.resource import Resource

LOG = logging.getLogger(__name__)


def lock_keys(resource: Resource) -> list[str]:
    """The in-flight lock keys of the RPCs that may be working on this resource."""
    if isinstance(resource, Volume):
        return [f"volume:{resource.id}"] + ([f"volume-name:{resource.name}"] if resource.name
                                             else [])  # fmt: skip
    if isinstance(resource, Snapshot):
        keys = [f"snapshot:{resource.id}", f"volume:{resource.volume_id}"]
        return keys + ([f"snapshot-name:{resource.name}"] if resource.name else [])
    if isinstance(resource, Connection):
        return [f"volume:{resource.volume_id}"]
    raise TypeError(f"no lock keys for {resource!r}")


def _read_again(resource: Resource) -> Resource | None:
    """The resource as stored now (an RPC may have healed or removed it meanwhile)."""
    try:
        if isinstance(resource, Volume):
            return storage.get_volume(resource.id)  # the store, not a backend's loaded list
        if isinstance(resource, Snapshot):
            return storage.get_snapshot(resource.id)
        return resource.backend.get_connection(resource.id)
    except NotFound:
        return None


class Reconciler:
    def __init__(self, inflight: rpc.InFlightLocks, interval: float, delay: float = 0.0) -> None:
        self.inflight = inflight
        self.interval = interval
        self.delay = delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> Counter[str]:
        """One pass over every interrupted record; returns counts by outcome
        ('healed', 'busy' for those an RPC holds, 'failed')."""
        outcome: Counter[str] = Counter()
        try:
            found = recovery.interrupted()
        except StorageError as exc:
            LOG.warning("reconciler: cannot read the metadata store: %s", exc)
            outcome["failed"] += 1
            return outcome
        for resource in found:
            if self._stop.is_set():
                break
            outcome[self._heal(resource)] += 1
        if found:
            LOG.info("reconciler: %d interrupted operation(s): %s", len(found),
                     ", ".join(f"{k} {v}" for k, v in sorted(outcome.items())))  # fmt: skip
        return outcome

    def _heal(self, resource: Resource) -> str:
        try:
            with self.inflight.hold(lock_keys(resource)):
                current = _read_again(resource)
                if current is None or not recovery.is_interrupted(current):
                    return "healed"  # an RPC finished it while we looked
                recovery.heal(current)
        except errors.InFlight:
            return "busy"
        except Exception as exc:
            LOG.warning("reconciler: %s %s (%s) could not be healed; next try in %.0fs: %s",
                        resource.KIND, resource.id, resource.status, self.interval,
                        exc)  # fmt: skip
            return "failed"
        return "healed"

    def start(self) -> None:
        """Run after ``delay`` seconds, then every ``interval``, on a thread of its own."""
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self._stop.wait(self.delay)
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop after the resource being healed now, if any, waiting up to ``timeout``;
        whether it has stopped (a driver call may outlast the wait: its record says
        what was in flight, so the next start heals it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True
