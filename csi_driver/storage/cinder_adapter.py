"""The only module that imports Cinder: hosts Cinder volume drivers outside Cinder.

A driver expects what cinder-volume gives it: a configuration group, a request
context, versioned objects with every field it reads filled in, a handful of
database calls, file locks, coordination, privileged helpers. This module gives
exactly that and nothing else, working on the storage library's *records* (plain
dicts): Cinder objects are built here, just for the driver call that needs them,
and what the driver changed is handed back as record updates.

Global changes to Cinder are made in one place, ``_apply_process_settings``:

- ``cinder.db.api``'s functions that would touch a database are replaced. The few
  that drivers call (``volume_get``, ``volume_update``, volume types, initiator
  data...) are served from the metadata store; any other raises ``NotSupported``
  naming the function, instead of failing on a missing SQL database. Cinder 29
  has no DB-backend switch any more, so this is the narrowest hook there is.
- ``cinder.utils.get_root_helper`` returns the configured root helper.
- ``volume_utils.generate_password`` remembers what it generates as a secret: iSCSI
  targets make CHAP credentials inside ``create_export`` and log the commands that
  use them (``cinder-rtstool create ... <user> <password>``) before returning them.
- ``[DEFAULT]`` host/state_path/my_ip, lock and coordination paths, privsep mode.
- The venv's ``bin`` directory goes on ``PATH``: drivers run ``cinder-rtstool``
  and ``privsep-helper`` by name.

Per backend, the driver gets its own oslo.config group, and ``set_default`` (which
Cinder writes to the ``[backend_defaults]`` group shared by every backend) is
redirected to that group, so two backends of one driver never share state.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # eventlet's deprecation notice on import
    try:
        from cinder import monkey_patch  # Cinder 29 on
    except ImportError:  # older: cinder-volume's command monkey-patched eventlet itself
        monkey_patch = None

# cinder-volume's own start-up for plain threads: oslo.service's threading backend,
# and eventlet made unable to monkey-patch this process by accident. A Cinder without
# ``monkey_patch`` ran drivers under eventlet; they run here on plain threads, as
# cinderlib ran them: nothing to undo, since nothing here monkey-patches.
if monkey_patch is not None and not monkey_patch.MONKEY_PATCHED:
    monkey_patch.patch(backend="threading")


from cinder import objects as cinder_objects

cinder_objects.register_all()  # drivers import modules that need the object classes

from cinder import context as cinder_context  # noqa: E402
from cinder import coordination, exception  # noqa: E402
from cinder import privsep as cinder_privsep  # noqa: E402
from cinder import utils as cinder_utils  # noqa: E402
from cinder.db import api as db_api  # noqa: E402
from cinder.volume import configuration as cinder_configuration  # noqa: E402
from cinder.volume import volume_utils  # noqa: E402
from oslo_concurrency import processutils  # noqa: E402
from oslo_config import cfg  # noqa: E402
from oslo_utils import importutils  # noqa: E402

from csi_driver.storage import connector, crash_points, runtime, secrets  # noqa: E402
from csi_driver.storage.exceptions import (  # noqa: E402
    BackendSetupError,
    CapacityError,
    DriverError,
    InvalidArgument,
    InvalidState,
    NotFound,
    NotSupported,
    StorageError,
)
from csi_driver.storage.persistence.base import apply_changes  # noqa: E402


def _run_tpool_calls_inline() -> None:
    """Drivers of Cinder before 29 send blocking calls (librbd, in the RBD driver)
    through eventlet's thread pool (``tpool.Proxy``), whose answers come back through an
    eventlet hub that no thread runs here: a call from a second thread never returns.
    With a pool of no threads, eventlet runs each such call on the calling thread, as
    Cinder 29 does itself on plain threads (``utils.tpool_wrap`` returns the object)."""
    from eventlet import tpool

    tpool.set_num_threads(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Zero threads in tpool": what is wanted here
        tpool.setup()


_run_tpool_calls_inline()

LOG = logging.getLogger(__name__)
CONF = cfg.CONF
Record = dict[str, Any]

# Record keys <-> Cinder object field names, where they differ.
_VOLUME_FIELD = {"name": "display_name", "description": "display_description",
                 "name_id": "_name_id", "source_volume_id": "source_volid",
                 "source_snapshot_id": "snapshot_id"}  # fmt: skip
_SNAPSHOT_FIELD = {"name": "display_name", "description": "display_description"}
# What a driver may change on a volume or snapshot and we keep (Cinder names).
_VOLUME_KEEPS = {"provider_location", "provider_auth", "provider_id", "provider_geometry",
                 "_name_id", "replication_status", "admin_metadata", "metadata", "size",
                 "replication_driver_data", "replication_extended_status"}  # fmt: skip
_SNAPSHOT_KEEPS = {"provider_location", "provider_auth", "provider_id", "progress", "metadata"}
_RESERVED_GROUPS = frozenset({"DEFAULT", cinder_configuration.SHARED_CONF_GROUP})

# Cinder exceptions that mean something more precise than "the driver failed".
_EXCEPTION_TYPES: tuple[tuple[type[BaseException], type[StorageError]], ...] = (
    (NotImplementedError, NotSupported),
    (exception.VolumeIsBusy, InvalidState),
    (exception.SnapshotIsBusy, InvalidState),
    (exception.InvalidConnectorException, InvalidArgument),
    (exception.InvalidInput, InvalidArgument),
    (exception.VolumeNotFound, NotFound),
    (exception.SnapshotNotFound, NotFound),
    (exception.VolumeSizeExceedsLimit, CapacityError),
)


# ---------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------
def describe(exc: BaseException) -> str:
    """A one-line, secret-free account of a driver exception.

    Drivers often wrap the error that names the cause in a generic one (RBD raises
    "Error connecting to ceph cluster." while handling ``rados.PermissionDeniedError``),
    so the exceptions it was raised from or while handling are added when they say more.
    An earlier failure already reported on its own (a cleanup runs while handling the
    create that failed) is not a cause and is left out.
    """
    text = _describe_one(exc)
    for _ in range(3):
        cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if cause is None or isinstance(exc, StorageError):
            break
        if isinstance(cause, DriverError | BackendSetupError):
            break
        cause_text = _describe_one(cause)
        if cause_text not in text:
            text += f" (caused by {cause_text})"
        exc = cause
    return text


def _describe_one(exc: BaseException) -> str:
    if isinstance(exc, processutils.ProcessExecutionError):
        lines = (exc.stderr or exc.stdout or "").splitlines()
        output = "; ".join(" ".join(line.split()) for line in lines if line.strip())
        output = output or exc.description
        command = exc.cmd if isinstance(exc.cmd, str) else " ".join(map(str, exc.cmd or ()))
        text = f"{output} (command {command!r} exited with {exc.exit_code})"
    elif isinstance(exc, StorageError):
        text = str(exc)
    else:
        message = getattr(exc, "msg", None) or str(exc) or "no message"
        text = f"{type(exc).__name__}: {' '.join(str(message).split())}"
    return secrets.mask_text(text)


def _translate(backend: str, operation: str, exc: BaseException) -> StorageError:
    for cinder_type, our_type in _EXCEPTION_TYPES:
        if isinstance(exc, cinder_type):
            if our_type is NotSupported and isinstance(exc, NotImplementedError):
                return NotSupported(f"backend {backend!r}: the driver does not support {operation}")
            return our_type(f"backend {backend!r}: {operation}: {describe(exc)}")
    if isinstance(exc, NotSupported):
        return NotSupported(f"backend {backend!r}: {operation}: {exc}")
    return DriverError(backend, operation, describe(exc))


# ---------------------------------------------------------------------------------
# Process-wide Cinder settings
# ---------------------------------------------------------------------------------
_settings_lock = threading.Lock()
_applied_generation = 0


def ensure_ready() -> None:
    """Apply the library's settings to Cinder if ``setup()`` changed them."""
    global _applied_generation
    current = runtime.current()
    if current.generation == _applied_generation:
        return
    with _settings_lock:
        if current.generation != _applied_generation:
            _apply_process_settings(current.settings)
            _applied_generation = current.generation


