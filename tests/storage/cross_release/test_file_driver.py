"""Volumes, snapshots, clones and connections an older Cinder release made on FileDriver are
fully operable on the newest release, whether they come in a default dump, in a dump with
the full backend configuration, or in the SQLite store the older release wrote (see
``conftest``): extend, snapshot, clone, volume from snapshot, connect, attach/detach,
disconnect and delete each run on them here, and each kind's own dump loads and works."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from csi_support import takeover
from csi_support.takeover import MARKER, GiB, Made, Newest, newest_library, read_marker
from samples import NODE_A, NODE_B

from csi_driver import storage

pytestmark = pytest.mark.cross_release


def test_extend(newest: Newest) -> None:
    src = newest.volume("extend", "src")
    assert src.size == 1
    src.extend(2)
    assert storage.get_volume(src.id).size == 2
    assert os.path.getsize(newest.file(src)) == 2 * GiB
    assert newest.file_marker(src) == MARKER


def test_snapshot_of_a_taken_over_volume(newest: Newest) -> None:
    src = newest.volume("snapshot", "src")
    snapshot = src.create_snapshot(name="made-on-the-newest")
    assert snapshot.status == "available"
    names = sorted(s.name for s in storage.get_volume(src.id).snapshots)
    assert names == ["made-on-the-newest", "snapshot-snap"]
    assert newest.file(snapshot).is_file()
    assert read_marker(snapshot.create_volume(name="restored")) == MARKER


def test_clone_of_taken_over_volumes(newest: Newest) -> None:
    for name in ("src", "clone"):  # the older release's volume and its clone
        clone = newest.volume("clone", name).clone(name=f"clone-of-{name}")
        assert clone.status == "available"
        assert clone.source_volume_id == newest.ids[f"clone-{name}"]
        assert read_marker(clone) == MARKER


def test_volume_from_a_taken_over_snapshot(newest: Newest) -> None:
    snapshot = newest.snapshot("from-snapshot")
    assert snapshot.volume.id == newest.ids["from-snapshot-src"]
    volume = snapshot.create_volume(size=2, name="bigger")
    assert volume.source_snapshot_id == snapshot.id
    assert os.path.getsize(newest.file(volume)) == 2 * GiB
    assert read_marker(volume) == MARKER
    assert read_marker(newest.volume("from-snapshot", "from-snap")) == MARKER


def test_connect(newest: Newest) -> None:
    src = newest.volume("connect", "src")
    with pytest.raises(storage.InvalidState, match="already connected to another host"):
        src.connect(dict(NODE_B))  # the older release's connection still holds it
    clone = newest.volume("connect", "clone")
    connection = clone.connect(dict(NODE_B))
    assert connection.conn_info["driver_volume_type"] == "local"
    assert connection.conn_info["data"]["device_path"] == str(newest.file(clone))
    assert storage.get_volume(clone.id).status == "in-use"
    second = src.connect(dict(NODE_A))  # the host the older release exported it to
    assert {c.id for c in storage.get_volume(src.id).connections} == {
        newest.ids["connect-conn"],
        second.id,
    }
    second.disconnect()
    connection.disconnect()
    assert storage.get_volume(clone.id).connections == []


def test_attach_and_detach(newest: Newest) -> None:
    connection = newest.connection("attach")
    assert not connection.attached
    path = connection.attach()
    assert path == str(newest.file(newest.volume("attach", "src")))
    assert Path(path).read_bytes()[: len(MARKER)] == MARKER
    assert newest.connection("attach").attached, "the attachment is stored"
    connection.detach()
    assert not newest.connection("attach").attached
    # And a new attachment of the same volume to this host.
    assert read_marker(newest.volume("attach", "clone")) == MARKER


def test_disconnect(newest: Newest) -> None:
    src = newest.volume("disconnect", "src")
    assert src.status == "in-use"
    newest.connection("disconnect").disconnect()
    src = storage.get_volume(src.id)
    assert src.connections == []
    assert src.status == "available"
    assert newest.ids["disconnect-conn"] not in newest.stored_ids()


def test_delete_a_taken_over_snapshot(newest: Newest) -> None:
    snapshot = newest.snapshot("delete-snapshot")
    path = newest.file(snapshot)
    assert path.is_file()
    snapshot.delete()
    assert not path.exists()
    assert newest.ids["delete-snapshot-snap"] not in newest.stored_ids()
    assert storage.get_volume(newest.ids["delete-snapshot-src"]).snapshots == []


def test_delete_taken_over_volumes(newest: Newest) -> None:
    for name in ("from-snap", "clone"):
        volume = newest.volume("delete-volumes", name)
        path = newest.file(volume)
        assert path.is_file()
        volume.delete()
        assert not path.exists()
        with pytest.raises(storage.NotFound):
            storage.get_volume(volume.id)


def test_teardown_of_everything_taken_over(newest: Newest) -> None:
    src = newest.volume("teardown", "src")
    with pytest.raises(storage.InvalidState, match="snapshot"):
        src.delete()  # what the older release recorded still guards the volume
    newest.connection("teardown").disconnect()
    for name in ("from-snap", "clone"):
        newest.volume("teardown", name).delete()
    newest.snapshot("teardown").delete()
    storage.get_volume(src.id).delete()
    ids = newest.case_ids("teardown")
    assert not ids & newest.stored_ids()
    assert not {f"{kind}-{i}" for kind in ("volume", "snapshot") for i in ids} & newest.files()
    assert newest.case_ids("extend") <= newest.stored_ids(), "other cases untouched"


# ---------------------------------------------------------------------------------
# Each kind's own dump
# ---------------------------------------------------------------------------------
KINDS = {"backend": storage.Backend, "volume": storage.Volume,
         "snapshot": storage.Snapshot, "connection": storage.Connection}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_each_kinds_own_dump_loads_and_works(older_dumps: Made, tmp_path: Path, kind: str) -> None:
    with newest_library(tmp_path, tmp_path / "taken-over.sqlite"):
        if older_dumps.source == "dump":
            storage.Backend(volume_backend_name=older_dumps.name, **older_dumps.options)
        text = older_dumps.document(kind)
        loaded = KINDS[kind].load(text, save=True)
        assert type(storage.load(text)) is KINDS[kind]
        newest = Newest(older_dumps)
        expected = older_dumps.name if kind == "backend" else newest.ids[f"kinds-{_short[kind]}"]
        assert loaded.id == expected
        _operate[kind](newest, loaded)


_short = {"volume": "src", "snapshot": "snap", "connection": "conn"}


def _operate_backend(newest: Newest, backend: storage.Backend) -> None:
    names = {v.name for v in backend.volumes}
    assert {f"kinds-{n}" for n in ("src", "from-snap", "clone")} <= names
    volume = backend.create_volume(size=1, name="new-on-a-loaded-backend")
    assert newest.file(volume).is_file()
    volume.delete()
    assert not newest.file(volume).exists()


def _operate_volume(newest: Newest, volume: storage.Volume) -> None:
    assert [s.id for s in volume.snapshots] == [newest.ids["kinds-snap"]]
    assert [c.id for c in volume.connections] == [newest.ids["kinds-conn"]]
    assert newest.stored_ids() >= {volume.id, newest.ids["kinds-snap"], newest.ids["kinds-conn"]}
    volume.extend(volume.size + 1)
    assert storage.get_volume(volume.id).size == volume.size
    assert os.path.getsize(newest.file(volume)) == volume.size * GiB


def _operate_snapshot(newest: Newest, snapshot: storage.Snapshot) -> None:
    assert snapshot.volume.id == newest.ids["kinds-src"]
    assert newest.ids["kinds-snap"] in newest.stored_ids()
    assert read_marker(snapshot.create_volume(name="from-a-loaded-snapshot")) == MARKER


def _operate_connection(newest: Newest, connection: storage.Connection) -> None:
    assert connection.volume.id == newest.ids["kinds-src"]
    path = connection.attach()
    assert Path(path).read_bytes()[: len(MARKER)] == MARKER
    connection.detach()
    connection.disconnect()
    assert newest.ids["kinds-conn"] not in newest.stored_ids()


_operate = {"backend": _operate_backend, "volume": _operate_volume,
            "snapshot": _operate_snapshot, "connection": _operate_connection}  # fmt: skip


def test_an_upgraded_node_attaches_a_connection_an_older_controller_published(
    older_dumps: Made, tmp_path: Path
) -> None:
    takeover.close_all_backends()
    storage.setup(attach_only=True, file_locks_path=str(tmp_path / "node-locks"))
    try:
        connection = storage.Connection.load_for_host(older_dumps.document("connection"))
        assert connection.id == older_dumps.ids["kinds-conn"]
        path = connection.attach()
        assert Path(path).read_bytes()[: len(MARKER)] == MARKER
        connection.detach()
        assert not connection.attached
        assert not storage.Backend.backends, "the node configured nothing"
    finally:
        storage.setup(file_locks_path=str(tmp_path / "locks"))
