"""A whole volume life cycle through the storage library on the embedded default
(the FileDriver under a data directory, metadata in SQLite there), printing one
JSON line a step: ``csi-driver demo`` shows the library working end to end.
"""

from __future__ import annotations

import json
import os

BACKEND = "embedded"
DRIVER = "csi_driver.storage.drivers.file.FileDriver"


def _say(step: str, **details: object) -> None:
    print(json.dumps({"step": step, **details}), flush=True)


def demo(data_dir: str) -> int:
    """Create, snapshot, clone, extend, attach, write, read back and delete a volume."""
    from csi_driver import storage

    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)  # holds the store: root-only
    store_path = os.path.join(data_dir, "metadata.sqlite")
    storage.setup(
        persistence_config={"storage": "sqlite", "path": store_path},
        file_locks_path=os.path.join(data_dir, "locks"),
    )
    backend = storage.Backend(
        volume_backend_name=BACKEND,
        volume_driver=DRIVER,
        file_volumes_dir=os.path.join(data_dir, "volumes"),
    )
    stats = backend.stats(refresh=True)
    _say("backend ready", backend=backend.name, store=store_path,
         free_capacity_gb=stats.get("free_capacity_gb"),
         volumes_already_stored=len(backend.volumes))  # fmt: skip

    volume = backend.create_volume(1, name="demo-volume")
    _say("created volume", id=volume.id, size_gib=volume.size, status=volume.status)
    path = volume.attach().path or ""
    payload = b"written through an os-brick attach\n"
    with open(path, "r+b") as device:
        device.write(payload)
    volume.detach()
    _say("attached, wrote, detached", path=path, bytes=len(payload))

    snapshot = volume.create_snapshot(name="demo-snapshot")
    restored = snapshot.create_volume(size=2, name="demo-restored")
    restored.extend(3)
    clone = volume.clone(name="demo-clone")
    _say("snapshot, restore (2 GiB, extended to 3) and clone", snapshot=snapshot.id,
         restored=restored.id, restored_size_gib=restored.size, clone=clone.id)  # fmt: skip

    with open(restored.attach().path or "", "rb") as device:
        found = device.read(len(payload))
    restored.detach()
    _say("read back from the restored volume", same_bytes=found == payload)

    document = backend.dumps
    reloaded = storage.Backend.load(document)
    _say("serialized the backend", json_bytes=len(document),
         volumes_in_dump=len(reloaded.volumes))  # fmt: skip

    for resource in (clone, restored, snapshot, volume):
        resource.delete()
    _say("deleted everything it created", volumes_left=len(backend.volumes))
    backend.close()
    return 0 if found == payload else 1