def _apply_process_settings(settings: runtime.Settings) -> None:
    """Every global change this project makes to Cinder, in one documented place."""
    # Drivers run Cinder's console scripts (cinder-rtstool, privsep-helper) by name;
    # they live beside this interpreter in the venv, which need not be on PATH.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, (bin_dir, os.environ.get("PATH"))))
    if CONF._args is None:  # oslo.config not parsed yet: parse an empty command line
        CONF([], project="cinder", default_config_files=[], default_config_dirs=[])
    os.makedirs(settings.file_locks_path, exist_ok=True)
    state_path = settings.state_path or settings.file_locks_path
    os.makedirs(state_path, exist_ok=True)
    CONF.set_override("host", settings.host)
    CONF.set_override("state_path", state_path)
    if settings.my_ip:
        CONF.set_override("my_ip", settings.my_ip)
    CONF.set_override("lock_path", settings.file_locks_path, group="oslo_concurrency")
    CONF.set_override("backend_url", f"file://{settings.file_locks_path}", group="coordination")
    for name, value in settings.cinder_config.items():
        try:
            CONF.set_override(name, value)
        except cfg.NoSuchOptError:
            raise InvalidArgument(
                f"cinder_config: Cinder has no [DEFAULT] option {name!r}"
            ) from None
        except ValueError as exc:
            raise InvalidArgument(f"cinder_config: bad value for {name!r}: {exc}") from None
    connector.configure_privsep(cinder_privsep.sys_admin_pctxt, "cinder_sys_admin", settings)
    root_helper = settings.root_helper
    cinder_utils.get_root_helper = lambda: root_helper
    _remember_generated_secrets()
    _install_db_shim()
    if coordination.COORDINATOR.started:
        coordination.COORDINATOR.stop()
    coordination.COORDINATOR.start()


