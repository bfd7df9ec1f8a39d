"""The ``csi-driver`` command: the only place that reads command-line arguments.

``csi-driver demo`` drives the storage library on the embedded default (the
FileDriver under a data directory, metadata in SQLite there) through a whole
volume life cycle and prints each step, so a fresh checkout shows the library
working end to end. The gRPC plugin itself (``--endpoint``/``--mode``) arrives
with the CSI services.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

BACKEND = "embedded"
DRIVER = "csi_driver.storage.drivers.file.FileDriver"


def _say(step: str, **details: object) -> None:
    print(json.dumps({"step": step, **details}), flush=True)


def demo(data_dir: str) -> int:
    """Create, snapshot, clone, extend, attach, write, read back and delete a volume."""
    from csi_driver import storage

    data_dir = os.path.abspath(data_dir)
    os.makedirs(data_dir, exist_ok=True)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="csi-driver", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="Python log level (default WARNING)")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run a volume life cycle on the embedded default")
    run_demo.add_argument("--data-dir", default="data", help="where volumes and metadata live")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        return demo(args.data_dir)
    return 2


if __name__ == "__main__":
    sys.exit(main())
