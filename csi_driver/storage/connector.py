"""The only caller of os-brick: local connector properties, attach and detach.

Needs no Cinder and no metadata store, so a node that received a serialized
connection can attach it. os-brick's privileged calls run in this process when
it is root (``privsep='in-process'``), else through the venv's ``privsep-helper``
started with the configured root helper.

os-brick is loaded the first time it is needed, not at import: it costs a process
~0.4 s and ~40 MiB (oslo.privsep brings eventlet in). ``local`` connections (the
FileDriver's files, a block device of this host) are attached without it, as
os-brick's own ``local`` connector only hands ``device_path`` back.
"""

from __future__ import annotations

import copy
import logging
import os
import shlex
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from csi_driver.storage.exceptions import AttachError, InvalidArgument, NotSupported
from csi_driver.storage.secrets import mask_text

if TYPE_CHECKING:
    from oslo_privsep.priv_context import PrivContext

    from csi_driver.storage.runtime import Settings

LOG = logging.getLogger(__name__)

#: The protocol attached without os-brick (see ``_LocalDevice``).
LOCAL = "local"

_lock = threading.Lock()
_configured: tuple[Any, ...] | None = None


def privsep_helper_command(settings: Settings) -> str:
    """The command that starts a privsep daemon as root from this venv."""
    helper = os.path.join(os.path.dirname(sys.executable), "privsep-helper")
    return f"{settings.root_helper} {shlex.quote(helper)}"


def configure_privsep(context: PrivContext, section: str, settings: Settings) -> None:
    """Run a privsep context in-process (as root) or through the venv's helper."""
    from oslo_config import cfg

    if settings.privsep_in_process:
        context.set_client_mode(False)
    else:
        context.set_client_mode(True)
        cfg.CONF.set_override("helper_command", privsep_helper_command(settings), group=section)


def prepare() -> None:
    """Load and configure os-brick now rather than at its first use."""
    _configure()


def _configure() -> None:
    """Apply the library settings to oslo.config, oslo.concurrency and os-brick once,
    loading os-brick on the way (on a thread nobody joins: see ``_on_own_thread``)."""
    global _configured
    from csi_driver.storage import runtime

    settings = runtime.settings()
    key = (settings.file_locks_path, settings.privsep, settings.root_helper)
    if _configured == key:
        return
    with _lock:
        if _configured == key:
            return
        _on_own_thread(lambda: _load(settings))
        _configured = key


def _load(settings: Settings) -> None:
    _use_native_threads()
    import os_brick
    import os_brick.initiator.connector  # imported here, off the callers' threads
    from os_brick import privileged
    from oslo_concurrency import lockutils
    from oslo_config import cfg

    os.makedirs(settings.file_locks_path, exist_ok=True)
    lockutils.set_defaults(settings.file_locks_path)
    os_brick.setup(cfg.CONF)
    cfg.CONF.set_override("lock_path", settings.file_locks_path, group="os_brick")
    for context in (privileged.default, privileged.brick_privsep_hide_output):
        configure_privsep(context, "privsep_osbrick", settings)


def _on_own_thread(work: Callable[[], None]) -> None:
    """Run ``work`` on a thread nobody joins: in place on the main thread, else on a new
    daemon thread, waited for (its exception is re-raised).

    os-brick imports eventlet (through oslo.privsep, oslo.service, futurist), and
    eventlet imports a second copy of ``threading`` whose ``_MainThread()`` replaces the
    importing thread's end-of-thread lock: that thread never looks finished, so whatever
    joins it (gRPC's worker pool at shutdown, ``concurrent.futures`` at exit) waits
    forever.
    """
    if threading.current_thread() is threading.main_thread():
        work()
        return
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="os-brick-load", daemon=True).start()
    done.wait()
    if failure:
        raise failure[0]


