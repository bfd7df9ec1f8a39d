"""The plugin's embedded metadata store: one SQLite file on the host.

Why SQLite: it survives restarts of the plugin without any service to run, WAL
mode lets readers go on while a writer commits, and a transaction gives
``write`` its atomicity for free. Each kind has its own table with the filter
columns indexed and the record itself as JSON text; reads are one query each.

Durability (WAL mode). ``synchronous`` FULL, the default, fsyncs the WAL at each
commit: an acknowledged write survives a process crash and a power loss, one fsync a
commit. NORMAL fsyncs the WAL only at checkpoints: a commit survives a process crash
(it is in the OS's cache) but a power loss or OS crash may undo the last commits
(never partly, never out of order: the file stays consistent). A write with
``durable=False`` is committed as NORMAL under FULL: the next durable commit's fsync
carries it, since the WAL holds commits in order.

Record contents are never logged: connection records can hold CHAP secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from csi_driver.storage.exceptions import InvalidArgument, NameInUse, StoreError
from csi_driver.storage.persistence.base import (
    CONNECTION,
    SNAPSHOT,
    VOLUME,
    MetadataStore,
    Page,
    Record,
    check_filters,
    check_key,
    check_kind,
    check_removals,
    check_unique_create,
    check_value,
    decode_records,
    encode_record,
    issue_token,
    read_token,
)
from csi_driver.storage.persistence.group_commit import GroupCommit, Write

LOG = logging.getLogger(__name__)

#: Filter columns stored next to the JSON text of each kind, after ``id``.
_COLUMNS: dict[str, tuple[str, ...]] = {
    VOLUME: ("backend", "name"),
    SNAPSHOT: ("backend", "volume_id", "name"),
    CONNECTION: ("backend", "volume_id"),
}
_TABLES = {VOLUME: "volumes", SNAPSHOT: "snapshots", CONNECTION: "connections"}


def _table_ddl(kind: str) -> list[str]:
    # ``pos INTEGER PRIMARY KEY`` is the rowid made explicit: upserts keep it, so
    # ORDER BY pos is "first stored" order, and unlike a hidden rowid VACUUM keeps it.
    table = _TABLES[kind]
    cols = "".join(
        f", {col} TEXT" + (" NOT NULL" if col != "name" else "") for col in _COLUMNS[kind]
    )
    ddl = [
        f"CREATE TABLE {table} (pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE{cols}, "
        "data TEXT NOT NULL)"
    ]
    ddl += [f"CREATE INDEX {table}_{col} ON {table} ({col})" for col in _COLUMNS[kind]]
    return ddl


#: Statements that bring a file from version N-1 to N (PRAGMA user_version).
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        *_table_ddl(VOLUME),
        *_table_ddl(SNAPSHOT),
        *_table_ddl(CONNECTION),
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # Paged listing filtered by backend or volume walks (filter, id) in id order:
    # O(page), where the single-column indexes would sort every match per page.
    2: [
        f"CREATE INDEX {_TABLES[kind]}_{col}_id ON {_TABLES[kind]} ({col}, id)"
        for kind in _TABLES
        for col in _COLUMNS[kind]
        if col in ("backend", "volume_id")
    ],
}
SCHEMA_VERSION = max(_MIGRATIONS)


def _upsert_sql(kind: str) -> str:
    cols = ("id", *_COLUMNS[kind], "data")
    placeholders = ", ".join("?" * len(cols))
    updates = ", ".join(f"{col} = excluded.{col}" for col in cols[1:])
    # Not INSERT OR REPLACE: that deletes the old row, and its position with it.
    return (
        f"INSERT INTO {_TABLES[kind]} ({', '.join(cols)}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT(id) DO UPDATE SET {updates}"
    )


_UPSERT = {kind: _upsert_sql(kind) for kind in _TABLES}
_SYNCHRONOUS = ("FULL", "NORMAL")
#: Volume ids per ``IN (...)`` query: well under SQLite's bound on parameters.
_IN_CHUNK = 500


#: Files SQLite keeps beside the database in WAL mode.
_WAL_SUFFIXES = ("-wal", "-shm")
#: Permission bits of group and others.
_SHARED_BITS = 0o077


def _check_directory(path: str, directory: str) -> None:
    """Warn when others may enter the store's directory: they can see its files come
    and go, and any file a tool leaves there readable is theirs to read."""
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & _SHARED_BITS:
        LOG.warning("metadata store %s: its directory %s is open to group or others "
                    "(mode %04o); make it 0700", path, directory, mode)  # fmt: skip


def _private_files(path: str) -> None:
    """Make the database file mode 0600 (creating it so, before SQLite would create it
    0644 under the usual umask), and take group and other permissions off an existing
    one and its -wal and -shm files: connection records can hold CHAP secrets.

    SQLite creates the -wal and -shm files with the database file's permissions.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"metadata store {path}: cannot open: {exc.strerror}") from exc
    os.close(fd)
    for name in (path, *(path + suffix for suffix in _WAL_SUFFIXES)):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if not mode & _SHARED_BITS:
            continue
        try:
            os.chmod(name, mode & ~_SHARED_BITS)
        except OSError as exc:
            LOG.warning("metadata store %s: %s is open to group or others (mode %04o) and "
                        "cannot be made private: %s", path, name, mode, exc.strerror)  # fmt: skip
        else:
            LOG.warning("metadata store %s: %s was open to group or others (mode %04o); "
                        "made it %04o", path, name, mode, mode & ~_SHARED_BITS)  # fmt: skip


