"""Crash points: fault injection that kills this process at a named step of an operation.

Off by default. When the environment variable ``CSI_DRIVER_FAULT_CRASH_AT`` names one
of the points below, the process SIGKILLs itself the moment it reaches that point: no
``finally`` block, no atexit handler, no flush of anything but the log line saying so.
That is how a power cut or an OOM kill looks to the plugin, and the reliability tests
use it to prove that every operation interrupted between two steps heals when the CO
retries it (or when the reconciler finds it).

Every point is listed in ``POINTS`` with what has happened when the process dies there,
so a test can sweep all of them; reaching a name that is not listed is a bug (ValueError).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

LOG = logging.getLogger(__name__)

#: The environment variable naming the armed point (fault injection; never set it in production).
ENV = "CSI_DRIVER_FAULT_CRASH_AT"


def _steps(operation: str, **steps: str) -> dict[str, str]:
    return {f"{operation}.{step.replace('_', '-')}": text for step, text in steps.items()}


def _rpc_points(*names: str) -> dict[str, str]:
    return {f"rpc.{name}.before-response": f"{name} did its work; the CO got no answer"
            for name in names}  # fmt: skip


_STATE_CHANGING_RPCS = (
    "CreateVolume", "DeleteVolume", "ControllerExpandVolume", "ControllerPublishVolume",
    "ControllerUnpublishVolume", "CreateSnapshot", "DeleteSnapshot", "NodeStageVolume",
    "NodeUnstageVolume", "NodePublishVolume", "NodeUnpublishVolume", "NodeExpandVolume",
)  # fmt: skip

#: Point name -> the state the process leaves when it dies there.
POINTS: dict[str, str] = {
    # -- the storage library (controller side) ------------------------------------------
    **_steps(
        "create_volume",
        before_driver="record 'creating' stored, driver not called",
        after_driver="driver created the volume, record still 'creating'",
    ),
    **_steps(
        "create_cloned_volume",
        before_driver="clone record 'creating' stored, driver not called",
        after_driver="driver cloned the volume, record still 'creating'",
    ),
    **_steps(
        "create_volume_from_snapshot",
        before_driver="record 'creating' stored, driver not called",
        after_driver="driver created the volume from the snapshot, record still 'creating'",
    ),
    **_steps(
        "delete_volume",
        before_driver="record 'deleting' stored, driver not called",
        after_driver="driver deleted the volume, its record is still stored",
    ),
    **_steps(
        "extend_volume",
        before_driver="record 'extending' (target size noted) stored, driver not called",
        after_driver="driver grew the volume, record still 'extending' at the old size",
    ),
    **_steps(
        "create_snapshot",
        before_driver="snapshot record 'creating' stored, driver not called",
        after_driver="driver made the snapshot, record still 'creating'",
    ),
    **_steps(
        "delete_snapshot",
        before_driver="snapshot record 'deleting' stored, driver not called",
        after_driver="driver deleted the snapshot, its record is still stored",
    ),
    **_steps(
        "connect",
        before_driver="connection record 'connecting' stored, nothing exported",
        after_export="driver exported the volume, connection not initialized",
        after_driver="connection initialized on the backend, record still 'connecting'",
    ),
    **_steps(
        "disconnect",
        before_driver="connection record 'disconnecting' stored, driver not called",
        after_terminate="connection terminated on the backend, export not removed",
        after_driver="export removed, connection record still stored",
    ),
    # -- the node service ---------------------------------------------------------------
    **_steps(
        "node_stage",
        record_stored="stage record 'staging' stored, nothing attached",
        after_attach="volume attached (and loop device made), not recorded yet",
        before_mkfs="device attached and recorded, blank, mkfs not started",
        during_mkfs="mkfs killed half-way together with the plugin",
        after_mkfs="filesystem made, not mounted",
        after_mount="staging path mounted, record still 'staging'",
    ),
    **_steps(
        "node_unstage",
        after_unmount="staging path unmounted, device still attached",
        after_detach="device detached, stage record still stored",
    ),
    **_steps(
        "node_publish",
        record_stored="target recorded as 'publishing', path not created",
        after_target="target path created, nothing mounted",
        after_mount="target bind-mounted, record still 'publishing'",
    ),
    **_steps(
        "node_unpublish",
        after_unmount="target unmounted, path not removed",
        after_remove="target removed, record still lists it",
    ),
    # -- every state-changing RPC, after its work, before the answer ----------------------
    **_rpc_points(*_STATE_CHANGING_RPCS),
}


def reach(name: str) -> None:
    """Die here when ``name`` is the armed point; otherwise do nothing."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(ENV) == name:
        _die(name)


def run_killed_midway(args: list[str], name: str, after: float = 0.05) -> None:
    """When ``name`` is armed: start ``args``, let it run ``after`` seconds, then kill it
    and this process together (a crash in the middle of a tool such as mkfs)."""
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name!r}")
    if os.environ.get(ENV) != name:
        return
    child = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)  # fmt: skip
    time.sleep(after)
    child.kill()
    child.wait()
    _die(name)


def _die(name: str) -> None:
    LOG.critical("fault injection: crash point %s reached (%s); SIGKILL now", name, POINTS[name])
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