def _use_native_threads() -> None:
    """Pick oslo.service's threading backend before os-brick loads it.

    os-brick's FC connector imports oslo.service, whose default backend is eventlet.
    Cinder's adapter makes the same choice for controllers; whichever comes first wins.
    """
    from oslo_service import backend as service_backend
    from oslo_service.backend import exceptions as backend_errors

    try:
        service_backend.init_backend(service_backend.BackendType.THREADING)
    except backend_errors.BackendAlreadySelected:
        LOG.warning("oslo.service already runs its eventlet backend in this process")


def local_properties(
    settings: Settings, multipath: bool = False, enforce_multipath: bool = False
) -> dict[str, Any]:
    """os-brick connector properties describing this host (initiator names, IPs...)."""
    _configure()
    from os_brick.initiator import connector as brick_connector

    return brick_connector.get_connector_properties(
        settings.root_helper,
        settings.my_ip or "127.0.0.1",
        multipath,
        enforce_multipath,
        host=settings.host,
    )


class _LocalDevice:
    """Attaches a ``local`` connection: the file or block device is on this host at
    ``device_path`` already, so attach hands the path back and detach has nothing to
    undo, as os-brick's ``local`` connector does, without loading os-brick."""

    def connect_volume(self, data: dict[str, Any]) -> dict[str, Any]:
        path = data.get("device_path") if isinstance(data, dict) else None
        if not isinstance(path, str) or not path:
            raise ValueError("no device_path in the connection properties")
        return {"type": LOCAL, "path": path}

    def disconnect_volume(
        self, data: dict[str, Any], device: dict[str, Any] | None, force: bool = False
    ) -> None:
        """Nothing to undo: connect_volume set nothing up."""

    def extend_volume(self, data: dict[str, Any]) -> int:
        """The size in bytes the device (or file) shows now."""
        with open(data["device_path"], "rb") as device:
            return device.seek(0, os.SEEK_END)


def _attacher(connection_info: dict[str, Any], use_multipath: bool) -> Any:
    """What attaches this connection: ``_LocalDevice`` for ``local``, else os-brick."""
    if isinstance(connection_info, dict) and connection_info.get("driver_volume_type") == LOCAL:
        return _LocalDevice()
    return _brick(connection_info, use_multipath)


def _brick(connection_info: dict[str, Any], use_multipath: bool) -> Any:
    from csi_driver.storage import runtime

    if not isinstance(connection_info, dict) or "driver_volume_type" not in connection_info:
        raise InvalidArgument("connection info has no 'driver_volume_type'")
    _configure()
    from os_brick.initiator import connector as brick_connector

    protocol = connection_info["driver_volume_type"]
    if not isinstance(protocol, str) or not protocol:
        raise InvalidArgument(f"connection info's driver_volume_type {protocol!r} is not a name")
    try:
        # A node always needs a local block device: os-brick's RBD connector maps the
        # image with krbd (/dev/rbdN) only when asked to (do_local_attach), else it
        # returns a librbd file-like handle. The other connectors ignore the argument.
        return brick_connector.InitiatorConnector.factory(
            protocol,
            runtime.settings().root_helper,
            use_multipath=use_multipath,
            device_scan_attempts=3,
            do_local_attach=True,
        )
    except ValueError as exc:
        # The connection document names the protocol: one os-brick does not know is bad
        # input (a forged or corrupted publish_context), not a missing host feature.
        raise InvalidArgument(
            f"connection info's driver_volume_type {mask_text(protocol)!r} names no protocol "
            f"os-brick can attach: {mask_text(str(exc))}"
        ) from exc
    except Exception as exc:
        # Known, but this host is not set up for it (e.g. NFS without a mount point base).
        raise NotSupported(
            f"this host cannot attach {mask_text(protocol)!r} connections: {mask_text(str(exc))}"
        ) from exc


def check_protocol(connection_info: dict[str, Any]) -> None:
    """Refuse, before anything is attached, a connection whose protocol os-brick does not
    know (InvalidArgument) or this host cannot attach (NotSupported)."""
    _attacher(connection_info, use_multipath=False)


