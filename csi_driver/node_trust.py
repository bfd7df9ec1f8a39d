"""What the node proves about a publish_context before it attaches anything.

The node runs as root and attaches whatever connection the document describes, so the
document must be the controller's (its signature, when a key is configured) and must
name a volume of this plugin: a ``local`` connection (the FileDriver's) may only name a
regular file or block device that canonicalizes to a path under a configured root.
Anything else is refused with INVALID_ARGUMENT before any host state changes, and a
bad signature is logged as a security event.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Sequence

from csi_driver import errors, host_fs, publish_context
from csi_driver.storage import Connection, SerializationError, connector

LOG = logging.getLogger(__name__)
SECURITY = logging.getLogger("csi_driver.security")

CONNECTION_KEY = publish_context.CONNECTION_KEY


def connection_from(
    volume_id: str,
    context: Mapping[str, str],
    keys: publish_context.Keys | None,
) -> Connection:
    """The Connection a NodeStageVolume request carries, once it is proven the
    controller's and for this volume."""
    data = context.get(CONNECTION_KEY)
    if not data:
        raise errors.InvalidRequest(
            f"publish_context has no {CONNECTION_KEY!r}: ControllerPublishVolume of this "
            "plugin must run first"
        )
    if keys is not None:
        signature = context.get(publish_context.SIGNATURE_KEY, "")
        if not keys.verify(data, signature):
            why = "carries no signature" if not signature else "has a wrong signature"
            SECURITY.warning("SECURITY: refused NodeStageVolume of volume %r: its "
                             "publish_context %s (key file %s)", volume_id, why,
                             keys.path)  # fmt: skip
            raise errors.InvalidRequest(
                f"publish_context {why}: it was not issued by this plugin's controller "
                "(or the controller and node use different signing keys)"
            )
    try:
        connection = Connection.load_for_host(data)
    except SerializationError as exc:
        raise errors.InvalidRequest(f"publish_context[{CONNECTION_KEY!r}]: {exc}") from None
    if not isinstance(connection, Connection):
        raise errors.InvalidRequest(f"publish_context[{CONNECTION_KEY!r}] is not a connection")
    if connection.volume_id != volume_id:
        raise errors.InvalidRequest(
            f"publish_context is for volume {connection.volume_id}, not {volume_id}"
        )
    if not isinstance(connection.connection_info, dict):
        raise errors.InvalidRequest(
            f"publish_context[{CONNECTION_KEY!r}] holds no connection info (was the "
            "publish interrupted? retry ControllerPublishVolume)"
        )
    connector.check_protocol(connection.connection_info)
    if connection.attached:
        # A document issued while some host had it attached (a store written by an older
        # release) carries that host's device; this host attaches for itself.
        record = connection.record
        record.pop("device", None)
        record["status"] = "connected"
        connection = Connection(connection.backend, record)
    return connection


def local_device(connection: Connection, roots: Sequence[str]) -> str | None:
    """For a ``local`` connection, the canonical path of the file or block device it
    names, proven to lie under one of ``roots`` (canonical paths); None for other
    protocols."""
    info = connection.connection_info
    if info.get("driver_volume_type") != "local":
        return None
    data = info.get("data")
    path = data.get("device_path") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path:
        raise errors.InvalidRequest("local connection: data.device_path is missing")
    if "\0" in path or not os.path.isabs(path) or ".." in path.split("/"):
        SECURITY.warning("SECURITY: refused a local connection of volume %s to %r: not a "
                         "canonical absolute path", connection.volume_id, path)  # fmt: skip
        raise errors.InvalidRequest(
            f"local connection: device_path {path!r} is not a canonical absolute path"
        )
    real = os.path.realpath(path)
    if not host_fs.is_under(real, roots):
        SECURITY.warning("SECURITY: refused a local connection of volume %s to %s (%s): not "
                         "under node.local_roots %s", connection.volume_id, path, real,
                         list(roots) or "(none configured)")  # fmt: skip
        raise errors.InvalidRequest(
            f"local connection: device_path {path} ({real}) is not under the node's "
            f"local_roots ({', '.join(roots) or 'none configured'})"
        )
    if connection.volume_id not in os.path.basename(real):
        SECURITY.warning("SECURITY: refused a local connection of volume %s to %s: the file "
                         "is not that volume's", connection.volume_id, real)  # fmt: skip
        raise errors.InvalidRequest(
            f"local connection: device_path {path} does not name volume {connection.volume_id}"
        )
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise errors.ObjectNotFound(
            f"volume {connection.volume_id}: its file {real} does not exist (deleted?)"
        ) from None
    except OSError as exc:
        raise errors.InvalidRequest(
            f"local connection: device_path {path}: {exc.strerror}"
        ) from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise errors.InvalidRequest(
            f"local connection: device_path {path} is neither a regular file nor a block device"
        )
    return real
