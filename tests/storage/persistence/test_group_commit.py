"""Group commit: writes that arrive during a commit share the next one, each writer
gets its own outcome, and a failing write is undone alone.

To make writes queue without depending on timing, the first commit is held open
(``HeldFirstCommitSQLiteStore``, a fake on purpose: the real store, whose first
batch waits for the test's release before it runs) while the other writers arrive.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_driver.storage.exceptions import NameInUse, StoreError
from csi_driver.storage.persistence.group_commit import GroupCommit, Write
from csi_driver.storage.persistence.sqlite import SQLiteStore

WAIT = 30.0


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "the writers did not queue"
        time.sleep(0.005)


class _Threads:
    """Writers on threads of their own; the error each raised, by name."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: dict[str, BaseException | None] = {}

    def start(self, name: str, write: Callable[[], None]) -> None:
        def run() -> None:
            try:
                write()
            except BaseException as exc:
                self.errors[name] = exc
            else:
                self.errors[name] = None

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(WAIT)
            assert not thread.is_alive(), f"{thread.name} is still waiting"


class _HeldRun:
    """A batch runner that records batches and holds the first until released."""

    def __init__(self, fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, batch: list[Write]) -> None:
        if not self.batches:
            self.batches.append([])  # marks the first batch as started
            self.release.wait(WAIT)
            self.batches[0] = [w.doing for w in batch]
        else:
            self.batches.append([w.doing for w in batch])
        for write in batch:
            if write.doing in self.fail:
                write.error = ValueError(f"{write.doing} failed")


def test_writes_queued_behind_a_commit_share_the_next_one() -> None:
    run = _HeldRun(fail={"c"})
    group = GroupCommit(run)
    writers = _Threads()
    writers.start("a", lambda: group.submit(Write("a", True, lambda _: None)))
    _wait_for(lambda: bool(run.batches))
    for name in "bcd":
        writers.start(name, lambda name=name: group.submit(Write(name, True, lambda _: None)))
    _wait_for(lambda: group.pending() == 3)
    run.release.set()
    writers.join()

    assert run.batches[0] == ["a"]
    assert sorted(run.batches[1]) == ["b", "c", "d"] and len(run.batches) == 2
    sizes = [len(batch) for batch in run.batches]
    assert (len(sizes), sum(sizes), max(sizes)) == (2, 4, 3)
    # Each writer got its own outcome.
    assert writers.errors["a"] is None and writers.errors["b"] is None
    assert writers.errors["d"] is None
    assert str(writers.errors["c"]) == "c failed"


def test_a_runner_that_raises_fails_its_whole_batch_and_the_next_batch_runs() -> None:
    calls: list[int] = []

    def run(batch: list[Write]) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("disk gone")

    group = GroupCommit(run)
    with pytest.raises(RuntimeError, match="disk gone"):
        group.submit(Write("first", True, lambda _: None))
    group.submit(Write("second", True, lambda _: None))  # not stuck behind the failure
    assert calls == [1, 1]


class HeldFirstCommitSQLiteStore(SQLiteStore):
    """SQLiteStore whose first batch after ``hold()`` waits for ``release`` (fault
    injection: it makes concurrent writers queue behind a commit, deterministically);
    ``batch_sizes`` lists the writes of each commit since it was opened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.batch_sizes: list[int] = []
        super().__init__(*args, **kwargs)

    def hold(self) -> None:
        self.held = threading.Event()
        self.release = threading.Event()

    def _run_batch(self, batch: list[Write]) -> None:
        self.batch_sizes.append(len(batch))
        held = getattr(self, "held", None)
        if held is not None and not held.is_set():
            held.set()
            self.release.wait(WAIT)
        super()._run_batch(batch)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[HeldFirstCommitSQLiteStore]:
    store = HeldFirstCommitSQLiteStore(path=tmp_path / "meta.sqlite")
    yield store
    store.close()


def _volume(volume_id: str, name: str | None = None) -> dict[str, str]:
    return {"id": volume_id, "backend": "b", **({"name": name} if name else {})}


def test_a_batch_commits_every_write_but_the_one_that_failed(
    store: HeldFirstCommitSQLiteStore,
) -> None:
    """In one batch: a name taken by an earlier write of the same batch is refused
    (the check sees the batch's own writes), and the others commit."""
    store.hold()
    writers = _Threads()
    writers.start("first", lambda: store.set_volume(_volume("v0")))
    _wait_for(store.held.is_set)
    writers.start("b", lambda: store.create_unique("volume", _volume("v1", "pvc-1")))
    _wait_for(lambda: store._group.pending() == 1)  # so that b comes before c
    writers.start("c", lambda: store.create_unique("volume", _volume("v2", "pvc-1")))
    writers.start("d", lambda: store.write(volumes=[_volume("v3")], durable=False))
    writers.start("e", lambda: store.delete("volume", "v0"))
    _wait_for(lambda: store._group.pending() == 4)
    store.release.set()
    writers.join()

    assert isinstance(writers.errors["c"], NameInUse)
    assert [w for w, e in writers.errors.items() if e is not None] == ["c"]
    assert sorted(v["id"] for v in store.get_volumes()) == ["v1", "v3"]
    # The schema's commit, the held one, then b, c, d and e together.
    assert store.batch_sizes == [1, 1, 4]
    # A batch with a durable write is committed durably.
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_commit_that_fails_fails_every_write_of_its_batch_and_keeps_none(
    tmp_path: Path,
) -> None:
    """Another process holds SQLite's write lock past the store's timeout: the whole
    batch fails with StoreError, nothing of it is stored, and the store still works."""
    store = HeldFirstCommitSQLiteStore(path=tmp_path / "meta.sqlite", timeout=0.2)
    store.hold()
    blocker = sqlite3.connect(tmp_path / "meta.sqlite", isolation_level=None)
    try:
        writers = _Threads()
        writers.start("first", lambda: store.set_volume(_volume("v0")))
        _wait_for(store.held.is_set)
        for n in (1, 2):
            writers.start(f"w{n}", lambda n=n: store.set_volume(_volume(f"v{n}")))
        _wait_for(lambda: store._group.pending() == 2)
        blocker.execute("BEGIN IMMEDIATE")
        store.release.set()
        writers.join()
        assert all(isinstance(e, StoreError) for e in writers.errors.values())
        assert all("locked" in str(e) for e in writers.errors.values())
        blocker.execute("ROLLBACK")
        assert store.get_volumes() == []
        store.set_volume(_volume("v9"))
        assert [v["id"] for v in store.get_volumes()] == ["v9"]
    finally:
        blocker.close()
        store.close()
