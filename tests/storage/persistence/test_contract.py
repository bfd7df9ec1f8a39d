"""The contract of ``MetadataStore`` (see base.py), run against every store.

The ``store`` fixture (conftest.py) gives every store in turn; a new store joins by
adding a factory to ``csi_support.stores.STORE_FACTORIES``.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable

import pytest
from csi_support.stores import conn, ids, snap, vol

from csi_driver.storage.exceptions import InvalidArgument
from csi_driver.storage.persistence import MetadataStore


def everything(store: MetadataStore) -> tuple[list[dict], list[dict], list[dict]]:
    return store.get_volumes(), store.get_snapshots(), store.get_connections()


# -- insert, replace, round trip ----------------------------------------------
def test_empty_store_returns_empty_lists(store: MetadataStore) -> None:
    assert everything(store) == ([], [], [])
    assert store.get_volumes(volume_id="nope") == []


def test_opaque_fields_come_back_exactly(store: MetadataStore) -> None:
    record = vol(
        "v1",
        size=1,
        provider_location="10.0.0.1:3260,1 iqn.2010-10.org.openstack:volume-v1 0",
        provider_auth="CHAP user s3cr3t",
        flags=[True, False, None],
        nested={"a": {"b": [1, 2.5, {"c": "d"}]}, "empty": {}, "list": []},
        big=2**62,
        neg=-1.25e-7,
    )
    snapshot = snap("s1", "v1", metadata={"k": "v"})
    connection = conn(
        "c1", "v1", connection_info={"driver_volume_type": "iscsi", "data": {"target_lun": 0}}
    )
    store.set_volume(record)
    store.set_snapshot(snapshot)
    store.set_connection(connection)
    assert everything(store) == ([record], [snapshot], [connection])
    got = store.get_volumes()[0]
    assert list(got) == list(record)  # same keys in the same order
    assert type(got["big"]) is int and type(got["neg"]) is float


def test_set_replaces_record_with_same_id(store: MetadataStore) -> None:
    store.set_volume(vol("v1", size=1, extra="gone"))
    store.set_volume(vol("v1", size=2))
    assert store.get_volumes() == [vol("v1", size=2)]
    store.set_connection(conn("c1", "v1", attached=False))
    store.set_connection(conn("c1", "v1", attached=True))
    assert store.get_connections() == [conn("c1", "v1", attached=True)]


def test_same_id_in_different_kinds_is_different_records(store: MetadataStore) -> None:
    store.write(volumes=[vol("x")], snapshots=[snap("x", "x")], connections=[conn("x", "x")])
    store.delete_volume("x")
    assert ids(store.get_snapshots()) == ["x"] and ids(store.get_connections()) == ["x"]


def test_record_is_copied_on_the_way_in(store: MetadataStore) -> None:
    record = vol("v1", tags=["a"], meta={"k": "v"})
    store.set_volume(record)
    record["tags"].append("b")
    record["meta"]["k"] = "changed"
    record["size"] = 99
    assert store.get_volumes() == [vol("v1", tags=["a"], meta={"k": "v"})]


def test_record_is_copied_on_the_way_out(store: MetadataStore) -> None:
    store.set_snapshot(snap("s1", "v1", meta={"k": ["v"]}))
    got = store.get_snapshots(snapshot_id="s1")[0]
    got["meta"]["k"].append("w")
    got["name"] = "changed"
    again = store.get_snapshots(snapshot_id="s1")[0]
    assert again == snap("s1", "v1", meta={"k": ["v"]})
    assert again is not got


def test_tuples_come_back_as_lists(store: MetadataStore) -> None:
    store.set_volume(vol("v1", pair=(1, 2)))
    assert store.get_volumes()[0]["pair"] == [1, 2]


# -- filters ---------------------------------------------------------------------
@pytest.fixture
def populated(store: MetadataStore) -> MetadataStore:
    store.write(
        volumes=[
            vol("v1", "lvm", "a"),
            vol("v2", "ceph", "a"),
            vol("v3", "lvm", "b"),
            vol("v4", "lvm", None),
        ],
        snapshots=[
            snap("s1", "v1", "lvm", "x"),
            snap("s2", "v1", "lvm", "y"),
            snap("s3", "v2", "ceph", "x"),
            snap("s4", "v3", "lvm", "x"),
        ],
        connections=[
            conn("c1", "v1", "lvm"),
            conn("c2", "v2", "ceph"),
            conn("c3", "v1", "lvm"),
            conn("c4", "v3", "lvm"),
        ],
    )
    return store


def test_volume_filters_combine_with_and(populated: MetadataStore) -> None:
    store = populated
    assert ids(store.get_volumes(backend="lvm")) == ["v1", "v3", "v4"]
    assert ids(store.get_volumes(name="a")) == ["v1", "v2"]
    assert ids(store.get_volumes(backend="lvm", name="a")) == ["v1"]
    assert ids(store.get_volumes(volume_id="v2", backend="ceph", name="a")) == ["v2"]
    assert store.get_volumes(volume_id="v2", backend="lvm") == []
    assert store.get_volumes(backend="lvm", name="zzz") == []
    assert ids(store.get_volumes(volume_id="v3")) == ["v3"]


def test_none_filters_are_not_applied(populated: MetadataStore) -> None:
    store = populated
    # name=None does not mean "records whose name is None".
    assert ids(store.get_volumes(volume_id=None, backend=None, name=None)) == [
        "v1",
        "v2",
        "v3",
        "v4",
    ]
    assert ids(store.get_snapshots(name=None, backend="ceph")) == ["s3"]


def test_snapshot_filters_combine_with_and(populated: MetadataStore) -> None:
    store = populated
    assert ids(store.get_snapshots(volume_id="v1")) == ["s1", "s2"]
    assert ids(store.get_snapshots(name="x")) == ["s1", "s3", "s4"]
    assert ids(store.get_snapshots(name="x", backend="lvm")) == ["s1", "s4"]
    assert ids(store.get_snapshots(name="x", backend="lvm", volume_id="v3")) == ["s4"]
    assert ids(store.get_snapshots(snapshot_id="s2", volume_id="v1")) == ["s2"]
    assert store.get_snapshots(snapshot_id="s2", volume_id="v2") == []
    assert store.get_snapshots(volume_id="v4") == []


def test_connection_filters_combine_with_and(populated: MetadataStore) -> None:
    store = populated
    assert ids(store.get_connections(volume_id="v1")) == ["c1", "c3"]
    assert ids(store.get_connections(backend="lvm")) == ["c1", "c3", "c4"]
    assert ids(store.get_connections(backend="ceph", volume_id="v2")) == ["c2"]
    assert store.get_connections(backend="ceph", volume_id="v1") == []
    assert ids(store.get_connections(connection_id="c4", backend="lvm")) == ["c4"]
    assert store.get_connections(connection_id="c4", backend="ceph") == []


def test_filters_match_exactly(populated: MetadataStore) -> None:
    store = populated
    assert store.get_volumes(backend="LVM") == []
    assert store.get_volumes(backend="lv") == []
    assert store.get_volumes(name="%") == []
    assert store.get_volumes(volume_id="v%") == []


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_volumes(backend=1),
        lambda s: s.get_volumes(volume_id=b"v1"),
        lambda s: s.get_snapshots(name=["x"]),
        lambda s: s.get_connections(volume_id=1),
    ],
)
def test_non_string_filter_is_refused(populated: MetadataStore, call: Callable) -> None:
    with pytest.raises(InvalidArgument):
        call(populated)


# -- order -----------------------------------------------------------------------
def test_results_keep_first_stored_order(store: MetadataStore) -> None:
    names = ["m", "z", "a", "k", "b"]
    for vid in names:
        store.set_volume(vol(vid))
    assert ids(store.get_volumes()) == names
    store.write(volumes=[vol("y"), vol("c")])
    assert ids(store.get_volumes()) == [*names, "y", "c"]


def test_replacing_keeps_position(store: MetadataStore) -> None:
    for vid in ["v1", "v2", "v3"]:
        store.set_volume(vol(vid, size=1))
    store.set_volume(vol("v1", size=2))
    store.write(volumes=[vol("v2", size=3)])
    assert [(r["id"], r["size"]) for r in store.get_volumes()] == [("v1", 2), ("v2", 3), ("v3", 1)]


def test_replacing_with_new_filter_values_keeps_position(store: MetadataStore) -> None:
    store.write(
        snapshots=[
            snap("s1", "v1", "lvm", "n"),
            snap("s2", "v2", "ceph", "n"),
            snap("s3", "v2", "ceph", "n"),
        ]
    )
    store.set_snapshot(snap("s1", "v2", "ceph", "m"))  # moves into the others' buckets
    assert ids(store.get_snapshots(backend="ceph")) == ["s1", "s2", "s3"]
    assert ids(store.get_snapshots(volume_id="v2")) == ["s1", "s2", "s3"]
    assert ids(store.get_snapshots(backend="ceph", name="n")) == ["s2", "s3"]
    assert store.get_snapshots(backend="lvm") == []
    assert store.get_snapshots(volume_id="v1") == []


def test_deleted_then_stored_again_goes_last(store: MetadataStore) -> None:
    for vid in ["v1", "v2", "v3"]:
        store.set_volume(vol(vid))
    store.delete_volume("v1")
    store.set_volume(vol("v1"))
    assert ids(store.get_volumes()) == ["v2", "v3", "v1"]
    assert ids(store.get_volumes(backend="lvm")) == ["v2", "v3", "v1"]


def test_duplicate_id_in_one_batch_last_wins(store: MetadataStore) -> None:
    store.set_volume(vol("v0"))
    store.write(volumes=[vol("v1", size=1), vol("v2"), vol("v1", size=2)])
    assert [(r["id"], r.get("size")) for r in store.get_volumes()] == [
        ("v0", None),
        ("v1", 2),
        ("v2", None),
    ]


# -- delete ----------------------------------------------------------------------
def test_delete_removes_only_that_record(populated: MetadataStore) -> None:
    store = populated
    store.delete_snapshot("s2")
    store.delete_connection("c3")
    assert ids(store.get_snapshots(volume_id="v1")) == ["s1"]
    assert ids(store.get_connections(volume_id="v1")) == ["c1"]
    store.delete("volume", "v2")
    assert ids(store.get_volumes()) == ["v1", "v3", "v4"]
    assert store.get_volumes(name="a", backend="ceph") == []


def test_delete_of_missing_id_is_not_an_error(populated: MetadataStore) -> None:
    store = populated
    before = everything(store)
    store.delete_volume("missing")
    store.delete_snapshot("missing")
    store.delete_connection("missing")
    store.delete_volume("v1")
    store.delete_volume("v1")
    assert everything(store) == (before[0][1:], before[1], before[2])


def test_delete_of_unknown_kind_is_refused(store: MetadataStore) -> None:
    store.set_volume(vol("v1"))
    with pytest.raises(InvalidArgument, match="kind"):
        store.delete("volumes", "v1")
    assert ids(store.get_volumes()) == ["v1"]


def test_deleting_a_volume_does_not_cascade(populated: MetadataStore) -> None:
    store = populated
    store.delete_volume("v1")
    assert store.get_volumes(volume_id="v1") == []
    assert ids(store.get_snapshots(volume_id="v1")) == ["s1", "s2"]
    assert ids(store.get_connections(volume_id="v1")) == ["c1", "c3"]


# -- write is atomic -------------------------------------------------------------
def test_write_stores_several_kinds(store: MetadataStore) -> None:
    store.write(
        volumes=iter([vol("v1"), vol("v2")]),
        snapshots=(snap("s1", "v1"),),
        connections=[conn("c1", "v2")],
    )
    assert tuple(map(ids, everything(store))) == (["v1", "v2"], ["s1"], ["c1"])
    store.write()  # nothing to do is fine
    assert tuple(map(ids, everything(store))) == (["v1", "v2"], ["s1"], ["c1"])


@pytest.mark.parametrize("bad_kind", ["volumes", "snapshots", "connections"])
def test_failed_write_stores_nothing_and_changes_nothing(
    store: MetadataStore, bad_kind: str
) -> None:
    store.write(
        volumes=[vol("v1", size=1)],
        snapshots=[snap("s1", "v1", size=1)],
        connections=[conn("c1", "v1", size=1)],
    )
    before = everything(store)
    batch = {
        "volumes": [vol("v1", size=2), vol("v9")],
        "snapshots": [snap("s1", "v1", size=2), snap("s9", "v9")],
        "connections": [conn("c1", "v1", size=2), conn("c9", "v9")],
    }
    batch[bad_kind].append({"id": "bad", "backend": "lvm", "volume_id": "v1", "oops": {1, 2}})
    with pytest.raises(InvalidArgument):
        store.write(**batch)
    assert everything(store) == before


def test_write_removes_records_in_the_same_step(store: MetadataStore) -> None:
    store.write(
        volumes=[vol("v1", status="in-use")], connections=[conn("c1", "v1"), conn("c2", "v1")]
    )
    store.write(
        volumes=[vol("v1", status="available")],
        remove=[("connection", "c1"), ("connection", "c1"), ("snapshot", "missing")],
    )
    assert store.get_volumes() == [vol("v1", status="available")]
    assert ids(store.get_connections()) == ["c2"]
    store.write(remove=iter([("connection", "c2"), ("volume", "v1")]))  # removals alone
    assert everything(store) == ([], [], [])


@pytest.mark.parametrize("bad_kind", ["volumes", "snapshots", "connections"])
def test_failed_write_removes_nothing(store: MetadataStore, bad_kind: str) -> None:
    store.write(volumes=[vol("v1")], snapshots=[snap("s1", "v1")], connections=[conn("c1", "v1")])
    before = everything(store)
    batch: dict = {"volumes": [], "snapshots": [], "connections": []}
    batch[bad_kind].append({"id": "bad", "backend": "lvm", "volume_id": "v1", "oops": {1, 2}})
    with pytest.raises(InvalidArgument):
        store.write(**batch, remove=[("volume", "v1"), ("snapshot", "s1"), ("connection", "c1")])
    assert everything(store) == before


@pytest.mark.parametrize(
    "remove",
    [[("volume", "v1", "x")], ["v1"], [("volumes", "v1")], [("volume", 1)], [("volume", "v2")]],
    ids=["triple", "bare id", "unknown kind", "non-str id", "also written"],
)
def test_malformed_removal_is_refused_and_changes_nothing(
    store: MetadataStore, remove: list
) -> None:
    store.write(volumes=[vol("v1")], connections=[conn("c1", "v1")])
    before = everything(store)
    with pytest.raises(InvalidArgument):
        store.write(volumes=[vol("v2")], remove=[("connection", "c1"), *remove])
    assert everything(store) == before


def test_a_write_without_durable_reads_back_as_any_other(store: MetadataStore) -> None:
    store.write(volumes=[vol("v1")], connections=[conn("c1", "v1")], durable=False)
    assert tuple(map(ids, everything(store))) == (["v1"], [], ["c1"])
    store.write(volumes=[vol("v1", size=2)], remove=[("connection", "c1")], durable=False)
    store.delete("volume", "v9", durable=False)
    assert everything(store) == ([vol("v1", size=2)], [], [])
    store.delete("volume", "v1", durable=False)
    store.set_volume(vol("v2"))  # a durable write after relaxed ones
    assert ids(store.get_volumes()) == ["v2"]


# -- malformed records -----------------------------------------------------------
MALFORMED = {
    "not a dict": ("volume", ["id", "v1"]),
    "missing id": ("volume", {"backend": "lvm"}),
    "empty id": ("volume", {"id": "", "backend": "lvm"}),
    "non-str id": ("snapshot", {"id": 7, "backend": "lvm", "volume_id": "v1"}),
    "missing backend": ("volume", {"id": "v1"}),
    "non-str backend": ("volume", {"id": "v1", "backend": None}),
    "int backend": ("connection", {"id": "c1", "backend": 3, "volume_id": "v1"}),
    "snapshot without volume_id": ("snapshot", {"id": "s1", "backend": "lvm"}),
    "connection without volume_id": ("connection", {"id": "c1", "backend": "lvm"}),
    "non-str volume_id": ("snapshot", {"id": "s1", "backend": "lvm", "volume_id": 1}),
    "non-str name": ("volume", {"id": "v1", "backend": "lvm", "name": 5}),
    "set value": ("volume", {"id": "v1", "backend": "lvm", "tags": {"a"}}),
    "NaN": ("snapshot", {"id": "s1", "backend": "lvm", "volume_id": "v", "x": math.nan}),
    "infinity": ("volume", {"id": "v1", "backend": "lvm", "x": [math.inf]}),
    "bytes": ("connection", {"id": "c1", "backend": "lvm", "volume_id": "v", "k": b"\x00"}),
    "object": ("volume", {"id": "v1", "backend": "lvm", "x": object()}),
    "int key": ("volume", {"id": "v1", "backend": "lvm", "x": {1: "a"}}),
    "nested None key": (
        "connection",
        {"id": "c1", "backend": "l", "volume_id": "v", "x": [{"ok": {None: 1}}]},
    ),
}


@pytest.mark.parametrize("kind,record", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_record_is_refused_and_not_stored(
    store: MetadataStore, kind: str, record: object
) -> None:
    setter = {
        "volume": store.set_volume,
        "snapshot": store.set_snapshot,
        "connection": store.set_connection,
    }[kind]
    with pytest.raises(InvalidArgument):
        setter(record)  # type: ignore[arg-type]
    assert everything(store) == ([], [], [])


def test_name_of_a_connection_is_opaque(store: MetadataStore) -> None:
    record = conn("c1", "v1", name={"host": "node-1"})
    store.set_connection(record)
    assert store.get_connections() == [record]


def test_refused_record_does_not_change_existing_one(store: MetadataStore) -> None:
    store.set_volume(vol("v1", size=1))
    with pytest.raises(InvalidArgument):
        store.set_volume(vol("v1", size=float("nan")))
    assert store.get_volumes() == [vol("v1", size=1)]


# -- key/value -------------------------------------------------------------------
def test_key_value(store: MetadataStore) -> None:
    assert store.get_value("initiator") is None
    store.set_value("initiator", "iqn.1993-08.org.debian:01:abc")
    assert store.get_value("initiator") == "iqn.1993-08.org.debian:01:abc"
    store.set_value("initiator", "")
    assert store.get_value("initiator") == ""
    store.set_value("other", "x")
    store.delete_value("initiator")
    assert store.get_value("initiator") is None
    assert store.get_value("other") == "x"
    store.delete_value("initiator")  # missing key: not an error
    store.set_value("ключ ✓", "значение ✓\n")
    assert store.get_value("ключ ✓") == "значение ✓\n"


def test_get_values_returns_every_pair(store: MetadataStore) -> None:
    assert store.get_values() == {}
    store.set_value("a", "1")
    store.set_value("b/c", "")
    store.set_value("ключ", "значение")
    store.set_value("a", "2")
    store.delete_value("b/c")
    got = store.get_values()
    assert got == {"a": "2", "ключ": "значение"}
    got["a"] = "changed"
    assert store.get_value("a") == "2"


def test_key_value_is_separate_from_records(store: MetadataStore) -> None:
    store.set_value("v1", "x")
    assert store.get_volumes() == []
    store.set_volume(vol("v1"))
    store.delete_value("v1")
    assert ids(store.get_volumes()) == ["v1"]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set_value("k", 1),
        lambda s: s.set_value("k", None),
        lambda s: s.set_value(1, "v"),
        lambda s: s.get_value(None),
        lambda s: s.delete_value(b"k"),
    ],
)
def test_non_string_key_or_value_is_refused(store: MetadataStore, call: Callable) -> None:
    with pytest.raises(InvalidArgument):
        call(store)
    assert store.get_value("k") is None


# -- unicode ---------------------------------------------------------------------
def test_unicode_ids_names_and_values(store: MetadataStore) -> None:
    names = ["données", "数据卷", "🚀-vol", "e\u0301", "\u00e9", "a\x00b", "quote'\"; --"]
    for i, name in enumerate(names):
        store.set_volume(vol(f"vol-{name}", backend=f"бэкенд-{i % 2}", name=name, note=f"«{name}»"))
    for i, name in enumerate(names):
        got = store.get_volumes(name=name)
        # "e\u0301" and "\u00e9" look alike but are different strings: no normalization.
        assert got == [vol(f"vol-{name}", backend=f"бэкенд-{i % 2}", name=name, note=f"«{name}»")]
        assert ids(store.get_volumes(volume_id=f"vol-{name}")) == [f"vol-{name}"]
    assert len(store.get_volumes(backend="бэкенд-0")) == 4
    store.set_snapshot(snap("スナップ", "vol-数据卷", name="снимок"))
    assert ids(store.get_snapshots(volume_id="vol-数据卷", name="снимок")) == ["スナップ"]


# -- threads ---------------------------------------------------------------------
def test_concurrent_writers_lose_nothing(store: MetadataStore) -> None:
    threads_count, per_thread = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                store.set_volume(vol(f"v-{t}-{i}", backend=f"b{t}", n=i))
                store.write(
                    snapshots=[snap(f"s-{t}-{i}", f"v-{t}-{i}")],
                    connections=[conn(f"c-{t}-{i}", f"v-{t}-{i}")],
                )
                store.set_volume(vol("shared", backend="shared", writer=t))
                store.set_value(f"k-{t}", str(i))
                assert store.get_volumes(volume_id=f"v-{t}-{i}")[0]["n"] == i
                if i % 2:
                    store.delete_connection(f"c-{t}-{i}")
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_count)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so that races show up
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    volumes = store.get_volumes()
    assert len(volumes) == threads_count * per_thread + 1
    assert len(store.get_snapshots()) == threads_count * per_thread
    assert len(store.get_connections()) == threads_count * per_thread // 2
    for t in range(threads_count):
        mine = store.get_volumes(backend=f"b{t}")
        # each thread's records are in the order that thread wrote them
        assert [r["n"] for r in mine] == list(range(per_thread))
        assert store.get_value(f"k-{t}") == str(per_thread - 1)
    shared = store.get_volumes(backend="shared")
    assert len(shared) == 1 and shared[0]["writer"] in range(threads_count)