# ---------------------------------------------------------------------------------
# The database calls drivers make, served from the metadata store
# ---------------------------------------------------------------------------------
class _CallScope(threading.local):
    """Records taking part in the driver call running on this thread."""

    def __init__(self) -> None:
        self.host: DriverHost | None = None
        self.records: dict[tuple[str, str], Record] = {}


_scope = _CallScope()
_volume_types: dict[str, Record] = {}  # volume type id -> record['volume_type']


def _record(kind: str, record_id: str) -> Record:
    """The live record of the running call, else the stored one."""
    live = _scope.records.get((kind, record_id))
    if live is not None:
        return live
    getter = getattr(runtime.store(), f"get_{kind}s")
    found = getter(**{f"{kind}_id": record_id})
    if not found:
        error = exception.VolumeNotFound if kind == "volume" else exception.SnapshotNotFound
        raise error(**{f"{kind}_id": record_id})
    return found[0]


def _save_changes(kind: str, record: Record, changes: Record) -> None:
    apply_changes(record, changes)
    if (kind, record["id"]) not in _scope.records:  # live records are saved by their owner
        runtime.store().write(**{kind + "s": (record,)})


def _host_for(record: Record) -> DriverHost:
    host = _scope.host
    if host is not None and host.name == record["backend"]:
        return host
    from csi_driver.storage.backend import Backend

    backend = Backend.backends.get(record["backend"])
    if backend is None:
        raise NotSupported(f"backend {record['backend']!r} is not configured in this process")
    return backend._host


def _db_volume_get(context: Any, volume_id: str, *args: Any, **kwargs: Any) -> Any:
    record = _record("volume", volume_id)
    return _host_for(record)._volume_object(context, record)


def _db_volume_update(context: Any, volume_id: str, values: Mapping[str, Any], *a: Any) -> Any:
    record = _record("volume", volume_id)
    _save_changes("volume", record, _kept(values, _VOLUME_KEEPS, _VOLUME_FIELD))
    return _db_volume_get(context, volume_id)


def _db_volume_metadata_get(context: Any, volume_id: str) -> dict[str, str]:
    return dict(_record("volume", volume_id).get("metadata") or {})


def _db_volume_admin_metadata_get(context: Any, volume_id: str) -> dict[str, str]:
    return dict(_record("volume", volume_id).get("admin_metadata") or {})


def _metadata_updater(kind: str, key: str) -> Callable[..., dict[str, str]]:
    def update(context: Any, record_id: str, metadata: Mapping[str, str], delete: bool,
               *args: Any, **kwargs: Any) -> dict[str, str]:  # fmt: skip
        record = _record(kind, record_id)
        merged = {} if delete else dict(record.get(key) or {})
        merged.update({k: str(v) for k, v in metadata.items()})
        _save_changes(kind, record, {key: merged})
        return dict(merged)

    return update


def _metadata_deleter(kind: str, key: str) -> Callable[..., None]:
    def delete(context: Any, record_id: str, meta_key: str, *args: Any, **kwargs: Any) -> None:
        record = _record(kind, record_id)
        remaining = {k: v for k, v in (record.get(key) or {}).items() if k != meta_key}
        _save_changes(kind, record, {key: remaining})

    return delete


def _db_snapshot_get(context: Any, snapshot_id: str) -> Any:
    record = _record("snapshot", snapshot_id)
    volume = _record("volume", record["volume_id"])
    host = _host_for(record)
    return host._snapshot_object(context, record, host._volume_object(context, volume))


def _db_snapshot_update(context: Any, snapshot_id: str, values: Mapping[str, Any]) -> None:
    record = _record("snapshot", snapshot_id)
    _save_changes("snapshot", record, _kept(values, _SNAPSHOT_KEEPS, _SNAPSHOT_FIELD))


def _db_snapshot_metadata_get(context: Any, snapshot_id: str) -> dict[str, str]:
    return dict(_record("snapshot", snapshot_id).get("metadata") or {})


def _attachment_fields(record: Record) -> Record:
    """VolumeAttachment fields of a connection record."""
    return {"id": record["id"], "volume_id": record["volume_id"], "instance_uuid": None,
            "attached_host": record.get("attached_host"), "mountpoint": None,
            "attach_time": None, "detach_time": None, "attach_status": "attached",
            "attach_mode": record.get("attach_mode"),
            "connection_info": record.get("connection_info"),
            "connector": record.get("connector")}  # fmt: skip


class _Row(dict):
    """A database row as Cinder's object loaders read it: ``row.x`` or ``row['x']``."""

    __getattr__ = dict.__getitem__


def _db_attachments_of(context: Any, volume_id: str, *args: Any, **kwargs: Any) -> list[_Row]:
    _record("volume", volume_id)
    rows = []
    for connection in runtime.store().get_connections(volume_id=volume_id):
        row = _attachment_fields(connection)
        for key in ("connection_info", "connector"):  # stored as JSON text in Cinder's DB
            row[key] = json.dumps(row[key]) if row[key] is not None else None
        rows.append(_Row(row))
    return rows


