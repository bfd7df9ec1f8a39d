"""The controller's backends, started once, off the gRPC accept path.

Importing Cinder and running each driver's ``do_setup`` takes most of a second, more
for an array slow to answer (a Ceph cluster that does not answer: its connect timeouts
and retries). So the CSI server listens first and the backends start meanwhile:
Identity.Probe answers not ready, and the log says why, until every backend is up; the
controller's RPCs get UNAVAILABLE until then (the CSI sidecars wait for a ready Probe
before their first call). A backend that cannot start ends the process (exit code 2,
naming it) once the server is stopped.

Cinder is imported on the server's main thread once it listens (``start``); the
drivers' ``do_setup`` runs on a daemon thread that nobody joins, as one may hang past
the shutdown's grace.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from csi_driver import errors, storage
from csi_driver.config import PluginConfig
from csi_driver.storage import connector

LOG = logging.getLogger(__name__)


class BackendStartup:
    """Starts the configured backends on its own thread; ``backends`` lists those up."""

    def __init__(
        self, config: PluginConfig, mode: str, on_end: Callable[[], None] = lambda: None
    ) -> None:
        self.config = config
        self.mode = mode
        self.backends: list[storage.Backend] = []
        self.failure: BaseException | None = None
        self._on_end = on_end
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._started_at = 0.0

    def start(self) -> None:
        """Import what the backends need on the calling thread (the server's main thread,
        once it listens), then start them on a thread of their own."""
        self._started_at = time.monotonic()
        names = ", ".join(b.name for b in self.config.backends) or "none"
        LOG.info("starting backends: %s; Probe answers not ready until they are up", names)
        try:
            self._import()
        except BaseException as exc:
            self._end(exc)
            return
        threading.Thread(target=self._run, name="backend-startup", daemon=True).start()

    def _import(self) -> None:
        """os-brick (all mode), then Cinder, on the caller's thread, which must never be
        joined (they import eventlet: see ``storage/connector.py``): the main thread's
        memory then holds them, as a process that never started a thread would (a
        thread of its own would keep ~1-2 MiB more, measured)."""
        if self.mode == "all":
            # Before Cinder (which imports parts of it): a node call needing os-brick
            # meanwhile waits for this load instead of importing beside it.
            connector.prepare()
        if self.config.backends:
            from csi_driver.storage import cinder_adapter  # noqa: F401 - imported here

    def _run(self) -> None:
        failure = None
        try:
            for backend in self.config.backends:
                if self._cancel.is_set():
                    break
                self.backends.append(storage.Backend(
                    volume_backend_name=backend.name, volume_driver=backend.driver,
                    **dict(backend.options),
                ))  # fmt: skip
        except BaseException as exc:
            failure = exc
        self._end(failure)

    def _end(self, failure: BaseException | None) -> None:
        if failure is not None:
            self.failure = failure
            LOG.error("backends: the start-up failed after %.1fs: %s", self._elapsed(), failure)
        elif not self._cancel.is_set():
            LOG.info("backends up in %.2fs: %s", self._elapsed(),
                     ", ".join(b.name for b in self.backends) or "none")  # fmt: skip
        self._done.set()
        self._on_end()

    def _elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def done(self) -> bool:
        """Whether the start-up has ended, well or not."""
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for the start-up to end; whether it has."""
        return self._done.wait(timeout)

    def cancel(self) -> None:
        """Start no further backend (shutdown); the one starting now cannot be stopped."""
        self._cancel.set()

    def not_ready(self) -> str | None:
        """Why the controller cannot serve yet, or None once every backend is up."""
        if self.failure is not None:
            return f"the backends' start-up failed: {self.failure}"
        up = {b.name for b in self.backends}
        waiting = ", ".join(b.name for b in self.config.backends if b.name not in up)
        if not self._done.is_set():
            return f"backends still starting ({self._elapsed():.1f}s): {waiting}"
        if waiting:
            return f"the start-up was cancelled before these backends started: {waiting}"
        return None

    def require(self) -> None:
        """Raise ``errors.Unavailable`` (the CO retries) until every backend is up."""
        reason = self.not_ready()
        if reason is not None:
            raise errors.Unavailable(reason)
