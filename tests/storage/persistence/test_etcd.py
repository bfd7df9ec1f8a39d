"""What only the etcd store has: its key layout and escaping, several processes on one
server, a server that goes away, authentication, and etcd's transaction limits.

Everything runs against real etcd servers: the session's ``etcd_server`` (harness in
tests/csi_support/cluster.py), and for authentication a private one started here.
The contract every store keeps is in test_contract*.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support.stores import conn, etcd_store, ids, snap, vol
from etcd3 import etcdrpc as rpc

from csi_driver.storage.exceptions import (
    InvalidArgument,
    NameInUse,
    StoreError,
    StoreUnavailable,
)
from csi_driver.storage.persistence import load_store
from csi_driver.storage.persistence.base import CONNECTION, SNAPSHOT, VOLUME
from csi_driver.storage.persistence.etcd import EtcdStore, escape, unescape

REPO = Path(__file__).resolve().parents[3]


# -- helpers ---------------------------------------------------------------------------------
def kv_stub(endpoint: str) -> Any:
    channel = grpc.insecure_channel(
        endpoint.split("://")[1], options=[("grpc.enable_http_proxy", 0)]
    )
    return rpc.KVStub(channel)


def raw(endpoint: str, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix`` on the server, with its KeyValue."""
    start = prefix.encode()
    end = start[:-1] + bytes([start[-1] + 1])
    resp = kv_stub(endpoint).Range(rpc.RangeRequest(key=start, range_end=end), timeout=10)
    return {kv.key[len(start) :]: kv for kv in resp.kvs}


def index_keys_of(kind: str, record: dict) -> set[bytes]:
    """The index keys the module doc promises for a record."""
    fields = {"backend": "by-backend", "volume_id": "by-volume", "name": "by-name"}
    wanted = {VOLUME: ("backend", "name"), SNAPSHOT: ("backend", "volume_id", "name"),
              CONNECTION: ("backend", "volume_id")}[kind]  # fmt: skip
    return {
        f"{kind}/{fields[f]}/".encode() + escape(record[f]) + b"/" + escape(record["id"])
        for f in wanted
        if record.get(f) is not None
    }


def check_consistent(store: EtcdStore, endpoint: str) -> None:
    """Every record has exactly its index keys, and no index key is left over."""
    keys = raw(endpoint, store.prefix)
    expected = {b"meta/layout"}
    for kind, records in (
        (VOLUME, store.get_volumes()),
        (SNAPSHOT, store.get_snapshots()),
        (CONNECTION, store.get_connections()),
    ):
        for record in records:
            expected.add(f"{kind}/rec/".encode() + escape(record["id"]))
            expected |= index_keys_of(kind, record)
    found = {key for key in keys if not key.startswith(b"kv/")}
    assert found == expected, (sorted(found - expected)[:5], sorted(expected - found)[:5])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EtcdStore]:
    instance = etcd_store(request, tmp_path)
    yield instance
    instance.close()


@pytest.fixture
def endpoint(etcd_server: Any) -> str:
    return etcd_server.endpoint


# -- escaping and key layout -------------------------------------------------------------------
TRICKY = ["", "a", "a/b", "a/", "/a", "a.b", "a.2Fb", "a.2F", ".", "/", "..", "./", "a\x00b",
          "a-b", "a0", "données", "数据", "🚀", "\ud800", "a%2F", "v001", "v1", "v10"]  # fmt: skip


def test_escape_round_trips_keeps_order_and_never_holds_a_slash() -> None:
    rng = random.Random(3)
    alphabet = ["a", "z", "-", ".", "/", "0", "2", "E", "F", "\x00", "\x7f", "é", "🚀", "\ud800"]
    values = TRICKY + ["".join(rng.choices(alphabet, k=rng.randint(0, 6))) for _ in range(3000)]
    for value in values:
        escaped = escape(value)
        assert b"/" not in escaped
        assert unescape(escaped) == value
    values = sorted(set(values))
    assert sorted(values, key=escape) == values  # byte order of escapes == str order
    assert len({escape(v) for v in values}) == len(values)


