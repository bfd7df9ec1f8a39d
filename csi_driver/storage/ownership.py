"""Which process an operation in a record belongs to, and whether it can still be running.

Why: a record left transitional (``creating``, ``deleting``...) used to mean "the
process died mid-operation" because one controller process owned the store. With
replicas sharing an etcd or Kubernetes store, it may equally mean "another replica
is doing it right now"; healing it then would undo a live operation. So every
operation a record carries names its owner, and an operation is judged abandoned
only when:

- it is this process's own (its RPC locks guarantee it is not running here now), or
- its owner ran on this machine (same host name and boot) and that process is gone
  (its pid is free or now belongs to a process started at another time), or
- its owner is elsewhere and the operation started more than ``stale_operation_seconds``
  ago (setup option, default 900): another machine's liveness cannot be seen, so
  age is the only evidence.

Records written before owners existed count as abandoned, as they always did.
"""

from __future__ import annotations

import functools
import os
import socket
from datetime import UTC, datetime
from typing import Any


@functools.cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    """When ``pid`` started, in clock ticks since boot; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


_identity: dict[str, Any] = {}


def this_process() -> dict[str, Any]:
    """The owner stamp of operations this process starts (fresh after a fork)."""
    pid = os.getpid()
    if _identity.get("pid") != pid:
        _identity.clear()
        _identity.update(host=socket.gethostname(), boot=_boot_id(), pid=pid,
                         start=_start_ticks(pid) or "")  # fmt: skip
    return dict(_identity)


def _age_seconds(started_at: Any) -> float | None:
    if not isinstance(started_at, str):
        return None
    try:
        stamp = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (datetime.now(UTC) - stamp).total_seconds()


def is_abandoned(operation: Any, stale_after: float) -> bool:
    """Whether the operation a record carries can no longer be running anywhere."""
    if not isinstance(operation, dict):
        return True
    owner = operation.get("owner")
    if not isinstance(owner, dict):
        return True
    me = this_process()
    if owner == me:
        return True
    if owner.get("host") == me["host"] and owner.get("boot") == me["boot"] and me["boot"]:
        pid = owner.get("pid")
        return not isinstance(pid, int) or _start_ticks(pid) != owner.get("start")
    age = _age_seconds(operation.get("started_at"))
    return age is None or age > stale_after
