"""The paging and unique-name parts of the store contract (see base.py), on every store.

Paged listing is what keeps ListVolumes O(page) at 10 000 volumes; ``create_unique``
is what keeps CreateVolume idempotent when several controller replicas (processes)
share one store.
"""

from __future__ import annotations

import random  # a seeded, repeatable order: not for secrets
import threading

import pytest
from csi_support.stores import conn, ids, snap, vol

from csi_driver.storage.exceptions import BadPageToken, InvalidArgument, NameInUse
from csi_driver.storage.persistence import MetadataStore
from csi_driver.storage.persistence.base import CONNECTION, SNAPSHOT, VOLUME, Page


def all_pages(store: MetadataStore, kind: str, limit: int, **filters: str) -> list[Page]:
    pages = [store.list_page(kind, limit=limit, **filters)]
    while pages[-1].next_token:
        pages.append(store.list_page(kind, limit=limit, token=pages[-1].next_token, **filters))
    return pages


def paged_ids(store: MetadataStore, kind: str, limit: int, **filters: str) -> list[str]:
    return [r["id"] for page in all_pages(store, kind, limit, **filters) for r in page.records]


# -- paging ----------------------------------------------------------------------
def test_empty_listing_is_one_empty_page(store: MetadataStore) -> None:
    for kind in (VOLUME, SNAPSHOT, CONNECTION):
        assert store.list_page(kind, limit=5) == Page([], "")


def test_pages_come_in_id_order_and_cover_everything(store: MetadataStore) -> None:
    wanted = [f"v{n:03d}" for n in range(23)]
    shuffled = wanted[:]
    random.Random(7).shuffle(shuffled)
    store.write(volumes=[vol(i, size=n) for n, i in enumerate(shuffled)])
    pages = all_pages(store, VOLUME, 5)
    assert [len(p.records) for p in pages] == [5, 5, 5, 5, 3]
    assert [r["id"] for p in pages for r in p.records] == wanted
    assert pages[-1].next_token == ""
    # the records come back whole
    assert pages[0].records[0] == vol("v000", size=shuffled.index("v000"))


def test_a_page_exactly_at_the_end_says_so(store: MetadataStore) -> None:
    store.write(volumes=[vol(f"v{n}") for n in range(4)])
    first = store.list_page(VOLUME, limit=4)
    assert ids(first.records) == ["v0", "v1", "v2", "v3"]
    # either "" at once, or one more (empty) page that ends the listing
    if first.next_token:
        assert store.list_page(VOLUME, limit=4, token=first.next_token) == Page([], "")


def test_pages_apply_filters(store: MetadataStore) -> None:
    store.write(
        volumes=[vol(f"v{n:02d}", backend="a" if n % 3 else "b") for n in range(20)],
        snapshots=[
            snap(f"s{n:02d}", f"v{n % 4:02d}", backend="a" if n % 2 else "b") for n in range(20)
        ],
        connections=[conn(f"c{n:02d}", f"v{n % 5:02d}") for n in range(20)],
    )
    assert paged_ids(store, VOLUME, 3, backend="b") == [f"v{n:02d}" for n in range(0, 20, 3)]
    assert paged_ids(store, SNAPSHOT, 2, volume_id="v01") == ["s01", "s05", "s09", "s13", "s17"]
    assert paged_ids(store, SNAPSHOT, 2, volume_id="v01", backend="b") == []
    assert paged_ids(store, SNAPSHOT, 4, volume_id="v02", backend="b") == [
        "s02", "s06", "s10", "s14", "s18"]  # fmt: skip
    assert paged_ids(store, CONNECTION, 2, volume_id="v03") == ["c03", "c08", "c13", "c18"]
    assert paged_ids(store, CONNECTION, 50, backend="nope") == []


def test_records_present_throughout_come_once_whatever_changes(store: MetadataStore) -> None:
    """Between pages records come and go; the ones there from start to end are listed
    exactly once and nothing is listed twice."""
    rng = random.Random(11)
    stable = {f"v{n:04d}" for n in range(0, 400, 2)}
    churn = [f"v{n:04d}" for n in range(1, 400, 2)]
    store.write(volumes=[vol(i) for i in sorted(stable | set(churn[:100]))])
    seen: list[str] = []
    page = store.list_page(VOLUME, limit=17)
    extra = 0
    while True:
        seen.extend(ids(page.records))
        # churn around the cursor: delete some, add some before and after it
        for victim in rng.sample(churn, 8):
            store.delete_volume(victim)
        store.write(volumes=[vol(i) for i in rng.sample(churn, 8)])
        store.write(volumes=[vol(f"x{extra:04d}"), vol(f"a{extra:04d}")])
        extra += 1
        if not page.next_token:
            break
        page = store.list_page(VOLUME, limit=17, token=page.next_token)
    assert len(seen) == len(set(seen)), "a record was listed twice"
    assert stable <= set(seen), f"missed {sorted(stable - set(seen))[:5]}"
    assert seen == sorted(seen)


def test_token_survives_deletion_of_the_record_it_points_at(store: MetadataStore) -> None:
    store.write(volumes=[vol(f"v{n}") for n in range(6)])
    first = store.list_page(VOLUME, limit=3)
    assert ids(first.records) == ["v0", "v1", "v2"]
    store.delete_volume("v2")
    assert ids(store.list_page(VOLUME, limit=3, token=first.next_token).records) == [
        "v3", "v4", "v5"]  # fmt: skip