def test_key_layout(store: EtcdStore, endpoint: str) -> None:
    store.write(
        volumes=[vol("v/1", backend="b.1", name="n/1"), vol("v2", backend="b")],
        snapshots=[snap("s1", "v/1", backend="b.1", name="sn")],
        connections=[conn("c1", "v/1", backend="b.1")],
    )
    store.set_value("k/1", "x")
    assert sorted(raw(endpoint, store.prefix)) == sorted(
        [
            b"connection/by-backend/b.2E1/c1",
            b"connection/by-volume/v.2F1/c1",
            b"connection/rec/c1",
            b"kv/k.2F1",
            b"meta/layout",
            b"snapshot/by-backend/b.2E1/s1",
            b"snapshot/by-name/sn/s1",
            b"snapshot/by-volume/v.2F1/s1",
            b"snapshot/rec/s1",
            b"volume/by-backend/b/v2",
            b"volume/by-backend/b.2E1/v.2F1",
            b"volume/by-name/n.2F1/v.2F1",
            b"volume/rec/v.2F1",
            b"volume/rec/v2",
        ]
    )
    value = raw(endpoint, store.prefix)[b"volume/rec/v.2F1"].value
    assert value.startswith(b"0\n") and json.loads(value[2:]) == vol(
        "v/1", backend="b.1", name="n/1"
    )


def test_values_that_share_a_prefix_do_not_collide(store: EtcdStore, endpoint: str) -> None:
    backends = ["a", "a/b", "a/", "", "a.2Fb", "a.", "a\x00"]
    store.write(
        volumes=[vol(f"v{n}", backend=b, name=b) for n, b in enumerate(backends)],
        snapshots=[snap(f"s{n}", volume_id=b) for n, b in enumerate(backends)],
    )
    for n, backend in enumerate(backends):
        assert ids(store.get_volumes(backend=backend)) == [f"v{n}"]
        assert ids(store.get_volumes(name=backend)) == [f"v{n}"]
        assert ids(store.list_page(VOLUME, limit=10, backend=backend).records) == [f"v{n}"]
        assert ids(store.get_snapshots(volume_id=backend)) == [f"s{n}"]
        assert ids(store.list_page(SNAPSHOT, limit=10, volume_id=backend).records) == [f"s{n}"]
    store.create_unique(VOLUME, vol("other", name="a/bc"))  # "a/b" is taken, "a/bc" is not
    with pytest.raises(NameInUse) as caught:
        store.create_unique(VOLUME, vol("x", name="a/"))
    assert caught.value.existing_id == "v2"
    check_consistent(store, endpoint)


def test_tricky_ids_page_in_str_order(store: EtcdStore) -> None:
    record_ids = [i for i in TRICKY if i]
    shuffled = record_ids[:]
    random.Random(5).shuffle(shuffled)
    for record_id in shuffled:
        store.set_volume(vol(record_id, backend="b/x"))
    for limit in (1, 2, 7):
        paged = [r["id"] for r in store.iterate(VOLUME, page_size=limit)]
        assert paged == sorted(record_ids)
        paged = [r["id"] for r in store.iterate(VOLUME, page_size=limit, backend="b/x")]
        assert paged == sorted(record_ids)
    assert ids(store.get_volumes()) == shuffled  # first-stored order
    for record_id in record_ids:
        assert ids(store.get_volumes(volume_id=record_id)) == [record_id]
        store.delete_volume(record_id)
    assert store.get_volumes() == []


# -- prefixes and configuration ------------------------------------------------------------------
def test_two_prefixes_do_not_see_each_other(endpoint: str) -> None:
    base = f"/csi-test/iso-{os.getpid()}-{time.monotonic_ns()}"
    one = EtcdStore(endpoints=[endpoint], prefix=f"{base}/one")
    two = load_store({"storage": "etcd", "endpoints": [endpoint], "prefix": f"{base}/one-two/"})
    assert isinstance(two, EtcdStore)
    assert one.prefix == f"{base}/one/"
    one.write(volumes=[vol("v1", name="n")], connections=[conn("c1", "v1")])
    one.set_value("k", "1")
    assert two.get_volumes() == [] and two.get_connections() == [] and two.get_value("k") is None
    assert two.list_page(VOLUME, limit=5).records == []
    two.create_unique(VOLUME, vol("v2", name="n"))  # names are per store
    two.set_value("k", "2")
    two.delete_volume("v1")
    assert ids(one.get_volumes()) == ["v1"] and one.get_value("k") == "1"
    assert ids(two.get_volumes()) == ["v2"] and two.get_value("k") == "2"
    assert set(raw(endpoint, f"{base}/")) == {
        *(b"one/" + key for key in raw(endpoint, one.prefix)),
        *(b"one-two/" + key for key in raw(endpoint, two.prefix)),
    }
    one.close()
    two.close()


