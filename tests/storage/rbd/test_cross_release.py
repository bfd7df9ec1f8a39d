"""RBD volumes, snapshots, clones and connections that Cinder's RBDDriver made on an older
release are taken over by the newest release (from a default dump, from a dump with the
full backend configuration, from the SQLite store: see ``csi_support.takeover``) and every
controller-side operation runs on them, checked against the cluster itself.

Each test makes its resources on the older release first (the pools are emptied before
every test), one case per operation, then runs the operations here in turn.
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
CASES = ("extend", "snapshot", "clone", "from-snapshot", "connect", "disconnect",
         "delete-snapshot", "delete-volumes", "teardown")  # fmt: skip
Operation = Callable[[takeover.Newest, ClusterView], None]


def image(volume_id: str) -> str:
    return f"volume-{volume_id}"


def _extend(newest: takeover.Newest, view: ClusterView) -> None:
    src = newest.volume("extend", "src")
    src.extend(2)
    assert storage.get_volume(src.id).size == 2
    assert view.size_gib(POOL, image(src.id)) == 2


def _snapshot(newest: takeover.Newest, view: ClusterView) -> None:
    src = newest.volume("snapshot", "src")
    snapshot = src.create_snapshot(name="made-on-the-newest")
    assert f"snapshot-{snapshot.id}" in view.snaps(POOL, image(src.id))
    assert f"snapshot-{newest.ids['snapshot-snap']}" in view.snaps(POOL, image(src.id))
    restored = snapshot.create_volume(name="restored")
    assert view.parent(POOL, image(restored.id)) == (POOL, image(src.id), f"snapshot-{snapshot.id}")


def _clone(newest: takeover.Newest, view: ClusterView) -> None:
    for name in ("src", "clone"):
        source = newest.volume("clone", name)
        clone = source.clone(name=f"clone-of-{name}")
        assert clone.source_volume_id == source.id
        assert view.parent(POOL, image(clone.id)) == (
            POOL, image(source.id), f"{image(clone.id)}.clone_snap"
        )  # fmt: skip


def _from_snapshot(newest: takeover.Newest, view: ClusterView) -> None:
    snapshot = newest.snapshot("from-snapshot")
    volume = snapshot.create_volume(size=2, name="bigger")
    assert view.size_gib(POOL, image(volume.id)) == 2
    src = image(newest.ids["from-snapshot-src"])
    assert view.parent(POOL, image(volume.id)) == (POOL, src, f"snapshot-{snapshot.id}")


def _connect(newest: takeover.Newest, view: ClusterView) -> None:
    src = newest.volume("connect", "src")
    with pytest.raises(storage.InvalidState, match="already connected to another host"):
        src.connect(dict(NODE_B))
    clone = newest.volume("connect", "clone")
    connection = clone.connect(dict(NODE_B))
    info = connection.connection_info
    assert info["driver_volume_type"] == "rbd"
    assert info["data"]["name"] == f"{POOL}/{image(clone.id)}"
    assert info["data"]["auth_username"] == "cinder"
    old = newest.connection("connect").connection_info
    assert old["data"]["name"] == f"{POOL}/{image(src.id)}", "the older release's export"
    connection.disconnect()
    assert storage.get_volume(clone.id).status == "available"


def _disconnect(newest: takeover.Newest, view: ClusterView) -> None:
    assert newest.volume("disconnect", "src").status == "in-use"
    newest.connection("disconnect").disconnect()
    src = newest.volume("disconnect", "src")
    assert (src.status, src.connections) == ("available", [])


def _delete_snapshot(newest: takeover.Newest, view: ClusterView) -> None:
    newest.volume("delete-snapshot", "from-snap").delete()  # its child goes first
    snapshot = newest.snapshot("delete-snapshot")
    snapshot.delete()
    assert f"snapshot-{snapshot.id}" not in view.snaps(POOL, image(snapshot.volume_id))
    assert newest.volume("delete-snapshot", "src").snapshots == []


def _delete_volumes(newest: takeover.Newest, view: ClusterView) -> None:
    for name in ("from-snap", "clone"):
        volume = newest.volume("delete-volumes", name)
        volume.delete()
        assert image(volume.id) not in view.live_images(POOL)
        with pytest.raises(storage.NotFound):
            storage.get_volume(volume.id)


def _teardown(newest: takeover.Newest, view: ClusterView) -> None:
    src = newest.volume("teardown", "src")
    with pytest.raises(storage.InvalidState, match="snapshot"):
        src.delete()
    newest.connection("teardown").disconnect()
    for name in ("from-snap", "clone"):
        newest.volume("teardown", name).delete()
    newest.snapshot("teardown").delete()
    newest.volume("teardown", "src").delete()
    ids = newest.case_ids("teardown")
    assert not ids & newest.stored_ids()
    assert not {image(i) for i in ids} & view.live_images(POOL)


OPERATIONS: dict[str, Operation] = {
    "extend": _extend, "snapshot": _snapshot, "clone": _clone, "from-snapshot": _from_snapshot,
    "connect": _connect, "disconnect": _disconnect, "delete-snapshot": _delete_snapshot,
    "delete-volumes": _delete_volumes, "teardown": _teardown,
}  # fmt: skip
assert tuple(OPERATIONS) == CASES


@pytest.mark.parametrize(("release", "source"), [p.values[0] for p in takeover.older_params()],
                         ids=[p.id for p in takeover.older_params()])  # fmt: skip
def test_rbd_resources_of_an_older_release(
    release: str, source: str, rbd_site: RbdSite, view: ClusterView,
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:  # fmt: skip
    options = rbd_site.options()
    maker = takeover.OlderMaker(
        tmp_path_factory, NAME, lambda _root: options, CASES, NODE_A, marker=False
    )
    made = maker(release, source)
    volumes = ("src", "from-snap", "clone")
    assert view.live_images(POOL) == {image(made.ids[f"{c}-{v}"]) for c in CASES for v in volumes}
    with takeover.take_over(made, tmp_path) as newest:
        assert_store_matches_cluster(view, NAME, POOL)
        for case, operation in OPERATIONS.items():
            try:
                operation(newest, view)
            except AssertionError as failed:
                raise AssertionError(f"operation {case!r}: {failed}") from failed
            assert_store_matches_cluster(view, NAME, POOL)