def test_replacing_a_record_during_paging_keeps_its_place(store: MetadataStore) -> None:
    store.write(volumes=[vol(f"v{n}", backend="a") for n in range(6)])
    first = store.list_page(VOLUME, limit=2)
    store.set_volume(vol("v4", backend="a", size=9))
    rest = all_pages(store, VOLUME, 2)
    assert [r["id"] for p in rest for r in p.records] == [f"v{n}" for n in range(6)]
    second = store.list_page(VOLUME, limit=10, token=first.next_token)
    assert [r.get("size") for r in second.records] == [None, None, 9, None]


@pytest.mark.parametrize("token", ["garbage", "djE", "W10", "eyJhIjoxfQ", "💥"])
def test_a_token_the_store_did_not_issue_is_refused(store: MetadataStore, token: str) -> None:
    store.write(volumes=[vol("v1")])
    with pytest.raises(BadPageToken):
        store.list_page(VOLUME, limit=1, token=token)


def test_a_token_of_another_kind_is_refused(store: MetadataStore) -> None:
    store.write(volumes=[vol(f"v{n}") for n in range(3)], snapshots=[snap("s1", "v1")])
    token = store.list_page(VOLUME, limit=1).next_token
    assert token
    with pytest.raises(BadPageToken):
        store.list_page(SNAPSHOT, limit=1, token=token)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": 0},
        {"limit": -1},
        {"limit": True},
        {"limit": "5"},
        {"limit": 5, "token": 3},
        {"limit": 5, "volume_id": "v1"},
        {"limit": 5, "backend": 7},
    ],
)
def test_bad_page_requests_are_refused(store: MetadataStore, kwargs: dict) -> None:
    with pytest.raises(InvalidArgument):
        store.list_page(VOLUME, **kwargs)


def test_unknown_kind_is_refused_by_paging(store: MetadataStore) -> None:
    with pytest.raises(InvalidArgument):
        store.list_page("backup", limit=1)


def test_iterate_reads_everything_in_id_order(store: MetadataStore) -> None:
    store.write(connections=[conn(f"c{n:03d}", f"v{n % 7}") for n in range(50)])
    assert [r["id"] for r in store.iterate(CONNECTION, page_size=7)] == [
        f"c{n:03d}" for n in range(50)]  # fmt: skip
    assert len(list(store.iterate(CONNECTION, page_size=3, volume_id="v2"))) == 7


def test_connections_of_several_volumes(store: MetadataStore) -> None:
    store.write(connections=[conn(f"c{n:02d}", f"v{n % 5}", node=n) for n in range(15)])
    got = store.connections_of(["v1", "v3", "v1", "missing"])
    assert sorted(ids(got)) == ["c01", "c03", "c06", "c08", "c11", "c13"]
    assert {r["id"]: r["node"] for r in got}["c13"] == 13
    assert store.connections_of([]) == []


# -- unique names ----------------------------------------------------------------
def test_create_unique_stores_a_new_record(store: MetadataStore) -> None:
    store.create_unique(VOLUME, vol("v1", name="pvc-1", size=1))
    store.create_unique(SNAPSHOT, snap("s1", "v1", name="snap-1"))
    assert store.get_volumes(name="pvc-1") == [vol("v1", name="pvc-1", size=1)]
    assert ids(store.get_snapshots(name="snap-1")) == ["s1"]


def test_create_unique_refuses_a_taken_name(store: MetadataStore) -> None:
    store.create_unique(VOLUME, vol("v1", name="pvc-1"))
    with pytest.raises(NameInUse) as caught:
        store.create_unique(VOLUME, vol("v2", name="pvc-1", backend="other"))
    assert caught.value.existing_id == "v1"
    assert caught.value.kind == VOLUME and caught.value.name == "pvc-1"
    assert ids(store.get_volumes()) == ["v1"]
    # a name held by a record written with write() counts too
    store.set_volume(vol("v3", name="pvc-3"))
    with pytest.raises(NameInUse):
        store.create_unique(VOLUME, vol("v4", name="pvc-3"))
    # names are per kind
    store.create_unique(SNAPSHOT, snap("s1", "v1", name="pvc-1"))


def test_a_name_is_free_again_once_its_record_is_deleted_or_renamed(store: MetadataStore) -> None:
    store.create_unique(VOLUME, vol("v1", name="pvc-1"))
    store.delete_volume("v1")
    store.create_unique(VOLUME, vol("v2", name="pvc-1"))
    store.set_volume(vol("v2", name="renamed"))
    store.create_unique(VOLUME, vol("v3", name="pvc-1"))
    assert sorted(ids(store.get_volumes())) == ["v2", "v3"]
    assert ids(store.get_volumes(name="renamed")) == ["v2"]


def test_create_unique_refuses_a_taken_id_and_bad_input(store: MetadataStore) -> None:
    store.create_unique(VOLUME, vol("v1", name="a"))
    with pytest.raises(InvalidArgument):
        store.create_unique(VOLUME, vol("v1", name="b"))
    bad = [
        (CONNECTION, conn("c1", "v1", name="x")),
        (VOLUME, vol("v2", name="")),
        (VOLUME, vol("v2")),
        (VOLUME, vol("v2", name=5)),
        ("backup", vol("v2", name="x")),
    ]
    for bad_kind, record in bad:
        with pytest.raises(InvalidArgument):
            store.create_unique(bad_kind, record)
    assert store.get_volumes() == [vol("v1", name="a")]
    assert store.get_connections() == []


def test_concurrent_unique_creates_make_one_record(store: MetadataStore) -> None:
    threads_count = 12
    outcomes: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count)

    def creator(n: int) -> None:
        try:
            start.wait()
            store.create_unique(VOLUME, vol(f"v{n}", name="contended"))
            outcomes.append(f"v{n}")
        except NameInUse as exc:
            outcomes.append(exc.existing_id)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=creator, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stored = store.get_volumes(name="contended")
    assert len(stored) == 1
    assert outcomes == [stored[0]["id"]] * threads_count
