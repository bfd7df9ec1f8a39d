"""The plugin's configuration files (YAML), read once into a frozen, validated object.

Nothing else in the plugin reads the environment or the files: the CLI calls
``load(path, ...)`` and hands the result to the server. Several files (a ConfigMap's
and a Secret's) merge in order into one configuration, then it is validated. A bad
file fails at start-up with the offending key named (``backends[1].driver: missing``),
never later.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import yaml

#: The plugin name Kubernetes objects (StorageClass provisioner, CSIDriver) refer to.
DEFAULT_DRIVER_NAME = "csi-driver.cinder"
#: Calls served at once by default: enough that slow driver calls (a clone copying for
#: minutes) leave threads for Probe and the quick calls; Python threads are cheap.
DEFAULT_GRPC_WORKERS = 32
MAX_GRPC_WORKERS = 1024
#: CSI: a plugin name is domain-like, at most 63 characters, alphanumeric at both ends.
_DRIVER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,61}[A-Za-z0-9])?$")
#: Storage settings the plugin decides itself rather than the file.
_RESERVED_STORAGE = ("output_all_backend_info", "attach_only")


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the key."""


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    """One Cinder driver: what its section of cinder.conf would hold, plus topology."""

    name: str
    #: Dotted class path of the Cinder volume driver (Cinder's ``volume_driver``).
    driver: str
    #: The driver's options, as in its cinder.conf section.
    options: Mapping[str, Any]
    #: Topology segments from which this backend's volumes are reachable; empty
    #: means every node.
    topology: tuple[Mapping[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    """The node service: where it keeps what it staged, and what it tells the CO."""

    #: Node-local directory recording staged volumes (the node has no metadata store).
    state_dir: str = "/var/lib/csi-driver/node"
    #: This node's topology segment, e.g. {"topology.csi-driver.cinder/zone": "a"}.
    topology: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Most volumes the CO may publish here; 0 lets the CO decide.
    max_volumes: int = 0
    #: Ask drivers for multipath exports and attach with multipath.
    multipath: bool = False
    #: IP address advertised to drivers in the node's connector properties.
    my_ip: str | None = None
    #: Directories whose files and block devices a ``local`` connection may name (the
    #: FileDriver's volumes). Empty by default: a node attaches no host path unless told.
    #: In ``--mode all`` the FileDriver backends' ``file_volumes_dir`` are added.
    local_roots: tuple[str, ...] = ()
    #: Directories under which staging and publish target paths must lie (canonical:
    #: symlinks resolved, on both sides). The CO's paths live in the kubelet's directory;
    #: a path anywhere else is refused rather than mounted on.
    mount_roots: tuple[str, ...] = ("/var/lib/kubelet",)


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    driver_name: str = DEFAULT_DRIVER_NAME
    #: Host name of this machine as the storage sees it (connector ``host``).
    host: str = dataclasses.field(default_factory=socket.gethostname)
    #: ``storage.setup()`` options: persistence_config, file_locks_path, root_helper...
    storage: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    backends: tuple[BackendConfig, ...] = ()
    #: Backend used when a StorageClass names none; the first backend by default.
    default_backend: str | None = None
    #: StorageClass ``volume_type`` values -> Cinder volume type (extra_specs, qos_specs).
    volume_types: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    node: NodeConfig = dataclasses.field(default_factory=NodeConfig)
    #: File holding the key the controller signs publish_context with and the node
    #: checks it with (HMAC-SHA256); the first line signs, every line verifies (rotation).
    #: None: unsigned, and the node trusts whatever publish_context it is handed.
    signing_key_file: str | None = None
    #: Seconds in-flight calls get after SIGTERM; the process exits at this bound even
    #: if a driver call still runs (its record says what was in flight).
    shutdown_grace_seconds: float = 20.0
    #: Seconds between reconciler runs (controller): operations left half-done by a crash
    #: that no CO retries are finished or rolled back. It also runs at start-up.
    reconcile_interval_seconds: float = 60.0
    #: Seconds after start-up before the reconciler's first pass (0: at once). A delay
    #: lets the CO's retries heal first: a retried publish finishes an interrupted
    #: export, where the reconciler, knowing no one waits for it, undoes it.
    reconcile_delay_seconds: float = 0.0
    #: Threads serving CSI calls at once; more calls wait in gRPC's queue. Each thread
    #: that uses the SQLite store keeps one connection to it, so this also bounds those.
    grpc_workers: int = DEFAULT_GRPC_WORKERS

    def backend(self, name: str) -> BackendConfig | None:
        return next((b for b in self.backends if b.name == name), None)

    def local_roots(self, mode: str) -> tuple[str, ...]:
        """Where a node in ``mode`` may find a ``local`` connection's device: the
        configured roots, plus in ``all`` mode the FileDriver backends' directories
        (controller and node share the host, so its volume files are local)."""
        roots = list(self.node.local_roots)
        if mode == "all":
            roots += [
                os.path.abspath(str(b.options["file_volumes_dir"]))
                for b in self.backends
                if b.options.get("file_volumes_dir")
            ]
        return tuple(dict.fromkeys(roots))

    @property
    def has_topology(self) -> bool:
        """Whether topology is in use (the VOLUME_ACCESSIBILITY_CONSTRAINTS capability)."""
        return bool(self.node.topology) or any(b.topology for b in self.backends)


def load(path: str, *more: str) -> PluginConfig:
    """Read, merge (in order) and validate one or more configuration files.

    In Kubernetes the backends' credentials come from a Secret and the rest from a
    ConfigMap, mounted as two files: later files merge into earlier ones (see
    ``Merge``). Every error names the file(s) it comes from.
    """
    paths = (path, *more)
    merged = Merge()
    for each in paths:
        try:
            merged.add(_read(each), each)
        except ConfigError as exc:
            raise ConfigError(f"{each}: {exc}") from None
    merged.check_drivers()
    try:
        return from_dict(merged.data)
    except ConfigError as exc:
        raise ConfigError(f"{merged.sources_of(str(exc), paths)}: {exc}") from None


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from None


class Merge:
    """Parsed files merged in order: mappings key by key (the later value wins),
    ``backends`` by ``name`` (an entry for a known name merges into that backend, its
    ``options`` key by key; a new name is appended), any other list replaced.

    It remembers which files set each top-level key and each ``backends[i]``, so that a
    validation error of the merged data can name them.
    """

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self._sources: dict[str, list[str]] = {}
        #: Backend name -> (file, index in its ``backends``) where it was first named.
        self._introduced: dict[str, tuple[str, int]] = {}

    def add(self, raw: Any, source: str) -> None:
        """Merge one parsed file; raises ConfigError (without the file's name) on a
        shape that cannot be merged."""
        for key, value in _mapping(raw, "top level").items():
            self._note(str(key), source)
            if key == "backends":
                self.data[key] = self._backends(self.data.get(key), value, source)
            else:
                self.data[key] = _deep_merge(self.data.get(key), value)

    def _backends(self, base: Any, raw: Any, source: str) -> list[dict[str, Any]]:
        merged = [dict(b) for b in base or ()]
        position = {b["name"]: i for i, b in enumerate(merged)}
        seen: set[str] = set()
        for index, entry in enumerate(_list(raw, "backends")):
            where = f"backends[{index}]"
            data = _mapping(entry, where)
            if "name" not in data:
                raise ConfigError(f"{where}.name: missing")
            name = _string(data["name"], f"{where}.name")
            if name in seen:
                raise ConfigError(f"backends: the name {name!r} is used twice")
            seen.add(name)
            if name in position:
                merged[position[name]] = _deep_merge(merged[position[name]], data)
            else:
                position[name] = len(merged)
                merged.append(dict(data))
                self._introduced[name] = (source, index)
            self._note(f"backends[{position[name]}]", source)
        return merged

    def check_drivers(self) -> None:
        """A backend needs a ``driver`` in some file: name the file (and the index in
        it) that introduced one without, not an index into the merged list."""
        for backend in self.data.get("backends") or ():
            if "driver" not in backend:
                source, index = self._introduced[backend["name"]]
                raise ConfigError(f"{source}: backends[{index}].driver: missing")

    def sources_of(self, message: str, paths: Sequence[str]) -> str:
        """The files that set the key a validation message starts with (all when the
        key is not one a file set)."""
        key = re.match(r"backends\[\d+\]|[A-Za-z_]+", message)
        return ", ".join(self._sources.get(key.group(0), ()) if key else ()) or ", ".join(paths)

    def _note(self, key: str, source: str) -> None:
        sources = self._sources.setdefault(key, [])
        if source not in sources:
            sources.append(source)


def _deep_merge(base: Any, value: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(value, Mapping):
        merged = dict(base)
        for key, item in value.items():
            merged[key] = _deep_merge(base.get(key), item)
        return merged
    return value


def from_dict(raw: Any) -> PluginConfig:
    """Validate a configuration already parsed into plain data."""
    data = dict(_mapping(raw, "top level"))
    known = {f.name for f in dataclasses.fields(PluginConfig)}
    _no_unknown(data, known, "")
    driver_name = data.get("driver_name", DEFAULT_DRIVER_NAME)
    if not isinstance(driver_name, str) or not _DRIVER_NAME.match(driver_name):
        raise ConfigError(
            f"driver_name: {driver_name!r} is not a domain-like name of at most 63 characters"
        )
    host = data.get("host") or socket.gethostname()
    _string(host, "host")
    storage = dict(_mapping(data.get("storage", {}), "storage"))
    for key in _RESERVED_STORAGE:
        if key in storage:
            raise ConfigError(f"storage.{key}: set by the plugin itself, not configurable")
    backends = tuple(_backend(b, i) for i, b in enumerate(_list(data.get("backends"), "backends")))
    names = [b.name for b in backends]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"backends: the name {name!r} is used twice")
    default = data.get("default_backend")
    if default is None and backends:
        default = backends[0].name
    if default is not None and default not in names:
        raise ConfigError(f"default_backend: {default!r} is not one of the backends {names}")
    signing_key_file = data.get("signing_key_file")
    if signing_key_file is not None:
        signing_key_file = os.path.abspath(_string(signing_key_file, "signing_key_file"))
    volume_types = {
        _string(name, "volume_types key"): _volume_type(spec, f"volume_types.{name}")
        for name, spec in _mapping(data.get("volume_types", {}), "volume_types").items()
    }
    return PluginConfig(
        driver_name=driver_name,
        host=host,
        storage=MappingProxyType(storage),
        backends=backends,
        default_backend=default,
        volume_types=MappingProxyType(volume_types),
        node=_node(data.get("node", {})),
        signing_key_file=signing_key_file,
        shutdown_grace_seconds=_seconds(data, "shutdown_grace_seconds", 20.0),
        reconcile_interval_seconds=_seconds(data, "reconcile_interval_seconds", 60.0),
        reconcile_delay_seconds=_seconds(data, "reconcile_delay_seconds", 0.0, zero=True),
        grpc_workers=_count(data, "grpc_workers", DEFAULT_GRPC_WORKERS, MAX_GRPC_WORKERS),
    )


def _backend(raw: Any, index: int) -> BackendConfig:
    where = f"backends[{index}]"
    data = _mapping(raw, where)
    _no_unknown(data, {"name", "driver", "options", "topology"}, where + ".")
    for key in ("name", "driver"):
        if key not in data:
            raise ConfigError(f"{where}.{key}: missing")
    name = _string(data["name"], f"{where}.name")
    options = dict(_mapping(data.get("options", {}), f"{where}.options"))
    for key in ("volume_backend_name", "volume_driver"):
        if key in options:
            raise ConfigError(f"{where}.options.{key}: given by the backend's name/driver keys")
    topology = tuple(
        _segment(s, f"{where}.topology[{i}]")
        for i, s in enumerate(_list(data.get("topology"), f"{where}.topology"))
    )
    return BackendConfig(
        name=name,
        driver=_string(data["driver"], f"{where}.driver"),
        options=MappingProxyType(options),
        topology=topology,
    )


def _node(raw: Any) -> NodeConfig:
    data = _mapping(raw, "node")
    known = {f.name for f in dataclasses.fields(NodeConfig)}
    _no_unknown(data, known, "node.")
    max_volumes = data.get("max_volumes", 0)
    if not isinstance(max_volumes, int) or isinstance(max_volumes, bool) or max_volumes < 0:
        raise ConfigError(f"node.max_volumes: {max_volumes!r} is not a whole number >= 0")
    multipath = data.get("multipath", False)
    if not isinstance(multipath, bool):
        raise ConfigError(f"node.multipath: {multipath!r} is not true or false")
    my_ip = data.get("my_ip")
    if my_ip is not None:
        _string(my_ip, "node.my_ip")
    state_dir = _string(data.get("state_dir", NodeConfig.state_dir), "node.state_dir")
    local_roots = _paths(data.get("local_roots"), "node.local_roots")
    mount_roots = _paths(data.get("mount_roots", list(NodeConfig.mount_roots)),
                         "node.mount_roots")  # fmt: skip
    if not mount_roots:
        raise ConfigError("node.mount_roots: must name at least one directory (e.g. the "
                          "kubelet's, /var/lib/kubelet)")  # fmt: skip
    return NodeConfig(
        state_dir=os.path.abspath(state_dir),
        topology=_segment(data.get("topology", {}), "node.topology"),
        max_volumes=max_volumes,
        multipath=multipath,
        my_ip=my_ip,
        local_roots=tuple(local_roots),
        mount_roots=tuple(mount_roots),
    )


def _paths(raw: Any, where: str) -> list[str]:
    """A list of absolute directory paths, normalised."""
    paths = []
    for i, path in enumerate(_list(raw, where)):
        if not os.path.isabs(_string(path, f"{where}[{i}]")) or "\0" in path:
            raise ConfigError(f"{where}[{i}]: {path!r} is not an absolute path")
        paths.append(os.path.normpath(path))
    return paths


def _seconds(data: Mapping[str, Any], key: str, default: float, zero: bool = False) -> float:
    value = data.get(key, default)
    low = 0 if zero else 1e-3
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value < 86400:
        raise ConfigError(
            f"{key}: {value!r} is not a number of seconds {'>= 0' if zero else 'above 0'} "
            "(below a day)"
        )
    return float(value)


def _count(data: Mapping[str, Any], key: str, default: int, most: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigError(f"{key}: {value!r} is not a whole number from 1 to {most}")
    return value


def _volume_type(raw: Any, where: str) -> Mapping[str, Any]:
    data = _mapping(raw, where)
    _no_unknown(data, {"extra_specs", "qos_specs"}, where + ".")
    return MappingProxyType(
        {
            key: {str(k): str(v) for k, v in _mapping(data.get(key, {}), f"{where}.{key}").items()}
            for key in ("extra_specs", "qos_specs")
        }
    )


def _segment(raw: Any, where: str) -> Mapping[str, str]:
    data = _mapping(raw, where)
    return MappingProxyType(
        {_string(k, f"{where} key"): _string(v, f"{where}.{k}") for k, v in data.items()}
    )


def _mapping(raw: Any, where: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list, got {type(raw).__name__}")
    return raw


def _string(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw


def _no_unknown(data: Mapping[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
