"""Run by an older Cinder release's interpreter (``releases.run``): makes the resources a
controller on the newest release must take over, and leaves them as that release does.

The payload (JSON, first argument) names a SQLite store, a lock directory, one backend
(``name``, ``options`` with its ``volume_driver``), the cases, the connector of the
published connections, whether dumps carry the full backend configuration and the
output directory. For each case C it makes:

- ``C-src``: a 1 GiB volume; with ``marker``, its first bytes hold the marker, written
  through an attachment (os-brick on this release);
- ``C-snap``: a snapshot of ``C-src``;
- ``C-from-snap`` (from the snapshot) and ``C-clone`` (of ``C-src``);
- a connection of ``C-src`` to the given connector (its export, as a controller's
  ControllerPublishVolume leaves it).

It writes ``library.json`` (``storage.dumps()``) and, for the case ``kinds`` when there is
one, each kind's own dump (``backend.json``, ``volume.json``, ``snapshot.json``,
``connection.json``); the records stay in the SQLite store. The result maps every name to
its id.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: csi_support

from csi_driver import storage
from csi_support import releases


def write_marker(volume: storage.Volume, marker: bytes) -> None:
    connection = volume.attach()
    with open(connection.path, "r+b") as device:
        device.write(marker)
        device.flush()
        os.fsync(device.fileno())
    volume.detach()


def main() -> None:
    p = json.loads(sys.argv[1])
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    storage.setup(
        persistence_config={"storage": "sqlite", "path": p["store"]},
        file_locks_path=p["locks"],
        output_all_backend_info=p["all_backend_info"],
    )
    backend = storage.Backend(volume_backend_name=p["name"], **p["options"])
    ids: dict[str, str] = {}
    made: dict[str, dict[str, object]] = {}
    for case in p["cases"]:
        src = backend.create_volume(size=1, name=f"{case}-src")
        if p.get("marker"):
            write_marker(src, p["marker"].encode())
        snap = src.create_snapshot(name=f"{case}-snap")
        from_snap = snap.create_volume(name=f"{case}-from-snap")
        clone = src.clone(name=f"{case}-clone")
        connection = src.connect(p["connector"])
        for name, resource in (("src", src), ("snap", snap), ("from-snap", from_snap),
                               ("clone", clone), ("conn", connection)):  # fmt: skip
            ids[f"{case}-{name}"] = resource.id
        made[case] = {"src": src, "snap": snap, "conn": connection}
    (out / "library.json").write_text(storage.dumps())
    if "kinds" in made:
        kinds = made["kinds"]
        (out / "backend.json").write_text(backend.dumps)
        (out / "volume.json").write_text(kinds["src"].dumps)  # type: ignore[attr-defined]
        (out / "snapshot.json").write_text(kinds["snap"].dumps)  # type: ignore[attr-defined]
        (out / "connection.json").write_text(kinds["conn"].dumps)  # type: ignore[attr-defined]
    backend.close()
    releases.report({"ids": ids})


if __name__ == "__main__":
    main()
