"""The SQLite store with a commit log, for benchmarks/fsyncs.py (instrumentation only).

The plugin loads it by dotted path (``storage: counting_store.CommitCountingSQLiteStore``,
this directory on ``PYTHONPATH``). It is the real store; it only appends the time of
each commit (a batch of grouped writes) that changed something to ``commit_log``, so
commits can be matched to the RPC that made them. A transaction that changed nothing
writes no WAL frame and costs no fsync, so it is not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from csi_driver.storage.persistence.sqlite import SQLiteStore

if TYPE_CHECKING:  # not in a baseline older than group commit
    from csi_driver.storage.persistence.group_commit import Write


class CommitCountingSQLiteStore(SQLiteStore):
    """SQLiteStore that logs one line (a wall-clock time) per commit that changed rows."""

    def __init__(self, path: str, commit_log: str, **options: Any) -> None:
        self._commit_log = os.open(commit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        super().__init__(path, **options)

    def _run_batch(self, batch: list[Write]) -> None:
        conn = self._conn()
        before = conn.total_changes
        super()._run_batch(batch)
        if any(write.error is None for write in batch) and conn.total_changes != before:
            self._log_commit()

    # A baseline older than group commit (make bench) commits in ``_transaction``.
    if hasattr(SQLiteStore, "_transaction"):

        @contextmanager
        def _transaction(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            conn = self._conn()
            before = conn.total_changes
            with super()._transaction(*args, **kwargs) as conn:  # type: ignore[misc]
                yield conn
            if conn.total_changes != before:
                self._log_commit()

    def _log_commit(self) -> None:
        os.write(self._commit_log, f"{time.time():.6f}\n".encode())

    def close(self) -> None:
        super().close()
        if self._commit_log >= 0:
            os.close(self._commit_log)
            self._commit_log = -1