@pytest.mark.parametrize(
    "options",
    [
        {"prefix": "no-slash/"},
        {"prefix": ""},
        {"endpoints": []},
        {"endpoints": ["ftp://127.0.0.1:1"]},
        {"endpoints": ["http://127.0.0.1:2379/path"]},
        {"timeout": 0},
        {"timeout": "5"},
        {"user": "root"},
        {"password": "secret"},
        {"cert_cert": "/c.pem"},
        {"ca_cert": "/ca.pem"},  # TLS options with an http endpoint
        {"max_txn_ops": 8},
    ],
)
def test_bad_options_are_refused(options: dict) -> None:
    config = {"storage": "etcd", "endpoints": ["http://127.0.0.1:1"], "timeout": 0.2, **options}
    with pytest.raises(InvalidArgument) as caught:
        load_store(config)
    assert "secret" not in str(caught.value)


def test_a_foreign_layout_is_refused(endpoint: str) -> None:
    prefix = f"/csi-test/layout-{os.getpid()}-{time.monotonic_ns()}/"
    kv_stub(endpoint).Put(rpc.PutRequest(key=f"{prefix}meta/layout".encode(), value=b"2"))
    with pytest.raises(StoreError, match="layout version '2'"):
        EtcdStore(endpoints=[endpoint], prefix=prefix)


