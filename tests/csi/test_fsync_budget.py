"""Each controller RPC makes exactly the fsyncs and store commits crash safety needs.

``benchmarks/fsyncs.py`` runs a real controller process (FileDriver + SQLite) under
``strace -f`` and charges every fsync (by file) and every store commit to the RPC that
made it. ``BUDGET`` is the minimum, each entry with its reason: more is a redundant
fsync or commit; fewer means a durability step is gone (RELIABILITY.md says which
record or file each one protects). Change an entry only with its reason.

Every operation stores its intent durably before the driver acts (so a power loss never
leaves what the driver made without a record). Its last write is durable when recovery
would otherwise undo what the CO was told is done (create, publish, snapshot); it is a
write without ``durable`` (no fsync of its own) when the intent record makes recovery
finish the operation instead (delete, expand, unpublish).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import fsyncs  # benchmarks/fsyncs.py

#: Counted rounds (after a warm-up round): few enough that no WAL checkpoint falls in.
ROUNDS = 3
#: SQLite fsyncs the database's directory once per connection, at its first sync of the
#: WAL; the store opens a connection per thread, and gRPC starts up to this many worker
#: threads (csi_driver/server.py), a new one when a call comes before the last is idle.
WORKER_THREADS = 10


class Budget(NamedTuple):
    commits: int
    fsyncs: dict[str, int]
    why: str


BUDGET = {
    "CreateVolume": Budget(2, {"sqlite-wal": 2, "volume-dir": 1},
        "'creating' durable before the driver; the file's name and size (one directory "
        "fsync: a blank sparse file has no data); 'available' durable before the answer"),
    "ControllerExpandVolume": Budget(2, {"sqlite-wal": 1, "volume-file": 1},
        "'extending' to the size durable first; the file's new size; the result needs no "
        "fsync: recovery finishes an 'extending' record to the size noted"),
    "CreateSnapshot": Budget(2, {"sqlite-wal": 2, "volume-file": 1, "volume-dir": 1},
        "'creating' durable first; the copy's data, then its name; 'available' durable "
        "before the answer (recovery would undo a 'creating' snapshot)"),
    "ControllerPublishVolume": Budget(2, {"sqlite-wal": 2},
        "'connecting' durable before the export; 'connected' durable before the answer "
        "(the reconciler would undo a 'connecting' connection the node uses)"),
    "ControllerUnpublishVolume": Budget(2, {"sqlite-wal": 1},
        "'disconnecting' durable first; the removal and the volume's status in one write "
        "without fsync: recovery finishes a 'disconnecting' connection"),
    "DeleteSnapshot": Budget(2, {"sqlite-wal": 1, "volume-dir": 1},
        "'deleting' durable first; the unlink durable before the removal (else a power "
        "loss could leave a file no record names); the removal without fsync"),
    "DeleteVolume": Budget(2, {"sqlite-wal": 1, "volume-dir": 1},
        "as DeleteSnapshot"),
}  # fmt: skip


@pytest.fixture(scope="module")
def counted() -> dict[str, fsyncs.Counts]:
    """The rounds counted once per ``synchronous`` setting, for every test here."""
    return {sync: fsyncs.count(rounds=ROUNDS, synchronous=sync) for sync in ("FULL", "NORMAL")}


def _per_call(counts: fsyncs.Counts, rpc: str) -> list[tuple[int, dict[str, int]]]:
    """Each call's commits and fsyncs by file, but for a new connection's one-off."""
    return [(c.commits, {k: n for k, n in c.fsyncs.items() if k != "sqlite-dir"})
            for c in counts.calls if c.rpc == rpc]  # fmt: skip


@pytest.mark.parametrize("rpc", list(BUDGET))
def test_each_call_makes_the_budgeted_fsyncs_and_commits(
    counted: dict[str, fsyncs.Counts], rpc: str
) -> None:
    budget = BUDGET[rpc]
    assert _per_call(counted["FULL"], rpc) == [(budget.commits, budget.fsyncs)] * ROUNDS, (
        f"{rpc} (synchronous FULL, the default) should make {budget.commits} commits and "
        f"fsync {budget.fsyncs}: {budget.why}"
    )


@pytest.mark.parametrize("rpc", list(BUDGET))
def test_synchronous_normal_drops_only_the_commits_fsyncs(
    counted: dict[str, fsyncs.Counts], rpc: str
) -> None:
    """The documented knob: NORMAL commits without fsync; the driver's stay."""
    budget = BUDGET[rpc]
    driver_only = {k: n for k, n in budget.fsyncs.items() if not k.startswith("sqlite")}
    assert _per_call(counted["NORMAL"], rpc) == [(budget.commits, driver_only)] * ROUNDS


def test_nothing_fsyncs_or_commits_between_calls(counted: dict[str, fsyncs.Counts]) -> None:
    for counts in counted.values():
        assert (counts.outside_fsyncs, counts.outside_commits) == (Counter(), 0)
        assert sorted(Counter(c.rpc for c in counts.calls).values()) == [ROUNDS] * len(BUDGET)


def test_directory_fsyncs_of_new_connections_are_one_off(
    counted: dict[str, fsyncs.Counts],
) -> None:
    for counts in counted.values():
        assert sum(c.fsyncs["sqlite-dir"] for c in counts.calls) <= WORKER_THREADS