def _db_attachment_specs_get(context: Any, attachment_id: str) -> dict[str, str]:
    return {}  # legacy per-attachment connector rows; never written here


def _db_encryption_metadata_get(context: Any, volume_id: str) -> dict[str, Any]:
    _record("volume", volume_id)  # NotFound for unknown ids, as Cinder does
    return {"encryption_key_id": None}


def _db_glance_metadata_get(context: Any, volume_id: str, *args: Any) -> Any:
    raise exception.GlanceMetadataNotFound(id=volume_id)


def _type_record(type_id: str) -> Record:
    found = _volume_types.get(type_id)
    if found is None:
        raise exception.VolumeTypeNotFound(volume_type_id=type_id)
    return found


def _qos_id(type_id: str) -> str:
    return str(uuid.uuid5(uuid.UUID(type_id), "qos"))


def _qos_dict(type_id: str) -> dict[str, Any] | None:
    qos = _type_record(type_id).get("qos_specs")
    if not qos:
        return None
    specs = {k: v for k, v in qos.items() if k != "consumer"}
    return {"id": _qos_id(type_id), "name": f"qos-{type_id}",
            "consumer": qos.get("consumer", "back-end"), "specs": specs}  # fmt: skip


def _db_volume_type_get(context: Any, type_id: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    vtype = _type_record(type_id)
    return {"id": type_id, "name": vtype["name"], "description": None, "is_public": True,
            "deleted": False, "projects": [], "extra_specs": dict(vtype["extra_specs"]),
            "qos_specs_id": _qos_id(type_id) if vtype.get("qos_specs") else None}  # fmt: skip


def _db_volume_type_extra_specs_get(context: Any, type_id: str) -> dict[str, str]:
    return dict(_type_record(type_id)["extra_specs"])


def _db_volume_type_qos_specs_get(context: Any, type_id: str) -> dict[str, Any]:
    return {"qos_specs": _qos_dict(type_id)}


def _db_get_by_id(context: Any, model: Any, object_id: str, *args: Any, **kwargs: Any) -> Any:
    """Serve ``SomeObject.get_by_id`` for the kinds drivers look up: types and QoS."""
    name = getattr(model, "__name__", str(model))
    if name == "VolumeType":
        return _db_volume_type_get(context, object_id)
    if name == "QualityOfServiceSpecs":
        for type_id in _volume_types:
            qos = _qos_dict(type_id)
            if qos and qos["id"] == object_id:
                return qos
        raise exception.QoSSpecsNotFound(specs_id=object_id)
    raise NotSupported(f"the driver looked up a Cinder {name} by id, which needs a Cinder database")


def _initiator_key(initiator: str, namespace: str) -> str:
    return f"cinder/driver_initiator_data/{namespace}/{initiator}"


def _db_initiator_data_get(context: Any, initiator: str, namespace: str) -> list[_Row]:
    raw = runtime.store().get_value(_initiator_key(initiator, namespace))
    items = json.loads(raw) if raw else {}
    return [_Row(initiator=initiator, namespace=namespace, key=k, value=v)
            for k, v in items.items()]  # fmt: skip


def _db_initiator_data_insert(context: Any, initiator: str, namespace: str, key: str,
                              value: str) -> _Row:  # fmt: skip
    store = runtime.store()
    with _settings_lock:
        raw = store.get_value(_initiator_key(initiator, namespace))
        items = json.loads(raw) if raw else {}
        if key in items:
            raise exception.DriverInitiatorDataExists(
                initiator=initiator, namespace=namespace, key=key
            )
        items[key] = value
        store.set_value(_initiator_key(initiator, namespace), json.dumps(items))
    return _Row(initiator=initiator, namespace=namespace, key=key, value=value)


_DB_SERVED: dict[str, Callable[..., Any]] = {
    "volume_get": _db_volume_get,
    "volume_update": _db_volume_update,
    "volume_metadata_get": _db_volume_metadata_get,
    "volume_metadata_update": _metadata_updater("volume", "metadata"),
    "volume_metadata_delete": _metadata_deleter("volume", "metadata"),
    "volume_admin_metadata_get": _db_volume_admin_metadata_get,
    "volume_admin_metadata_update": _metadata_updater("volume", "admin_metadata"),
    "volume_admin_metadata_delete": _metadata_deleter("volume", "admin_metadata"),
    "volume_attachment_get_all_by_volume_id": _db_attachments_of,
    "attachment_specs_get": _db_attachment_specs_get,
    "volume_encryption_metadata_get": _db_encryption_metadata_get,
    "volume_glance_metadata_get": _db_glance_metadata_get,
    "snapshot_get": _db_snapshot_get,
    "snapshot_update": _db_snapshot_update,
    "snapshot_metadata_get": _db_snapshot_metadata_get,
    "snapshot_metadata_update": _metadata_updater("snapshot", "metadata"),
    "snapshot_metadata_delete": _metadata_deleter("snapshot", "metadata"),
    "volume_type_get": _db_volume_type_get,
    "volume_type_extra_specs_get": _db_volume_type_extra_specs_get,
    "volume_type_qos_specs_get": _db_volume_type_qos_specs_get,
    "get_by_id": _db_get_by_id,
    "driver_initiator_data_get": _db_initiator_data_get,
    "driver_initiator_data_insert_by_key": _db_initiator_data_insert,
}
# Helpers in cinder.db.api that never touch a database; left as they are.
_DB_PURE = frozenset({
    "configure", "get_engine", "dispose_engine", "is_admin_context", "is_user_context",
    "authorize_project_context", "authorize_user_context", "authorize_quota_class_context",
    "require_admin_context", "require_context", "require_volume_exists",
    "require_snapshot_exists", "require_backup_exists", "require_qos_specs_exists",
    "handle_db_data_error", "get_model_for_versioned_object", "is_orm_value",
    "process_sort_params", "is_valid_model_filters", "apply_like_filters",
})  # fmt: skip


def _refuser(name: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotSupported(
            f"the driver called cinder.db.api.{name}(), which needs a Cinder database; "
            "a standalone host does not provide it"
        )

    refuse.__name__ = name
    return refuse


def _remember_generated_secrets() -> None:
    """Mask CHAP credentials from the moment a target driver generates them."""
    generate = volume_utils.generate_password
    if getattr(generate, "remembers_secrets", False):
        return

    def generate_password(*args: Any, **kwargs: Any) -> str:
        value = generate(*args, **kwargs)
        secrets.remember(value)  # generate_username calls this too: masked as well
        return value

    generate_password.remembers_secrets = True  # type: ignore[attr-defined]
    volume_utils.generate_password = generate_password


def _install_db_shim() -> None:
    """Serve or refuse every database function of ``cinder.db.api``. Cinder before 29
    also re-exports them from the ``cinder.db`` package (``from cinder.db.api import
    *``), where drivers and objects call them as ``db.volume_get``: those copies are
    replaced too."""
    package = sys.modules["cinder.db"]
    for name, value in list(vars(db_api).items()):
        if name.startswith("_") or not inspect.isfunction(value) or name in _DB_PURE:
            continue
        if getattr(value, "__module__", None) not in ("cinder.db.api", __name__):
            continue
        replacement = _DB_SERVED.get(name) or _refuser(name)
        setattr(db_api, name, replacement)
        if getattr(package, name, None) is value:
            setattr(package, name, replacement)


def _kept(values: Mapping[str, Any], keeps: set[str], renames: Mapping[str, str]) -> Record:
    """Record updates from Cinder field values, keeping only what we store."""
    to_record = {cinder: ours for ours, cinder in renames.items()}
    out: Record = {}
    for key, value in values.items():
        if key not in keeps:
            continue
        if isinstance(value, Mapping):
            value = dict(value)
        out[to_record.get(key, key)] = value
    return out


# ---------------------------------------------------------------------------------
# One driver, one configuration group
# ---------------------------------------------------------------------------------
class _IsolatedGroupConf(cinder_configuration.BackendGroupConfiguration):
    """Cinder's per-backend config view, with ``set_default`` kept to this backend."""

    def set_default(self, opt_name: str, default: Any) -> None:
        CONF.set_default(opt_name, default, group=self.config_group)


class _BackendConfiguration(cinder_configuration.Configuration):
    def __init__(self, volume_opts: list[Any], config_group: str) -> None:
        self.config_group = config_group
        self.conf = _IsolatedGroupConf(volume_opts, config_group)


def _shared_opt(name: str) -> Any:
    """The option object registered under [backend_defaults], or None."""
    group = CONF._groups.get(cinder_configuration.SHARED_CONF_GROUP)
    info = group._opts.get(name) if group is not None else None
    return info["opt"] if info else None


# Options a driver reads with getattr() although Cinder does not register them.
# OSSN-0085 took rbd_keyring_conf out of cinder.conf because Cinder's users can read
# connection info; here only the node plugin reads it, and it needs the keyring to
# attach without a keyring file on every node (cinderlib offered the same option).
# Option name -> (driver class that reads it, option, whether it names a secret file).
_UNREGISTERED_OPTS: dict[str, tuple[str, Any, bool]] = {
    "rbd_keyring_conf": (
        "cinder.volume.drivers.rbd.RBDDriver",
        cfg.StrOpt("rbd_keyring_conf", help="keyring file of rbd_user, sent in connection info"),
        True,
    ),
}


def _unregistered_opt(driver_class: type, name: str) -> Any:
    """The option object of an unregistered option ``driver_class`` reads, or None."""
    found = _UNREGISTERED_OPTS.get(name)
    if found is None:
        return None
    reader = found[0]
    if any(f"{c.__module__}.{c.__qualname__}" == reader for c in driver_class.__mro__):
        return found[1]
    return None


def _remember_secret_file(path: Any) -> None:
    """Mask a secret file's content (a keyring) wherever it would be logged."""
    with contextlib.suppress(OSError, TypeError, ValueError), open(path, encoding="utf-8") as f:
        secrets.remember(f.read())


def _group_has(group: str, name: str) -> bool:
    found = CONF._groups.get(group)
    return found is not None and name in found._opts


class DriverHost:
    """One Cinder driver instance and everything it needs, for one backend."""

    def __init__(self, name: str, volume_driver: str, options: Mapping[str, Any]) -> None:
        ensure_ready()
        if name in _RESERVED_GROUPS:
            raise BackendSetupError(name, "this name is reserved by Cinder's configuration")
        self.name = name
        self.volume_driver = volume_driver
        self._secret_options: set[str] = set()
        self._clear_group()
        try:
            driver_class = importutils.import_class(volume_driver)
        except Exception as exc:
            raise BackendSetupError(
                name, f"cannot import volume_driver {volume_driver!r}: {describe(exc)}"
            ) from exc
        self._driver_class: type = driver_class
        settings = runtime.settings()
        CONF.register_group(cfg.OptGroup(name))  # a no-op when it exists
        self.configuration = _BackendConfiguration([], name)
        pending = self._set_options({"volume_backend_name": name, **options}, early=True)
        try:
            self.driver = driver_class(
                configuration=self.configuration,
                host=f"{settings.host}@{name}",
                cluster_name=None,
                is_vol_db_empty=False,
                active_backend_id=None,
            )
        except Exception as exc:
            self._clear_group()
            raise BackendSetupError(name, f"{volume_driver}: {describe(exc)}") from exc
        self._set_options(pending, early=False)
        try:
            with self._calling("setup"):
                self.driver.do_setup(self._context())
                self.driver.check_for_setup_error()
        except StorageError as exc:
            self._clear_group()
            reason = getattr(exc, "reason", None) or str(exc)
            raise BackendSetupError(name, f"{volume_driver} failed to start: {reason}") from exc
        self.driver.set_initialized()

    # -- configuration -------------------------------------------------------------
    def _set_options(self, options: Mapping[str, Any], early: bool) -> dict[str, Any]:
        """Put options into this backend's group; return those not registered yet."""
        pending: dict[str, Any] = {}
        for key, value in options.items():
            if not _group_has(self.name, key):
                opt = _shared_opt(key) or _unregistered_opt(self._driver_class, key)
                if opt is None:
                    if early:
                        pending[key] = value
                        continue
                    raise BackendSetupError(
                        self.name, f"{self.volume_driver} has no option {key!r}"
                    )
                with contextlib.suppress(cfg.DuplicateOptError):
                    CONF.register_opt(opt, group=self.name)
                CONF.set_default(key, None, group=self.name)
            opt = CONF._groups[self.name]._opts[key]["opt"]
            if opt.secret or secrets.is_secret_name(key):
                self._secret_options.add(key)
                if not isinstance(value, bool):  # "True" is no secret to mask everywhere
                    secrets.remember(value if isinstance(value, str) else str(value))
            if key in _UNREGISTERED_OPTS and _UNREGISTERED_OPTS[key][2]:
                _remember_secret_file(value)
            try:
                CONF.set_override(key, value, group=self.name)
            except ValueError as exc:
                shown = "***" if key in self._secret_options else repr(value)
                raise BackendSetupError(
                    self.name, f"invalid value {shown} for option {key!r}: {describe(exc)}"
                ) from None
        return pending

    @property
    def secret_options(self) -> frozenset[str]:
        """Option names whose values must never be shown."""
        return frozenset(self._secret_options)

    def _clear_group(self) -> None:
        group = CONF._groups.get(self.name)
        if group is None:
            return
        for key in list(group._opts):
            CONF.clear_override(key, group=self.name)
            CONF.set_default(key, None, group=self.name)

    def close(self) -> None:
        """Forget this backend's configuration (the driver object is dropped)."""
        self._clear_group()

    # -- calling the driver ------------------------------------------------------------
    def _context(self) -> Any:
        settings = runtime.settings()
        return cinder_context.RequestContext(
            user_id=settings.user_id, project_id=settings.project_id, is_admin=True,
            overwrite=False,
        )  # fmt: skip

    @contextlib.contextmanager
    def _calling(self, operation: str, *live: tuple[str, Record]) -> Iterator[None]:
        """Run a driver call: live records visible to the DB shim, errors translated."""
        previous = (_scope.host, _scope.records)
        _scope.host = self
        _scope.records = {**previous[1], **{(kind, rec["id"]): rec for kind, rec in live}}
        started = time.monotonic()
        try:
            yield
        except StorageError as exc:
            if getattr(exc, "backend", None) == self.name:
                raise  # already names this backend and operation
            raise _translate(self.name, operation, exc) from exc
        except Exception as exc:
            LOG.debug("backend %s: %s raised %s", self.name, operation, describe(exc))
            raise _translate(self.name, operation, exc) from exc
        finally:
            _scope.host, _scope.records = previous
            LOG.debug("backend %s: %s took %.3fs", self.name, operation,
                      time.monotonic() - started)  # fmt: skip

    def _cinder_host(self, record: Record) -> str:
        base = f"{runtime.settings().host}@{self.name}"
        return volume_utils.append_host(base, record.get("pool")) or base

    def _volume_type_object(self, context: Any, vtype: Record) -> Any:
        _volume_types[vtype["id"]] = vtype
        return cinder_objects.VolumeType(
            context=context, id=vtype["id"], name=vtype["name"], description=None,
            is_public=True, projects=[], extra_specs=dict(vtype["extra_specs"]),
            qos_specs_id=_qos_id(vtype["id"]) if vtype.get("qos_specs") else None,
        )  # fmt: skip

    def _volume_object(
        self, context: Any, record: Record, connections: list[Record] | None = None
    ) -> Any:
        """A Cinder Volume with every field a driver reads filled in from the record.

        Its attachments point at a second Volume object without attachments, as
        objects loaded from Cinder's database do: one object referencing itself
        through its attachments would send oslo's change tracking into a loop.
        """
        if connections is None:
            connections = runtime.store().get_connections(volume_id=record["id"])
        vtype = record["volume_type"]
        fields = dict(
            context=context, id=record["id"], _name_id=record.get("name_id"),
            user_id=record.get("user_id"), project_id=record.get("project_id"),
            host=self._cinder_host(record), cluster_name=None, size=record["size"],
            availability_zone=record.get("availability_zone"), status=record["status"],
            attach_status="attached" if connections else "detached",
            display_name=record.get("name"), display_description=record.get("description"),
            provider_location=record.get("provider_location"),
            provider_auth=record.get("provider_auth"), provider_id=record.get("provider_id"),
            provider_geometry=record.get("provider_geometry"),
            volume_type_id=vtype["id"], volume_type=self._volume_type_object(context, vtype),
            source_volid=record.get("source_volume_id"),
            snapshot_id=record.get("source_snapshot_id"), encryption_key_id=None,
            consistencygroup_id=None, consistencygroup=None, group_id=None, group=None,
            cluster=None, multiattach=bool(record.get("multiattach")), bootable=False,
            replication_status=record.get("replication_status"),
            metadata=dict(record.get("metadata") or {}),
            admin_metadata=dict(record.get("admin_metadata") or {}), glance_metadata={},
            deleted=False, migration_status=None, previous_status=None, use_quota=True,
            shared_targets=False, service_uuid=None,
        )  # fmt: skip
        volume = cinder_objects.Volume(**fields)
        parent = cinder_objects.Volume(**fields) if connections else None
        volume.volume_attachment = cinder_objects.VolumeAttachmentList(
            context=context,
            objects=[self._attachment_object(context, c, parent) for c in connections],
        )
        volume.obj_reset_changes()
        return volume

    def _attachment_object(self, context: Any, record: Record, volume: Any) -> Any:
        attachment = cinder_objects.VolumeAttachment(
            context=context, volume=volume, **_attachment_fields(record)
        )
        attachment.obj_reset_changes()
        return attachment

    def _snapshot_object(self, context: Any, record: Record, volume: Any) -> Any:
        snapshot = cinder_objects.Snapshot(
            context=context, id=record["id"], user_id=record.get("user_id"),
            project_id=record.get("project_id"), volume_id=record["volume_id"],
            cgsnapshot_id=None, group_snapshot_id=None, status=record["status"],
            progress=record.get("progress"), volume_size=record["volume_size"],
            display_name=record.get("name"), display_description=record.get("description"),
            encryption_key_id=None, volume_type_id=volume.volume_type_id,
            provider_location=record.get("provider_location"),
            provider_id=record.get("provider_id"), provider_auth=record.get("provider_auth"),
            metadata=dict(record.get("metadata") or {}), volume=volume, cgsnapshot=None,
            group_snapshot=None, deleted=False, use_quota=True,
        )  # fmt: skip
        snapshot.obj_reset_changes()
        return snapshot

    @staticmethod
    def _changes(
        obj: Any, model_update: Any, keeps: set[str], renames: Mapping[str, str]
    ) -> Record:
        """What the driver changed: fields it set on the object, then its model update."""
        changed = {name: getattr(obj, name) for name in obj.obj_what_changed() if name in keeps}
        if isinstance(model_update, Mapping):
            ignored = sorted(set(model_update) - keeps)
            if ignored:
                LOG.debug("ignoring model update keys %s", ", ".join(ignored))
            changed.update(model_update)
        return _kept(changed, keeps, renames)

    def _volume_changes(self, volume: Any, model_update: Any) -> Record:
        return self._changes(volume, model_update, _VOLUME_KEEPS, _VOLUME_FIELD)

    # -- operations (records in, record updates out) ------------------------------------
    def create_volume(self, record: Record) -> Record:
        with self._calling("create volume", ("volume", record)):
            context = self._context()
            volume = self._volume_object(context, record, [])
            return self._volume_changes(volume, self.driver.create_volume(volume))

    def create_volume_from_snapshot(
        self, record: Record, snapshot: Record, source: Record
    ) -> Record:
        live = (("volume", record), ("snapshot", snapshot), ("volume", source))
        with self._calling("create volume from snapshot", *live):
            context = self._context()
            volume = self._volume_object(context, record, [])
            snap = self._snapshot_object(context, snapshot, self._volume_object(context, source))
            update = self.driver.create_volume_from_snapshot(volume, snap)
            return self._volume_changes(volume, update)

    def create_cloned_volume(self, record: Record, source: Record) -> Record:
        with self._calling("clone volume", ("volume", record), ("volume", source)):
            context = self._context()
            volume = self._volume_object(context, record, [])
            update = self.driver.create_cloned_volume(volume, self._volume_object(context, source))
            return self._volume_changes(volume, update)

    def cleanup_failed_create(self, record: Record) -> None:
        """Best effort: remove whatever a failed create may have left on the backend."""
        try:
            with self._calling("clean up failed create", ("volume", record)):
                self.driver.delete_volume(self._volume_object(self._context(), record, []))
        except StorageError as exc:
            LOG.warning("backend %s: cleanup of failed volume %s: %s", self.name,
                        record["id"], exc)  # fmt: skip

    def delete_volume(self, record: Record) -> None:
        """Delete a volume without connections (``Volume.delete`` refuses one that has
        some, so they are not read again)."""
        with self._calling("delete volume", ("volume", record)):
            self.driver.delete_volume(self._volume_object(self._context(), record, []))

    def extend_volume(self, record: Record, size: int) -> Record:
        with self._calling("extend volume", ("volume", record)):
            volume = self._volume_object(self._context(), record)
            update = self.driver.extend_volume(volume, size)
            return self._volume_changes(volume, update)

    def create_snapshot(self, snapshot: Record, volume: Record) -> Record:
        with self._calling("create snapshot", ("snapshot", snapshot), ("volume", volume)):
            context = self._context()
            snap = self._snapshot_object(context, snapshot, self._volume_object(context, volume))
            update = self.driver.create_snapshot(snap)
            return self._changes(snap, update, _SNAPSHOT_KEEPS, _SNAPSHOT_FIELD)

    def delete_snapshot(self, snapshot: Record, volume: Record) -> None:
        with self._calling("delete snapshot", ("snapshot", snapshot), ("volume", volume)):
            context = self._context()
            snap = self._snapshot_object(context, snapshot, self._volume_object(context, volume))
            self.driver.delete_snapshot(snap)

    def connect(
        self, record: Record, connection: Record, existing: list[Record]
    ) -> tuple[Record, dict[str, Any]]:
        """Export and initialize a connection, as cinder-volume's attach flow does."""
        with self._calling("connect volume", ("volume", record)):
            context = self._context()
            volume = self._volume_object(context, record, [*existing, connection])
            properties = connection["connector"]
            self.driver.validate_connector(properties)
            export_update = self.driver.create_export(context, volume, properties)
            if isinstance(export_update, Mapping):
                volume.update({k: v for k, v in export_update.items() if k in _VOLUME_KEEPS})
            crash_points.reach("connect.after-export")
            try:
                conn_info = self.driver.initialize_connection(volume, properties)
            except Exception:
                if not existing:
                    with contextlib.suppress(Exception):
                        self.driver.remove_export(context, volume)
                raise
            updates = self._volume_changes(volume, export_update)
        return updates, self._connection_options(record, conn_info, connection["attach_mode"])

    def disconnect(
        self, record: Record, connection: Record, others: list[Record], force: bool = False
    ) -> Record:
        """Terminate a connection; remove the export when it was the last one."""
        with self._calling("disconnect volume", ("volume", record)):
            context = self._context()
            volume = self._volume_object(context, record, [*others, connection])
            self.driver.terminate_connection(volume, connection["connector"], force=force)
            crash_points.reach("disconnect.after-terminate")
            if not others:
                self.driver.remove_export(context, volume)
            return self._volume_changes(volume, None)

    def stats(self, refresh: bool) -> dict[str, Any]:
        with self._calling("get stats"):
            return dict(self.driver.get_volume_stats(refresh=refresh) or {})

    @staticmethod
    def _connection_options(
        record: Record, conn_info: Mapping[str, Any], attach_mode: str
    ) -> dict[str, Any]:
        """Add what cinder-volume adds to connection info: QoS, access mode, flags."""
        info = dict(conn_info)
        data = dict(info.get("data") or {})
        qos = record["volume_type"].get("qos_specs") or {}
        specs = None
        if qos.get("consumer") in ("front-end", "both"):
            specs = {k: v for k, v in qos.items() if k != "consumer"}
            size = int(record["size"])
            for option in ("read_iops_sec", "read_bytes_sec", "write_iops_sec",
                           "write_bytes_sec", "total_iops_sec", "total_bytes_sec"):  # fmt: skip
                per_gb = specs.pop(f"{option}_per_gb", None)
                if per_gb is not None:
                    value = max(int(specs.pop(f"{option}_per_gb_min", 0)), int(per_gb) * size)
                    specs[option] = str(min(value, int(specs.pop(f"{option}_max", value))))
        data["qos_specs"] = specs
        data["access_mode"] = attach_mode
        data.setdefault("encrypted", False)
        info["data"] = data
        return info
