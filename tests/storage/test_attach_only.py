"""A process set up with ``attach_only=True`` (a CSI node) loads a serialized
connection whose backend it does not configure, attaches and detaches it with
os-brick, and refuses by name anything that needs the driver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from samples import NODE_A

from csi_driver import storage


def test_node_attaches_a_connection_of_an_unconfigured_backend(
    memory_store: None, make_backend: Callable[..., storage.Backend], tmp_path: Path
) -> None:
    backend = make_backend("remote")
    volume = backend.create_volume(size=1, name="v")
    published = backend.get_connection(volume.connect(dict(NODE_A)).id).jsons
    backend.close()  # the node knows nothing of this backend ...
    storage.setup(attach_only=True, file_locks_path=str(tmp_path / "node-locks"))
    assert "remote" not in storage.Backend.backends

    connection = storage.Connection.load(published)
    assert connection.backend.name == "remote"
    path = connection.attach()  # ... yet attaches: os-brick needs the connection info only
    assert path and Path(path).is_file()
    assert connection.attached
    with pytest.raises(storage.NotSupported, match="'remote' is not configured"):
        connection.disconnect(force=True)  # the export is the controller's business
    connection.detach()
    assert not connection.attached
    assert "remote" not in storage.Backend.backends, "loading configured nothing"


def test_without_attach_only_the_backend_must_be_configured(
    memory_store: None, make_backend: Callable[..., storage.Backend]
) -> None:
    backend = make_backend("elsewhere")
    volume = backend.create_volume(size=1)
    published = backend.get_connection(volume.connect(dict(NODE_A)).id).jsons
    backend.close()
    with pytest.raises(storage.SerializationError, match="'elsewhere' is not configured"):
        storage.Connection.load(published)


def test_catalog_finds_across_backends_and_names_unconfigured_ones(
    memory_store: None, make_backend: Callable[..., storage.Backend]
) -> None:
    one, two = make_backend("one"), make_backend("two")
    a = one.create_volume(size=1, name="same")
    b = two.create_volume(size=1, name="same")
    snap = b.create_snapshot(name="s")
    assert storage.get_volume(b.id).backend is two
    assert storage.get_snapshot(snap.id).volume_id == b.id
    assert sorted(v.id for v in storage.find_volumes("same")) == sorted([a.id, b.id])
    assert [s.id for s in storage.find_snapshots(volume_id=b.id)] == [snap.id]
    a.connect(dict(NODE_A))
    assert [c.volume_id for c in storage.find_connections()] == [a.id]
    with pytest.raises(storage.NotFound):
        storage.get_volume("00000000-0000-4000-8000-000000000000")
    two.close()
    with pytest.raises(storage.InvalidState, match="backend 'two'"):
        storage.get_volume(b.id)
    assert [v.id for v in storage.find_volumes("same")] == [a.id], "unconfigured: not listed"


def test_a_self_contained_document_starts_no_driver_on_a_node(
    memory_store: None, make_backend: Callable[..., storage.Backend], tmp_path: Path
) -> None:
    storage.setup(persistence_config={"storage": "memory"}, output_all_backend_info=True,
                  file_locks_path=str(tmp_path / "locks"))  # fmt: skip
    backend = make_backend("carried")
    volume = backend.create_volume(size=1)
    published = backend.get_connection(volume.connect(dict(NODE_A)).id).jsons
    assert '"volume_driver"' in published  # the document could configure the backend
    backend.close()
    storage.setup(attach_only=True, file_locks_path=str(tmp_path / "node-locks"))

    for connection in (storage.Connection.load(published),
                       storage.Connection.load_for_host(published)):  # fmt: skip
        assert "carried" not in storage.Backend.backends, "a driver was started"
        assert Path(connection.attach() or "").is_file()
        connection.detach()
    with pytest.raises(storage.NotSupported, match="'carried' is not configured"):
        storage.Connection.load(published).disconnect(force=True)