# -- an unreachable server -----------------------------------------------------------------------
def test_no_server_means_store_unavailable(endpoint: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    store = EtcdStore(endpoints=[dead], user="root", password="hunter2", timeout=0.5)
    assert time.monotonic() - started < 5
    assert "hunter2" not in repr(store) and dead in repr(store)
    calls = [
        lambda: store.get_volumes(),
        lambda: store.set_volume(vol("v1")),
        lambda: store.create_unique(VOLUME, vol("v1", name="n")),
        lambda: store.delete_volume("v1"),
        lambda: store.list_page(VOLUME, limit=3),
        lambda: store.set_value("k", "v"),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert dead in str(caught.value) and "hunter2" not in str(caught.value)
    store.close()
    # the next endpoint is tried when the first does not answer
    prefix = f"/csi-test/failover-{os.getpid()}-{time.monotonic_ns()}/"
    both = EtcdStore(endpoints=[dead, endpoint], prefix=prefix, timeout=2)
    both.set_volume(vol("v1"))
    assert ids(both.get_volumes()) == ["v1"]
    both.close()


def _outage_worker(store: EtcdStore, t: int, stop: threading.Event, log: list) -> None:
    """Writes of this thread's own records, one at a time; every outcome is logged."""
    i = 0
    while not stop.is_set():
        i += 1
        if i % 5 == 0:
            op = ("delete", f"v{t}-{i - 3}")
            call = lambda victim=f"v{t}-{i - 3}": store.delete_volume(victim)  # noqa: E731
        elif i % 5 == 3:
            record = vol(f"v{t}-{i - 1}", backend=f"b{t}", name=f"renamed-{i}", size=i)
            op = ("set", record)
            call = lambda record=record: store.set_volume(record)  # noqa: E731
        else:
            batch = {
                "volumes": [vol(f"v{t}-{i}", backend=f"b{t}", name=f"n{t}-{i}")],
                "snapshots": [snap(f"s{t}-{i}", f"v{t}-{i}", backend=f"b{t}", name="s")],
                "connections": [conn(f"c{t}-{i}", f"v{t}-{i}", backend=f"b{t}")],
            }
            op = ("write", batch)
            call = lambda batch=batch: store.write(**batch)  # noqa: E731
        started = time.monotonic()
        try:
            call()
            log.append(("ok", op, started, time.monotonic()))
        except StoreUnavailable:
            log.append(("unavailable", op, started, time.monotonic()))
        except BaseException as exc:  # reported by the test
            log.append(("error", op, started, repr(exc)))
            return
        time.sleep(0.01)


def test_outage_mid_stream_applies_exactly_what_succeeded(
    request: pytest.FixtureRequest, tmp_path: Path, etcd_server: Any
) -> None:
    store = etcd_store(request, tmp_path, timeout=2)
    stop = threading.Event()
    logs: list[list] = [[] for _ in range(4)]  # three writers, then the probe below
    threads = [
        threading.Thread(target=_outage_worker, args=(store, t, stop, logs[t])) for t in range(3)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        down = time.monotonic()
        etcd_server.stop()
        # A write sent while etcd is down fails within the store's timeout (2 s). The
        # writers' own calls prove it only by chance: each may have sent a write as etcd
        # stopped and then waits, to learn its outcome, until etcd is back.
        time.sleep(0.5)
        probe = {"volumes": [vol("probe", backend="b-probe", name="probe")]}
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.write(**probe)
        logs[3].append(("unavailable", ("write", probe), started, time.monotonic()))
        assert logs[3][0][3] - started < 2 + 3
        time.sleep(max(0.0, 10 - (time.monotonic() - down)))
        etcd_server.start()
        up = time.monotonic()
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        etcd_server.start()
    assert [entry for log in logs for entry in log if entry[0] == "error"] == []
    failed = [entry for log in logs for entry in log if entry[0] == "unavailable"]
    assert all(down - 1 < entry[2] < up for entry in failed), "only the outage fails"
    after = [entry for log in logs for entry in log if entry[2] > up]
    assert after and all(entry[0] == "ok" for entry in after), "writes after the restart work"
    # Replay what callers were told succeeded: that and nothing else is stored.
    volumes: dict[str, dict] = {}
    snapshots: dict[str, dict] = {}
    connections: dict[str, dict] = {}
    for log in logs:
        for outcome, (what, arg), *_ in log:
            if outcome != "ok":
                continue
            if what == "write":
                for record in arg["volumes"]:
                    volumes[record["id"]] = record
                for record in arg["snapshots"]:
                    snapshots[record["id"]] = record
                for record in arg["connections"]:
                    connections[record["id"]] = record
            elif what == "set":
                volumes[arg["id"]] = arg
            else:
                volumes.pop(arg, None)
    key = lambda record: record["id"]  # noqa: E731
    assert sorted(store.get_volumes(), key=key) == sorted(volumes.values(), key=key)
    assert sorted(store.get_snapshots(), key=key) == sorted(snapshots.values(), key=key)
    assert sorted(store.get_connections(), key=key) == sorted(connections.values(), key=key)
    for t in range(3):
        mine = sorted(v["id"] for v in volumes.values() if v["backend"] == f"b{t}")
        assert [r["id"] for r in store.iterate(VOLUME, page_size=7, backend=f"b{t}")] == mine
    check_consistent(store, etcd_server.endpoint)
    store.close()


# -- several processes ---------------------------------------------------------------------------
RACER = """
import json, sys, threading
from csi_driver.storage.exceptions import NameInUse
from csi_driver.storage.persistence.etcd import EtcdStore

endpoint, prefix, tag, names, per_name = sys.argv[1:6]
names, per_name = json.loads(names), int(per_name)
store = EtcdStore(endpoints=[endpoint], prefix=prefix)
outcomes, lock = [], threading.Lock()
start = threading.Event()

def creator(name, n):
    start.wait()
    record = {"id": f"{tag}-{name}-{n}", "backend": "b", "name": name}
    try:
        store.create_unique("volume", record)
        got = record["id"]
    except NameInUse as exc:
        got = exc.existing_id
    with lock:
        outcomes.append([name, got])

threads = [threading.Thread(target=creator, args=(name, n))
           for name in names for n in range(per_name)]
for thread in threads:
    thread.start()
print("ready", flush=True)
sys.stdin.readline()
start.set()
for thread in threads:
    thread.join()
print(json.dumps(outcomes), flush=True)
"""


def test_twenty_creators_in_two_processes_make_one_record(
    request: pytest.FixtureRequest, tmp_path: Path, endpoint: str
) -> None:
    store = etcd_store(request, tmp_path)
    names = [f"pvc-{n}" for n in range(5)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", RACER, endpoint, store.prefix, "child", json.dumps(names), "10"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    outcomes: list[list[str]] = []
    lock = threading.Lock()
    start = threading.Barrier(len(names) * 10 + 1)

    def creator(name: str, n: int) -> None:
        start.wait()
        record = vol(f"parent-{name}-{n}", backend="b", name=name)
        try:
            store.create_unique(VOLUME, record)
            got = record["id"]
        except NameInUse as exc:
            got = exc.existing_id
        with lock:
            outcomes.append([name, got])

    threads = [
        threading.Thread(target=creator, args=(name, n)) for name in names for n in range(10)
    ]
    for thread in threads:
        thread.start()
    child.stdin.write("go\n")
    child.stdin.flush()
    start.wait()
    for thread in threads:
        thread.join()
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    outcomes += json.loads(out)
    assert len(outcomes) == 100
    for name in names:
        stored = store.get_volumes(name=name)
        assert len(stored) == 1, name
        told = [got for n, got in outcomes if n == name]
        assert told == [stored[0]["id"]] * 20
    assert len(store.get_volumes()) == len(names)
    store.close()


# -- transaction limits --------------------------------------------------------------------------
def test_a_write_too_big_for_the_server_says_which_flag_and_writes_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The store believes the server takes 1024 operations; the server takes its default 128.
    store = etcd_store(request, tmp_path, max_txn_ops=1024)
    batch = [snap(f"s{n:03d}", "v1", name=f"n{n}") for n in range(100)]
    with pytest.raises(StoreError, match="--max-txn-ops") as caught:
        store.write(snapshots=batch)
    assert "Nothing was written" in str(caught.value)
    assert store.get_snapshots() == []
    store.close()
    # Past what nested transactions can hold: refused before anything is sent.
    store = etcd_store(request, tmp_path)
    batch = [snap(f"s{n:04d}", f"v{n}", name=f"n{n}") for n in range(1000)]
    with pytest.raises(StoreError, match="write fewer records at once"):
        store.write(snapshots=batch)
    assert store.get_snapshots() == []
    # Over the request size: the server refuses, nothing is written.
    with pytest.raises(StoreError, match="--max-request-bytes"):
        store.write(volumes=[vol("v1"), vol("big", blob="x" * (2 << 20))])
    assert store.get_volumes() == []
    store.close()


def test_a_big_write_is_one_transaction(store: EtcdStore, endpoint: str) -> None:
    store.set_volume(vol("v0000", name="first"))
    batch = [vol(f"v{n:04d}", backend=f"b{n % 3}", name=f"n{n}") for n in range(600)]
    store.write(volumes=batch, snapshots=[snap(f"s{n}", f"v{n:04d}") for n in range(100)])
    keys = raw(endpoint, store.prefix)
    revisions = {kv.mod_revision for key, kv in keys.items() if key != b"meta/layout"}
    assert len(revisions) == 1, "every key written at one revision"
    assert ids(store.get_volumes())[:3] == ["v0000", "v0001", "v0002"]  # v0000 kept its place
    assert store.get_volumes(volume_id="v0000")[0]["name"] == "n0"
    assert ids(store.get_volumes(name="first")) == []
    assert len(store.get_volumes(backend="b1")) == 200
    check_consistent(store, endpoint)


def test_big_writes_racing_small_ones_keep_indexes_exact(store: EtcdStore, endpoint: str) -> None:
    """Grouped writes compare key ranges; deletes and renames racing them must not
    leave a record without its index keys or an index key without its record."""
    record_ids = [f"v{n:03d}" for n in range(300)]
    store.write(volumes=[vol(i, backend="x") for i in record_ids])
    errors: list[BaseException] = []
    stop = threading.Event()

    def bulk() -> None:
        try:
            for round_ in range(6):
                backend = "y" if round_ % 2 else "x"
                store.write(
                    volumes=[vol(i, backend=backend, name=f"r{round_}") for i in record_ids]
                )
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            stop.set()

    def small(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                # ~20 writes/s on the big write's records: a crowd hammering them would
                # make each of its attempts fail (it gives up after 64, StoreError).
                time.sleep(0.15)
                victim = rng.choice(record_ids)
                if rng.random() < 0.5:
                    store.delete_volume(victim)
                else:
                    store.set_volume(vol(victim, backend="z", name="small"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=bulk)] + [
        threading.Thread(target=small, args=(n,)) for n in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    check_consistent(store, endpoint)
    everything = store.get_volumes()
    for backend in ("x", "y", "z"):
        assert ids(store.get_volumes(backend=backend)) == [
            r["id"] for r in everything if r["backend"] == backend
        ]


# -- authentication and TLS (private servers) ------------------------------------------------
@contextlib.contextmanager
def private_etcd(directory: Path, *flags: str, scheme: str = "http") -> Iterator[str]:
    """An etcd of its own (flags added to the usual ones), stopped on exit; its URL."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    client, peer = free_port(), free_port()
    url = f"{scheme}://127.0.0.1:{client}"
    argv = [
        binary, "--name=private", f"--data-dir={directory / 'data'}",
        f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=private=http://127.0.0.1:{peer}", *flags,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    log_path = directory / "etcd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"ready to serve client requests" not in log_path.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[str]:
    """A private etcd with authentication on (root/rootpw, and 'limited' who may only
    touch /other/), whose tokens expire after 2 s."""
    with private_etcd(tmp_path, "--auth-token=simple", "--auth-token-ttl=2") as url:
        channel = grpc.insecure_channel(
            url[len("http://") :], options=[("grpc.enable_http_proxy", 0)]
        )
        auth = rpc.AuthStub(channel)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="root"), timeout=10)
        auth.UserAdd(rpc.AuthUserAddRequest(name="root", password="rootpw"), timeout=10)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=10)
        auth.RoleAdd(rpc.AuthRoleAddRequest(name="other"), timeout=10)
        permission = rpc.auth__pb2.Permission(
            permType=rpc.auth__pb2.Permission.READWRITE, key=b"/other/", range_end=b"/other0"
        )
        auth.RoleGrantPermission(
            rpc.AuthRoleGrantPermissionRequest(name="other", perm=permission), timeout=10
        )
        auth.UserAdd(rpc.AuthUserAddRequest(name="limited", password="limitedpw"), timeout=10)
        auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="limited", role="other"), timeout=10)
        auth.AuthEnable(rpc.AuthEnableRequest(), timeout=10)
        channel.close()
        yield url


def make_pki(directory: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    for name in ("ca", "other-ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-subj", f"/CN={name}", "-days", "2")  # fmt: skip
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
            "-extfile", f"{name}.ext")  # fmt: skip
    names = ("ca.crt", "other-ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    return {name: str(directory / name) for name in names}


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    flags = [f"--cert-file={pki['server.crt']}", f"--key-file={pki['server.key']}",
             f"--trusted-ca-file={pki['ca.crt']}", "--client-cert-auth"]  # fmt: skip
    with private_etcd(tmp_path, *flags, scheme="https") as url:
        options = {"ca_cert": pki["ca.crt"], "cert_cert": pki["client.crt"],
                   "cert_key": pki["client.key"]}  # fmt: skip
        store = load_store({"storage": "etcd", "endpoints": [url], **options})
        store.set_volume(vol("v1"))
        assert ids(store.get_volumes()) == ["v1"]
        store.close()
        # "host:port" with TLS options means https
        store = EtcdStore(endpoints=[url[len("https://") :]], **options)
        assert ids(store.get_volumes()) == ["v1"]
        store.close()
        with pytest.raises(StoreError, match="TLS handshake"):  # no client certificate
            EtcdStore(endpoints=[url], ca_cert=pki["ca.crt"], timeout=2)
        with pytest.raises(StoreError, match="TLS handshake"):  # a server we do not trust
            EtcdStore(endpoints=[url], **{**options, "ca_cert": pki["other-ca.crt"]}, timeout=2)
        plain = EtcdStore(endpoints=[url.replace("https", "http")], timeout=1)
        with pytest.raises(StoreUnavailable):  # plain http to a TLS server: it hangs up
            plain.get_volumes()
        plain.close()
    with pytest.raises(StoreError, match="cannot read"):
        EtcdStore(endpoints=["https://127.0.0.1:1"], ca_cert=str(tmp_path / "missing.pem"))


def test_authentication(auth_etcd: str) -> None:
    store = EtcdStore(endpoints=[auth_etcd], user="root", password="rootpw")
    store.set_volume(vol("v1"))
    assert ids(store.get_volumes()) == ["v1"]
    time.sleep(3)  # the token expired: the store gets a new one
    store.set_volume(vol("v2"))
    assert ids(store.get_volumes()) == ["v1", "v2"]
    assert "rootpw" not in repr(store)
    store.close()
    with pytest.raises(StoreError, match="authentication as user 'root' failed") as caught:
        EtcdStore(endpoints=[auth_etcd], user="root", password="wrong-pw")
    assert "wrong-pw" not in str(caught.value)
    with pytest.raises(StoreError, match="requires authentication"):
        EtcdStore(endpoints=[auth_etcd])
    with pytest.raises(
        StoreError, match="grant it read and write on the key prefix '/csi-driver/'"
    ):
        EtcdStore(endpoints=[auth_etcd], user="limited", password="limitedpw")
    allowed = EtcdStore(
        endpoints=[auth_etcd], user="limited", password="limitedpw", prefix="/other/"
    )
    allowed.set_value("k", "v")
    assert allowed.get_value("k") == "v"
    allowed.close()
