"""A node still on an older Cinder release attaches what a controller already on the newest
release published: the serialized connection carries everything os-brick needs, and the
node needs neither the controller's release nor its backend configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from csi_support import releases
from csi_support.takeover import newest_library
from samples import NODE_A

from csi_driver import storage

pytestmark = pytest.mark.cross_release

SCRIPT = Path(releases.__file__).resolve().parent / "older_release_attach.py"
FROM_CONTROLLER = "written-by-the-newest-controller-host"
FROM_NODE = "written-by-a-node-on-an-older-release"


@pytest.mark.parametrize("release", releases.OLDER)
def test_older_node_attaches_a_connection_the_newest_published(
    release: str, tmp_path: Path
) -> None:
    with newest_library(tmp_path, tmp_path / "controller.sqlite"):
        volumes = tmp_path / "volumes"
        backend = storage.Backend(
            volume_backend_name="xr-publish",
            volume_driver="csi_driver.storage.drivers.file.FileDriver",
            file_volumes_dir=str(volumes),
        )
        volume = backend.create_volume(size=1, name="published")
        with open(volume.attach().path, "r+b") as device:
            device.write(FROM_CONTROLLER.encode())
        volume.detach()
        connection = volume.connect(dict(NODE_A))
        published = backend.get_connection(connection.id).jsons
        stored = storage.runtime.store().get_connections(volume_id=volume.id)

        result = releases.run(release, SCRIPT, {
            "connection": published, "locks": str(tmp_path / "node-locks"), "write": FROM_NODE,
        })  # fmt: skip

        assert result["configured"] == [], "the node configured no backend"
        assert result["path"] == str(volumes / f"volume-{volume.id}")
        assert result["read"] == FROM_CONTROLLER
        assert result["attached"] and result["detached"]
        # The node wrote nothing into the controller's store, and its data reached the volume.
        assert storage.runtime.store().get_connections(volume_id=volume.id) == stored
        connection.disconnect()
        with open(storage.get_volume(volume.id).attach().path, "rb") as device:
            assert device.read(len(FROM_NODE)) == FROM_NODE.encode()
        storage.get_volume(volume.id).detach()
        storage.get_volume(volume.id).delete()