def _malformed(exc: BaseException) -> bool:
    """Whether os-brick failed on the shape of the connection properties (a key missing,
    a value of the wrong type), not on the host or the storage."""
    if isinstance(exc, KeyError | TypeError | ValueError):
        return True  # decided without os-brick, which a local attach has not loaded
    from os_brick import exception as brick_errors

    return isinstance(exc, brick_errors.Invalid | brick_errors.VolumePathsNotFound)


def describe_target(data: dict[str, Any]) -> str:
    """Where os-brick was sent (portals and target name), for errors an admin can act on:
    os-brick's own messages often name neither ("Volume device not found at .")."""
    portals: list[str] = []
    if data.get("portals"):  # NVMe-oF, current format: [(address, port, transport)]
        portals = [f"{p[0]}:{p[1]}" for p in data["portals"] if len(p) > 1]
    elif data.get("target_portals"):  # iSCSI multipath
        portals = [str(p) for p in data["target_portals"]]
    elif data.get("target_portal"):  # iSCSI "address:port"; NVMe-oF's older format
        port = data.get("target_port")
        portals = [f"{data['target_portal']}:{port}" if port else str(data["target_portal"])]
    elif data.get("hosts"):  # RBD monitors
        portals = [f"{h}:{p}" for h, p in zip(data["hosts"], data.get("ports") or (), strict=False)]
    name = next((data[k] for k in ("target_iqn", "target_nqn", "nqn", "name", "device_path")
                 if data.get(k)), None)  # fmt: skip
    text = " ".join(filter(None, (", ".join(portals), f"({name})" if name else "")))
    return mask_text(text or "an unnamed target")


def connect(connection_info: dict[str, Any], use_multipath: bool = False) -> dict[str, Any]:
    """Attach (os-brick, or ``_LocalDevice`` for ``local``); returns what
    ``connect_volume`` returned (has 'path')."""
    brick = _attacher(connection_info, use_multipath)
    protocol = connection_info["driver_volume_type"]
    try:
        # A copy: os-brick rewrites what it is given (NVMe-oF converts the old
        # property format in place), and the caller's dict is the stored record.
        device = brick.connect_volume(copy.deepcopy(connection_info.get("data", {})))
    except Exception as exc:
        data = connection_info.get("data")
        target = describe_target(data if isinstance(data, dict) else {})
        if _malformed(exc):
            raise InvalidArgument(
                f"{protocol} connection info is malformed "
                f"({type(exc).__name__}: {mask_text(str(exc))})"
            ) from exc
        raise AttachError(f"{protocol} attach to {target} failed: {mask_text(str(exc))}") from exc
    if not isinstance(device, dict) or not device.get("path"):
        raise AttachError(f"{protocol} attach returned no device path")
    # Keep only what detach needs and JSON can hold (some connectors add objects).
    return {k: v for k, v in device.items() if isinstance(v, str | int | float | bool | None)}


def disconnect(
    connection_info: dict[str, Any],
    device: dict[str, Any] | None,
    use_multipath: bool = False,
    force: bool = False,
) -> None:
    """Detach (os-brick, or ``_LocalDevice`` for ``local``)."""
    brick = _attacher(connection_info, use_multipath)
    protocol = connection_info["driver_volume_type"]
    try:
        brick.disconnect_volume(
            copy.deepcopy(connection_info.get("data", {})), copy.deepcopy(device), force=force
        )
    except Exception as exc:
        raise AttachError(f"{protocol} detach failed: {mask_text(str(exc))}") from exc


def extend(connection_info: dict[str, Any], use_multipath: bool = False) -> int | None:
    """Make an attached device show its volume's new size (os-brick rescans); returns
    the new size in bytes, or None when the protocol has no rescan."""
    brick = _attacher(connection_info, use_multipath)
    protocol = connection_info["driver_volume_type"]
    try:
        size = brick.extend_volume(copy.deepcopy(connection_info.get("data", {})))
    except NotImplementedError:
        return None
    except Exception as exc:
        raise AttachError(f"{protocol} rescan after extend failed: {mask_text(str(exc))}") from exc
    return int(size) if size else None
