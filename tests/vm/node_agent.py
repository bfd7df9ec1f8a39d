"""A stand-in for the node plugin: a separate process that attaches serialized connections.

The VM tests start it once (Cinder's import costs ~20 s under emulation) and send it
one JSON request per line on stdin; it answers one JSON line on stdout. It receives
connections exactly as the node plugin will: ``connection.jsons`` text, loaded with
``storage.Connection.load``. Default dumps name their backend without its configuration,
so the backend is configured here too, under the same name (``backend`` request).

It runs privsep the non-default way, ``storage.setup(privsep='helper', root_helper=...)``:
os-brick's and Cinder's privileged calls go to the venv's ``privsep-helper`` daemons.

    python tests/vm/node_agent.py --locks DIR [--privsep helper] [--root-helper sudo]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from typing import Any

import vmdisk

from csi_driver import storage
from csi_driver.storage import connector, runtime

connections: dict[str, storage.Connection] = {}


def op_backend(options: dict[str, Any]) -> dict[str, Any]:
    """Configure a backend under the controller's name (unless it is already)."""
    name = options["volume_backend_name"]
    if name not in storage.Backend.backends:
        storage.Backend(**options)
    return {"backend": name}


def op_properties() -> dict[str, Any]:
    """This host's os-brick connector properties, as NodeGetInfo would report them."""
    return {"properties": connector.local_properties(runtime.settings())}


def op_attach(connection: str) -> dict[str, Any]:
    """Load a serialized connection and attach it with os-brick."""
    conn = storage.Connection.load(connection)
    before = json.dumps(conn.connection_info, sort_keys=True)
    try:
        path = conn.attach()
    except storage.StorageError as exc:
        return {
            "ok": False, "error": type(exc).__name__, "message": str(exc),
            "attached": conn.attached, "status": conn.status, "device": conn.device,
        }  # fmt: skip
    connections[conn.id] = conn
    return {
        "path": path, "device": conn.device, "status": conn.status,
        "info_unchanged": json.dumps(conn.connection_info, sort_keys=True) == before,
    }  # fmt: skip


def op_detach(connection_id: str) -> dict[str, Any]:
    conn = connections.pop(connection_id, None)
    if conn is None:  # a cleanup step after the test detached already
        return {"status": "not attached here", "device": None}
    conn.detach()
    return {"status": conn.status, "device": conn.device}


def op_read_back(device: str) -> dict[str, Any]:
    return {"checksum": vmdisk.read_back(device), "size": vmdisk.device_size(device)}


def op_volume_cycle(options: dict[str, Any]) -> dict[str, Any]:
    """Controller and node in one: create, attach, write, detach, delete on a backend."""
    backend = storage.Backend.backends.get(options["volume_backend_name"])
    backend = backend or storage.Backend(**options)
    volume = backend.create_volume(size=1, name="privsep-helper-cycle")
    try:
        conn = volume.attach()
        checksum = vmdisk.format_and_write(conn.path or "")
        volume.detach()
    finally:
        if volume.status == "in-use":
            volume.detach(force=True)
        volume.delete()
    return {"checksum": checksum}


def op_privsep() -> dict[str, Any]:
    """How this process runs privsep, and the daemons running on the guest."""
    from cinder import privsep as cinder_privsep
    from os_brick import privileged

    contexts = {
        "os_brick": privileged.default,
        "cinder_sys_admin": cinder_privsep.sys_admin_pctxt,
    }
    return {
        "settings": {
            "privsep": runtime.settings().privsep,
            "root_helper": runtime.settings().root_helper,
        },
        "client_mode": {name: ctx.client_mode for name, ctx in contexts.items()},
        "daemons": vmdisk.privsep_daemons(),
    }


OPS = {
    "backend": op_backend, "properties": op_properties, "attach": op_attach,
    "detach": op_detach, "read_back": op_read_back, "volume_cycle": op_volume_cycle,
    "privsep": op_privsep,
}  # fmt: skip


def serve(out: Any) -> None:
    """One request per input line; one reply per output line, with its duration."""
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "exit":
            return
        started = time.monotonic()
        try:
            reply = {"ok": True, **OPS[op](**request)}
        except Exception as exc:
            logging.exception("%s failed", op)
            reply = {"ok": False, "error": type(exc).__name__, "message": str(exc),
                     "traceback": traceback.format_exc()}  # fmt: skip
        reply["seconds"] = round(time.monotonic() - started, 3)
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--locks", required=True, help="shared with the controller process")
    parser.add_argument("--privsep", default="helper")
    parser.add_argument("--root-helper", default="sudo")
    args = parser.parse_args()
    # Replies own stdout; anything else that prints (drivers, tools) goes to the log.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s node %(name)s %(message)s")
    storage.setup(
        persistence_config={"storage": "memory"}, file_locks_path=args.locks,
        privsep=args.privsep, root_helper=args.root_helper,
    )  # fmt: skip
    from csi_driver.storage import cinder_adapter  # noqa: F401 - the slow import, done now

    out.write(json.dumps({"ok": True, "ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    serve(out)


if __name__ == "__main__":
    main()
