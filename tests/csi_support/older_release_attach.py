"""Run by an older Cinder release's interpreter (``releases.run``): a node of that release
attaches a connection the newest release's controller published, as the node plugin does
(``setup(attach_only=True)``, ``Connection.load_for_host``: no store, no backend).

The payload (JSON, first argument): ``connection`` (the published ``jsons``), ``locks``,
``write`` (bytes to write at the start of the device). The result: the device path, the
first bytes read before writing, whether the connection showed attached, and which
backends the process configured (none may be).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: csi_support

from csi_driver import storage
from csi_support import releases


def main() -> None:
    p = json.loads(sys.argv[1])
    storage.setup(attach_only=True, file_locks_path=p["locks"])
    connection = storage.Connection.load_for_host(p["connection"])
    path = connection.attach()
    with open(path, "r+b") as device:
        before = device.read(len(p["write"]))
        device.seek(0)
        device.write(p["write"].encode())
        device.flush()
        os.fsync(device.fileno())
    attached = connection.attached
    connection.detach()
    releases.report({
        "path": path, "read": before.decode(errors="replace"), "attached": attached,
        "detached": not connection.attached, "configured": sorted(storage.Backend.backends),
    })  # fmt: skip


if __name__ == "__main__":
    main()
