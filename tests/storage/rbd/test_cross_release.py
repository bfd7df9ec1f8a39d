"""RBD volumes, snapshots, clones and connections that Cinder's RBDDriver made on an older
release are taken over by the newest release (from a default dump, from a dump with the
full backend configuration, from the SQLite store: see ``csi_support.takeover``) and every
controller-side operation runs on them, checked against the cluster itself.

Each test makes its resources on the older release first (the pools are emptied before
every test), then runs the operations here in turn, checking the store against the
cluster after each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from csi_support import takeover
from rbd_support import POOL, ClusterView, RbdSite, assert_store_matches_cluster
from samples import NODE_A, NODE_B

from csi_driver import storage

pytestmark = pytest.mark.cross_release

NAME = "xr-rbd"
#: Three cases (each a volume, its snapshot, a volume from it, a clone and a connection)
#: keep the images the older release makes, and the pool purges, few.
CASES = ("grow", "export", "remove")
Operation = Callable[[takeover.Newest, ClusterView, str], None]


def image(volume_id: str) -> str:
    return f"volume-{volume_id}"


def _extend(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    src = newest.volume(case, "src")
    src.extend(2)
    assert storage.get_volume(src.id).size == 2
    assert view.size_gib(POOL, image(src.id)) == 2


def _snapshot(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    src = newest.volume(case, "src")
    snapshot = src.create_snapshot(name="made-on-the-newest")
    assert f"snapshot-{snapshot.id}" in view.snaps(POOL, image(src.id))
    assert f"snapshot-{newest.ids[f'{case}-snap']}" in view.snaps(POOL, image(src.id))
    restored = snapshot.create_volume(name="restored")
    assert view.parent(POOL, image(restored.id)) == (POOL, image(src.id), f"snapshot-{snapshot.id}")


def _clone(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    for name in ("src", "clone"):  # the older release's volume and its clone
        source = newest.volume(case, name)
        clone = source.clone(name=f"clone-of-{name}")
        assert clone.source_volume_id == source.id
        assert view.parent(POOL, image(clone.id)) == (
            POOL, image(source.id), f"{image(clone.id)}.clone_snap"
        )  # fmt: skip


def _from_snapshot(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    snapshot = newest.snapshot(case)
    volume = snapshot.create_volume(size=3, name="bigger")
    assert view.size_gib(POOL, image(volume.id)) == 3
    src = image(newest.ids[f"{case}-src"])
    assert view.parent(POOL, image(volume.id)) == (POOL, src, f"snapshot-{snapshot.id}")


def _connect(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    src = newest.volume(case, "src")
    with pytest.raises(storage.InvalidState, match="already connected to another host"):
        src.connect(dict(NODE_B))  # the older release's connection still holds it
    clone = newest.volume(case, "clone")
    connection = clone.connect(dict(NODE_B))
    info = connection.connection_info
    assert info["driver_volume_type"] == "rbd"
    assert info["data"]["name"] == f"{POOL}/{image(clone.id)}"
    assert info["data"]["auth_username"] == "cinder"
    old = newest.connection(case).connection_info
    assert old["data"]["name"] == f"{POOL}/{image(src.id)}", "the older release's export"
    connection.disconnect()
    assert storage.get_volume(clone.id).status == "available"


def _disconnect(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    assert newest.volume(case, "src").status == "in-use"
    newest.connection(case).disconnect()
    src = newest.volume(case, "src")
    assert (src.status, src.connections) == ("available", [])


def _delete_volumes(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    for name in ("from-snap", "clone"):
        volume = newest.volume(case, name)
        volume.delete()
        assert image(volume.id) not in view.live_images(POOL)
        with pytest.raises(storage.NotFound):
            storage.get_volume(volume.id)


def _delete_snapshot(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    snapshot = newest.snapshot(case)
    snapshot.delete()
    assert f"snapshot-{snapshot.id}" not in view.snaps(POOL, image(snapshot.volume_id))
    assert newest.volume(case, "src").snapshots == []


def _delete_volume(newest: takeover.Newest, view: ClusterView, case: str) -> None:
    src = newest.volume(case, "src")
    with pytest.raises(storage.InvalidState, match="connection"):
        src.delete()  # the older release's connection still guards it
    newest.connection(case).disconnect()
    newest.volume(case, "src").delete()
    ids = newest.case_ids(case)
    assert not ids & newest.stored_ids()
    assert not {image(i) for i in ids} & view.live_images(POOL)


#: (operation, case) in the order they run.
OPERATIONS: tuple[tuple[Operation, str], ...] = (
    (_extend, "grow"), (_snapshot, "grow"), (_clone, "grow"), (_from_snapshot, "grow"),
    (_connect, "export"), (_disconnect, "export"),
    (_delete_volumes, "remove"), (_delete_snapshot, "remove"), (_delete_volume, "remove"),
)  # fmt: skip


@pytest.mark.parametrize("older", takeover.older_params())
def test_rbd_resources_of_an_older_release(
    older: tuple[str, str], rbd_site: RbdSite, view: ClusterView,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    options = rbd_site.options()
    maker = takeover.OlderMaker(
        tmp_path_factory, NAME, lambda _root: options, CASES, NODE_A, marker=False
    )
    made = maker(*older)
    volumes = ("src", "from-snap", "clone")
    assert view.live_images(POOL) == {image(made.ids[f"{c}-{v}"]) for c in CASES for v in volumes}
    with takeover.take_over(made, tmp_path) as newest:
        assert_store_matches_cluster(view, NAME, POOL)
        for operation, case in OPERATIONS:
            try:
                operation(newest, view, case)
            except AssertionError as failed:
                raise AssertionError(f"{operation.__name__[1:]} on {case!r}: {failed}") from failed
            assert_store_matches_cluster(view, NAME, POOL)
