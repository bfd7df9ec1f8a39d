"""Group commit: writes that arrive while a commit runs share the next one.

A store whose durability costs one fsync per commit (SQLite with ``synchronous``
FULL) would otherwise serialize its writers on that fsync: each waits for the
store's write lock, and SQLite's own wait for it sleeps in steps of 1 to 100 ms.
Here the writers of one process queue instead. The first becomes the leader and
commits what is queued; the writes that arrive meanwhile wait on a condition (woken
at once, not after a sleep) and the next leader commits them all in one
transaction, with one fsync. No extra thread: a leader is a writer whose own write
is still pending when no commit runs.

Every writer returns only once the commit holding its write has ended, with that
write's own outcome: one that fails is undone alone (the store runs each write of a
batch in a savepoint) and the others still commit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Write:
    """One caller's write: ``apply(connection)`` runs inside the batch's transaction;
    ``durable=False`` lets a batch of only such writes skip its fsync."""

    doing: str
    durable: bool
    apply: Callable[[Any], None]
    error: BaseException | None = None
    done: bool = field(default=False, repr=False)


class GroupCommit:
    """Queues writes and has them committed in batches by ``run(batch)``, which must
    set each write's ``error`` (None when it committed) and must not raise."""

    def __init__(self, run: Callable[[list[Write]], None]) -> None:
        self._run = run
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Write] = []
        self._leading = False

    def submit(self, write: Write) -> None:
        """Commit ``write`` (with whatever else is queued); raise its error, if any."""
        with self._cond:
            self._pending.append(write)
            while self._leading and not write.done:
                self._cond.wait()
            if not write.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if not write.done:
            self._lead(batch)
        if write.error is not None:
            raise write.error

    def _lead(self, batch: list[Write]) -> None:
        try:
            self._run(batch)
        except BaseException as exc:  # run() broke its contract: fail the whole batch
            for write in batch:
                write.error = write.error or exc
        finally:
            with self._cond:
                for write in batch:
                    write.done = True
                self._leading = False
                self._cond.notify_all()

    def pending(self) -> int:
        """Writes queued behind the running commit."""
        with self._cond:
            return len(self._pending)
