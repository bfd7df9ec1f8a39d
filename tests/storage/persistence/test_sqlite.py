"""What SQLiteStore promises beyond the shared contract: a file that lasts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from csi_driver.storage.exceptions import InvalidArgument, StoreError
from csi_driver.storage.persistence.sqlite import SCHEMA_VERSION, SQLiteStore

REPO = Path(__file__).resolve().parents[3]


def run_python(code: str, *args: str) -> str:
    """Run ``code`` in a separate interpreter (the venv's) and return its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "metadata.db"


def test_data_survives_close_and_reopen(db: Path) -> None:
    store = SQLiteStore(path=db)
    store.write(
        volumes=[
            {"id": "v1", "backend": "lvm", "name": "a", "size": 1},
            {"id": "v2", "backend": "lvm", "name": "b"},
        ],
        snapshots=[{"id": "s1", "backend": "lvm", "volume_id": "v1"}],
        connections=[
            {"id": "c1", "backend": "lvm", "volume_id": "v1", "auth": {"password": "s3cr3t"}}
        ],
    )
    store.set_volume({"id": "v1", "backend": "lvm", "name": "a", "size": 2})
    store.set_value("k", "v")
    store.close()

    reopened = SQLiteStore(path=str(db))
    try:
        assert reopened.get_volumes() == [
            {"id": "v1", "backend": "lvm", "name": "a", "size": 2},
            {"id": "v2", "backend": "lvm", "name": "b"},
        ]
        assert reopened.get_snapshots(volume_id="v1")[0]["id"] == "s1"
        assert reopened.get_connections()[0]["auth"] == {"password": "s3cr3t"}
        assert reopened.get_value("k") == "v"
        reopened.set_volume({"id": "v0", "backend": "lvm"})  # new records still go last
        assert [v["id"] for v in reopened.get_volumes()] == ["v1", "v2", "v0"]
    finally:
        reopened.close()


WRITER = """
import sys
from csi_driver.storage.persistence.sqlite import SQLiteStore
store = SQLiteStore(path=sys.argv[1])
store.write(volumes=[{"id": "from-child", "backend": "lvm", "name": "ünï"}],
            connections=[{"id": "c-child", "backend": "lvm", "volume_id": "from-child"}])
store.set_value("child", "was here")
store.close()
"""

READER = """
import json, sys
from csi_driver.storage.persistence.sqlite import SQLiteStore
store = SQLiteStore(path=sys.argv[1])
print(json.dumps({"volumes": store.get_volumes(), "value": store.get_value("parent")}))
store.close()
"""


def test_another_process_reads_what_this_one_wrote(db: Path) -> None:
    store = SQLiteStore(path=db)
    store.set_volume({"id": "from-parent", "backend": "lvm", "name": None, "n": [1]})
    store.set_value("parent", "was here")
    # The store stays open: the child must see committed data, not wait for close().
    try:
        seen = json.loads(run_python(READER, str(db)))
    finally:
        store.close()
    assert seen == {
        "volumes": [{"id": "from-parent", "backend": "lvm", "name": None, "n": [1]}],
        "value": "was here",
    }


def test_this_process_reads_what_another_one_wrote(db: Path) -> None:
    store = SQLiteStore(path=db)
    store.set_volume({"id": "mine", "backend": "lvm"})
    try:
        run_python(WRITER, str(db))
        # The already open store sees the other process's commit...
        assert [v["id"] for v in store.get_volumes()] == ["mine", "from-child"]
    finally:
        store.close()
    # ...and so does a fresh one.
    fresh = SQLiteStore(path=db)
    try:
        assert fresh.get_volumes(name="ünï") == [
            {"id": "from-child", "backend": "lvm", "name": "ünï"}
        ]
        assert fresh.get_connections(volume_id="from-child")[0]["id"] == "c-child"
        assert fresh.get_value("child") == "was here"
    finally:
        fresh.close()


def test_wal_mode_is_on(db: Path) -> None:
    SQLiteStore(path=db).close()
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        raw.close()


def test_newer_schema_is_refused(db: Path) -> None:
    SQLiteStore(path=db).close()
    raw = sqlite3.connect(db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match=str(SCHEMA_VERSION + 1)) as info:
        SQLiteStore(path=db)
    assert str(db) in str(info.value)
    raw = sqlite3.connect(db)  # and the file was left alone
    assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    raw.close()


def test_file_that_is_not_a_database_is_refused(db: Path) -> None:
    garbage = b"this is not a SQLite database, just some text\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(StoreError, match="not a database") as info:
        SQLiteStore(path=db)
    assert str(db) in str(info.value)
    assert db.read_bytes() == garbage


def test_database_of_another_program_is_refused(db: Path) -> None:
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE volumes (something_else TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(StoreError, match="not made by this plugin") as info:
        SQLiteStore(path=db)
    assert str(db) in str(info.value)


def test_missing_directory_is_refused_not_created(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "metadata.db"
    with pytest.raises(StoreError, match="does not exist") as info:
        SQLiteStore(path=path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "no").exists()


def test_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as info:
        SQLiteStore(path=tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "options",
    [
        {"path": ":memory:"},
        {"path": ""},
        {"path": 3},
        {"path": "x.db", "timeout": -1},
        {"path": "x.db", "timeout": "30"},
        {"path": "x.db", "synchronous": "OFF"},
    ],
)
def test_bad_options_are_refused(tmp_path: Path, options: dict) -> None:
    with pytest.raises(InvalidArgument, match=r"'(path|timeout|synchronous)'"):
        SQLiteStore(**options)
    assert list(tmp_path.iterdir()) == []


def test_synchronous_option_is_applied(db: Path) -> None:
    store = SQLiteStore(path=db, synchronous="normal")
    try:
        # PRAGMA synchronous: 1 is NORMAL, 2 is FULL; read on the store's own connection.
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        store.close()
    store = SQLiteStore(path=db)
    try:
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        store.close()


def test_a_durable_write_after_relaxed_ones_is_committed_full(db: Path) -> None:
    """A connection keeps the setting of its last commit; the next durable commit puts
    FULL back before it commits (the fsync count is below, with alternating writes)."""
    store = SQLiteStore(path=db)
    try:
        store.write(volumes=[{"id": "v1", "backend": "lvm"}], durable=False)
        store.delete("volume", "v1", durable=False)
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        store.write(volumes=[{"id": "v2", "backend": "lvm"}])
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


KILLED_WRITER = """
import os, signal, sys
from csi_driver.storage.persistence.sqlite import SQLiteStore
store = SQLiteStore(path=sys.argv[1])
store.write(volumes=[{"id": "kept", "backend": "lvm"}], durable=False)
store.write(remove=[("volume", "gone")], durable=False)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_write_without_durable_survives_the_process_killed(db: Path) -> None:
    store = SQLiteStore(path=db)
    store.write(volumes=[{"id": "gone", "backend": "lvm"}])
    store.close()
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(db)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == -9, done.stderr
    reopened = SQLiteStore(path=db)
    try:
        assert reopened.get_volumes() == [{"id": "kept", "backend": "lvm"}]
    finally:
        reopened.close()


SYNC_COUNTER = """
import sys
from csi_driver.storage.persistence.sqlite import SQLiteStore
store = SQLiteStore(path=sys.argv[1], synchronous=sys.argv[2])
mode = sys.argv[3]  # durable, relaxed, or alternate (relaxed first)
for n in range(int(sys.argv[4])):
    durable = mode == "durable" or (mode == "alternate" and n % 2 == 1)
    store.write(volumes=[{"id": f"v{n}", "backend": "lvm"}], durable=durable)
store.close()
"""


def _syncs(db: Path, synchronous: str, durable: str, commits: int) -> int:
    """fsync-family calls of a process that opens a fresh store, commits, closes."""
    for path in db.parent.glob(db.name + "*"):
        path.unlink()
    trace = db.parent / "strace.out"
    done = subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=fsync,fdatasync,sync_file_range",
         sys.executable, "-c", SYNC_COUNTER, str(db), synchronous, durable, str(commits)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return sum(" = " in line for line in trace.read_text().splitlines())


def test_each_durable_commit_costs_one_fsync_and_others_none(db: Path) -> None:
    """synchronous FULL: one fsync of the WAL per commit; a write without ``durable``
    (and any commit with synchronous NORMAL) none, only opening and closing do."""
    assert shutil.which("strace"), "strace is needed (a Debian package: make install)"
    opening_and_closing = _syncs(db, "FULL", "durable", 0)
    assert _syncs(db, "FULL", "durable", 5) == opening_and_closing + 5
    assert _syncs(db, "FULL", "relaxed", 5) == opening_and_closing
    assert _syncs(db, "FULL", "alternate", 6) == opening_and_closing + 3
    assert _syncs(db, "NORMAL", "durable", 5) == _syncs(db, "NORMAL", "durable", 0)


def test_readers_are_not_blocked_by_a_writer(db: Path) -> None:
    store = SQLiteStore(path=db)
    store.set_volume({"id": "v1", "backend": "lvm"})
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute(
            "INSERT INTO volumes (id, backend, name, data) VALUES ('v2', 'lvm', NULL, "
            '\'{"id":"v2","backend":"lvm"}\')'
        )
        started = time.monotonic()
        assert [v["id"] for v in store.get_volumes()] == ["v1"]  # uncommitted row unseen
        assert time.monotonic() - started < 5
        writer.execute("COMMIT")
        assert [v["id"] for v in store.get_volumes()] == ["v1", "v2"]
    finally:
        writer.close()
        store.close()


def test_busy_writer_times_out_with_store_error(db: Path) -> None:
    store = SQLiteStore(path=db, timeout=0.2)
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked") as info:
            store.set_volume({"id": "v1", "backend": "lvm"})
        assert str(db) in str(info.value)
        blocker.execute("ROLLBACK")
        store.set_volume({"id": "v1", "backend": "lvm"})  # the store still works
        assert len(store.get_volumes()) == 1
    finally:
        blocker.close()
        store.close()


def test_readers_see_whole_batches_while_a_writer_writes(db: Path) -> None:
    store = SQLiteStore(path=db)
    batch, batches = 25, 40
    done = threading.Event()
    errors: list[BaseException] = []
    seen_counts: list[int] = []

    def write() -> None:
        try:
            for b in range(batches):
                store.write(
                    volumes=[{"id": f"v-{b}-{i}", "backend": "lvm", "b": b} for i in range(batch)]
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def read() -> None:
        try:
            last = 0
            while not done.is_set():
                count = len(store.get_volumes(backend="lvm"))
                assert count % batch == 0, f"saw half a batch: {count}"
                assert count >= last, "a reader went back in time"
                last = count
                seen_counts.append(count)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(store.get_volumes()) == batch * batches
        assert seen_counts, "readers never ran"
    finally:
        store.close()


def is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError:
        return True
    return False


def run_in_thread(target: object, name: str) -> None:
    thread = threading.Thread(target=target, name=name)  # type: ignore[arg-type]
    thread.start()
    thread.join()


def test_connections_of_ended_threads_are_closed(db: Path) -> None:
    store = SQLiteStore(path=db)
    opened: list[sqlite3.Connection] = []

    def use() -> None:
        store.set_volume({"id": threading.current_thread().name, "backend": "lvm"})
        opened.append(store._conn())

    try:
        run_in_thread(use, "t0")
        assert not is_closed(opened[0])
        run_in_thread(use, "t1")  # a new thread's connection retires the dead one's
        assert is_closed(opened[0])
        assert len(store.get_volumes()) == 2
    finally:
        store.close()


def test_close_closes_every_thread_connection(db: Path) -> None:
    store = SQLiteStore(path=db)
    opened: list[sqlite3.Connection] = []
    go_on = threading.Event()
    ready = threading.Barrier(5)

    def use() -> None:
        store.set_volume({"id": threading.current_thread().name, "backend": "lvm"})
        opened.append(store._conn())
        ready.wait()
        go_on.wait()  # still alive when close() runs

    threads = [threading.Thread(target=use, name=f"t{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    ready.wait()
    opened.append(store._conn())
    store.close()
    go_on.set()
    for thread in threads:
        thread.join()
    assert len(opened) == 5 and all(is_closed(conn) for conn in opened)
    # SQLite removes the WAL file when the last connection to the database closes.
    assert not Path(f"{db}-wal").exists()
    with pytest.raises(StoreError, match="closed"):
        store.get_volumes()
    with pytest.raises(StoreError, match="closed"):
        store.set_value("k", "v")
    store.close()  # twice is fine
    reopened = SQLiteStore(path=db)
    try:
        assert sorted(v["id"] for v in reopened.get_volumes()) == ["t0", "t1", "t2", "t3"]
    finally:
        reopened.close()


def test_corrupt_record_gives_store_error(db: Path) -> None:
    store = SQLiteStore(path=db)
    try:
        store.set_volume({"id": "v1", "backend": "lvm"})
        raw = sqlite3.connect(db)
        raw.execute("UPDATE volumes SET data = '{broken' WHERE id = 'v1'")
        raw.commit()
        raw.close()
        with pytest.raises(StoreError, match="volume record is not valid JSON"):
            store.get_volumes()
    finally:
        store.close()


def test_record_contents_are_not_logged(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    store = SQLiteStore(path=db)
    try:
        store.set_connection(
            {"id": "c1", "backend": "lvm", "volume_id": "v1", "auth_password": "hunter2-secret"}
        )
        store.get_connections()
        with pytest.raises(InvalidArgument) as info:
            store.set_connection(
                {
                    "id": "c2",
                    "backend": "lvm",
                    "volume_id": "v1",
                    "auth_password": "hunter2-secret",
                    "bad": {1, 2},
                }
            )
    finally:
        store.close()
    assert caplog.records, "opening a new store logs its schema creation"
    assert "hunter2" not in caplog.text
    assert "hunter2" not in str(info.value)


# -- file permissions: connection records can hold CHAP secrets ----------------------------------
def _modes(db: Path) -> dict[str, str]:
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
    return {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if f.exists()}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual umask (022), under which SQLite would make its files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_new_store_files_are_private(db: Path) -> None:
    store = SQLiteStore(path=db)
    try:
        store.set_value("k", "v")  # a write: the -wal and -shm files exist now

        assert _modes(db) == {name: "0o600" for name in (db.name, f"{db.name}-wal",
                                                         f"{db.name}-shm")}  # fmt: skip
    finally:
        store.close()


@pytest.mark.usefixtures("open_umask")
def test_existing_store_files_are_made_private(db: Path) -> None:
    """A store (and WAL files) written by an earlier release or another tool, 0644."""
    SQLiteStore(path=db).close()
    raw = sqlite3.connect(db)  # holds the -wal and -shm files open, as a live reader would
    try:
        raw.execute("SELECT count(*) FROM volumes").fetchone()
        for name in _modes(db):
            os.chmod(db.parent / name, 0o644)
        assert set(_modes(db).values()) == {"0o644"} and len(_modes(db)) == 3

        SQLiteStore(path=db).close()

        assert set(_modes(db).values()) == {"0o600"}, _modes(db)
    finally:
        raw.close()


def test_store_in_a_directory_others_can_enter_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    private.mkdir(mode=0o700)
    caplog.set_level(logging.WARNING, logger="csi_driver.storage.persistence.sqlite")

    SQLiteStore(path=private / "metadata.db").close()
    assert caplog.records == []
    SQLiteStore(path=shared / "metadata.db").close()

    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert str(shared) in caplog.records[0].getMessage()
    assert "0755" in caplog.records[0].getMessage()