class SQLiteStore(MetadataStore):
    """Records in one SQLite file (WAL mode), one connection per thread."""

    name = "sqlite"

    def __init__(
        self, path: str | os.PathLike[str], timeout: float = 30, synchronous: str = "FULL"
    ) -> None:
        """Open (creating if needed) the store at ``path``; its directory must exist.

        ``timeout`` is how long, in seconds, to wait for another writer before
        failing with StoreError; ``synchronous`` is FULL (an acknowledged write
        survives a power loss) or NORMAL (no fsync per commit; a power loss may lose
        the last commits): see the module's docstring.
        """
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise InvalidArgument(f"sqlite store option 'path' must be a file path, got {path!r}")
        self.path = os.path.abspath(os.fspath(path))
        if os.fspath(path) == ":memory:" or os.fspath(path).startswith("file:"):
            raise InvalidArgument(
                "sqlite store option 'path' must be a file path (use storage 'memory' "
                f"for a store in memory), got {path!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidArgument(
                f"sqlite store option 'timeout' must be a number of seconds >= 0, got {timeout!r}"
            )
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS:
            raise InvalidArgument(
                f"sqlite store option 'synchronous' must be one of {_SYNCHRONOUS}, "
                f"got {synchronous!r}"
            )
        self.timeout = float(timeout)
        self.synchronous = synchronous.upper()
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(
                f"metadata store {self.path}: directory {directory} does not exist "
                "(it is not created: check the configured path)"
            )
        _check_directory(self.path, directory)
        _private_files(self.path)
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns and _closed
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        self._group = GroupCommit(self._run_batch)
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    # -- connections -----------------------------------------------------------
    def _error(self, exc: sqlite3.Error, doing: str) -> StoreError:
        return StoreError(f"metadata store {self.path}: {doing}: {exc}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreError(f"metadata store {self.path} is closed")
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self.timeout,
                    isolation_level=None,  # autocommit; transactions are explicit
                    check_same_thread=False,  # only so that close() may close it
                )
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            except sqlite3.Error as exc:
                raise self._error(exc, "cannot open") from exc
            self._local.synchronous = self.synchronous
            # Connections of threads that ended will never be used again.
            alive = []
            for thread, old in self._conns:
                if thread.is_alive():
                    alive.append((thread, old))
                else:
                    old.close()
            alive.append((threading.current_thread(), conn))
            self._conns = alive
        self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close the connections of every thread; later calls raise StoreError."""
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for _, conn in conns:
            conn.close()

    def _write(
        self, doing: str, apply: Callable[[sqlite3.Connection], None], durable: bool = True
    ) -> None:
        """Run ``apply(connection)`` in a write transaction, grouped with the writes other
        threads make meanwhile (``group_commit``); return once it is committed, or raise
        its own error (an SQLite one as StoreError saying what was being done).

        Not ``durable`` (with synchronous FULL): when every write of the batch is so, the
        commit is made with synchronous NORMAL, written to the WAL without its fsync; the
        next FULL commit's fsync of the WAL, which holds the commits in order, takes it
        along.
        """
        self._group.submit(Write(doing, durable, apply))

    def _run_batch(self, batch: list[Write]) -> None:
        """Commit a batch in one transaction (BEGIN IMMEDIATE takes SQLite's write lock
        up front, against other processes). A lone write fails with the transaction;
        in a batch of several, each runs in a savepoint, so one that fails is undone
        alone. Sets each write's ``error``; never raises."""
        try:
            conn = self._conn()
            self._set_synchronous(conn, durable=any(write.durable for write in batch))
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, StoreError) as exc:
            for write in batch:
                write.error = self._failure(exc, write.doing)
            return
        try:
            if len(batch) == 1:
                batch[0].apply(conn)
            else:
                for write in batch:
                    conn.execute("SAVEPOINT grouped")
                    try:
                        write.apply(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO grouped")
                        write.error = self._failure(exc, write.doing)
                    conn.execute("RELEASE grouped")
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            for write in batch:
                if write.error is None:
                    write.error = self._failure(exc, write.doing)

    def _failure(self, exc: BaseException, doing: str) -> BaseException:
        """What a writer raises: SQLite's errors as StoreError, the rest as they are."""
        if not isinstance(exc, sqlite3.Error):
            return exc
        error = self._error(exc, doing)
        error.__cause__ = exc
        return error

    def _set_synchronous(self, conn: sqlite3.Connection, durable: bool) -> None:
        """Give the connection the ``synchronous`` setting this commit needs (kept per
        connection, so the PRAGMA runs only on a change); a connection that cannot be
        set is closed, never used with the wrong one."""
        wanted = self.synchronous if durable else "NORMAL"
        if getattr(self._local, "synchronous", None) == wanted:
            return
        try:
            conn.execute(f"PRAGMA synchronous = {wanted}")
        except sqlite3.Error as exc:
            self._local.conn = None
            conn.close()
            raise self._error(exc, "cannot set synchronous") from exc
        self._local.synchronous = wanted

    def _prepare(self) -> None:
        """Turn WAL on and create or check the schema."""
        conn = self._conn()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot open") from exc
        if str(mode).lower() != "wal":
            raise StoreError(
                f"metadata store {self.path}: cannot use WAL journal mode (got {mode!r}); "
                "is it on a network file system?"
            )
        self._write("cannot set up the schema", self._migrate)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema to SCHEMA_VERSION (inside the write transaction)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"metadata store {self.path}: schema version {version} is newer than "
                f"{SCHEMA_VERSION}, the newest this plugin knows; was it written by a "
                "newer release?"
            )
        if version == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables:
                raise StoreError(
                    f"metadata store {self.path}: the database holds tables but no "
                    "schema version; it was not made by this plugin"
                )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            LOG.info(
                "metadata store %s: schema version %d -> %d", self.path, version, SCHEMA_VERSION
            )

    # -- reads ---------------------------------------------------------------
    def _select(
        self, kind: str, record_id: str | None, filters: dict[str, str | None]
    ) -> list[Record]:
        filters = {"id": record_id, **filters}
        check_filters(**filters)
        given = [(col, value) for col, value in filters.items() if value is not None]
        where = " AND ".join(f"{col} = ?" for col, _ in given) or "1"
        sql = f"SELECT data FROM {_TABLES[kind]} WHERE {where} ORDER BY pos"  # noqa: S608 - constants only
        with self._reading(kind, f"cannot read {kind} records"):
            # Decode while iterating: holding every row's text next to its decoded
            # record would double the memory of a bulk read.
            cursor = self._conn().execute(sql, [value for _, value in given])
            return decode_records(data for (data,) in cursor)

    def _list_page(self, kind: str, limit: int, token: str, filters: dict[str, str]) -> Page:
        given = list(filters.items())
        if token:
            given.insert(0, ("id", read_token(kind, token)))
        where = " AND ".join(f"{col} {'>' if col == 'id' else '='} ?" for col, _ in given) or "1"
        sql = f"SELECT id, data FROM {_TABLES[kind]} WHERE {where} ORDER BY id LIMIT ?"  # noqa: S608
        with self._reading(kind, f"cannot list {kind} records"):
            rows = self._conn().execute(sql, [v for _, v in given] + [limit + 1]).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            records = decode_records(data for _, data in rows)
        return Page(records, issue_token(kind, rows[-1][0]) if more and rows else "")

    def _read_connections(self, volume_ids: list[str]) -> list[Record]:
        texts: list[str] = []
        with self._reading(CONNECTION, "cannot read connection records"):
            conn = self._conn()
            for start in range(0, len(volume_ids), _IN_CHUNK):
                chunk = volume_ids[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = f"SELECT data FROM connections WHERE volume_id IN ({marks}) ORDER BY pos"  # noqa: S608
                texts.extend(data for (data,) in conn.execute(sql, chunk))
            return decode_records(texts)

    @contextmanager
    def _reading(self, kind: str, doing: str) -> Iterator[None]:
        """A read: SQLite's errors and records that are not JSON become StoreError."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(exc, doing) from exc
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"metadata store {self.path}: a {kind} record is not valid JSON: {exc}"
            ) from exc

    # -- writes --------------------------------------------------------------
    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        row = (record["id"], *(record.get(col) for col in _COLUMNS[kind]), text)
        table = _TABLES[kind]

        # Inside the write transaction (BEGIN IMMEDIATE holds the write lock from the
        # name check to the insert), so two writers cannot both find the name free.
        def insert(conn: sqlite3.Connection) -> None:
            holder = conn.execute(
                f"SELECT id FROM {table} WHERE name = ? ORDER BY pos LIMIT 1",  # noqa: S608
                (name,),
            ).fetchone()
            if holder is not None:
                raise NameInUse(kind, name, holder[0])
            if conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (record["id"],)).fetchone():  # noqa: S608
                raise InvalidArgument(f"a {kind} with id {record['id']!r} already exists")
            conn.execute(_UPSERT[kind], row)

        self._write(f"cannot create a {kind} record", insert)

    def write(
        self,
        *,
        volumes: Iterable[Record] = (),
        snapshots: Iterable[Record] = (),
        connections: Iterable[Record] = (),
        remove: Iterable[tuple[str, str]] = (),
        durable: bool = True,
    ) -> None:
        # Validate everything before the transaction, so a bad record costs no lock.
        batch: dict[str, list[tuple[Any, ...]]] = {}
        for kind, records in ((VOLUME, volumes), (SNAPSHOT, snapshots), (CONNECTION, connections)):
            rows = batch[kind] = []
            for record in records:
                text = encode_record(kind, record)
                rows.append((record["id"], *(record.get(col) for col in _COLUMNS[kind]), text))
        written = {(kind, row[0]) for kind, rows in batch.items() for row in rows}
        removals = check_removals(remove, written)
        if not written and not removals:
            return

        def apply(conn: sqlite3.Connection) -> None:
            for kind, rows in batch.items():
                if rows:
                    conn.executemany(_UPSERT[kind], rows)
            for kind, record_id in removals:
                conn.execute(f"DELETE FROM {_TABLES[kind]} WHERE id = ?", (record_id,))  # noqa: S608

        self._write("cannot write records", apply, durable)

    def delete(self, kind: str, record_id: str, *, durable: bool = True) -> None:
        check_kind(kind)
        sql = f"DELETE FROM {_TABLES[kind]} WHERE id = ?"  # noqa: S608
        self._write(f"cannot delete a {kind} record",
                    lambda conn: conn.execute(sql, (record_id,)), durable)  # fmt: skip

    # -- key/value -----------------------------------------------------------
    def get_value(self, key: str) -> str | None:
        check_key(key)
        try:
            row = self._conn().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot read a value") from exc
        return None if row is None else row[0]

    def set_value(self, key: str, value: str) -> None:
        check_value(key, value)
        sql = (
            "INSERT INTO kv (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        self._write("cannot write a value", lambda conn: conn.execute(sql, (key, value)))

    def get_values(self) -> dict[str, str]:
        try:
            return dict(self._conn().execute("SELECT key, value FROM kv ORDER BY key"))
        except sqlite3.Error as exc:
            raise self._error(exc, "cannot read values") from exc

    def delete_value(self, key: str) -> None:
        check_key(key)
        sql = "DELETE FROM kv WHERE key = ?"
        self._write("cannot delete a value", lambda conn: conn.execute(sql, (key,)))
