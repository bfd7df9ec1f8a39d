"""Serialized documents: what ``json``/``dumps`` write and ``load`` reads.

A document is one flat JSON object, so cycles (volume -> snapshot -> volume) and
shared objects cost nothing and appear once::

    {"format": "csi-driver.storage", "version": 1,
     "class": "Volume", "root": "<id of the serialized object>",
     "backends": [{"volume_backend_name": "lvm", "volumes": ["<id>", ...]}],
     "volumes": [{...record..., "snapshots": ["<id>"], "connections": ["<id>"]}],
     "snapshots": [{...record...}], "connections": [{...record...}]}

Records are the metadata store's records, in the library's own field names (not
Cinder's versioned-object primitives), so neither writing nor reading builds a
Cinder object, and a later Cinder release reads the same documents: the adapter
maps fields to whatever objects that release has.

A lazy relation appears as a list of ids only when it was loaded; ``load``
restores exactly that state. ``class`` is ``BackendList`` for the library-level
dumps, which has no ``root``. Backends are referenced by name unless
``setup(output_all_backend_info=True)``, which writes each backend's full driver
configuration so that ``load`` can configure missing backends itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

from csi_driver.storage import runtime
from csi_driver.storage.exceptions import BackendSetupError, SerializationError

if TYPE_CHECKING:
    from csi_driver.storage.backend import Backend
    from csi_driver.storage.connection import Connection
    from csi_driver.storage.resource import Resource
    from csi_driver.storage.snapshot import Snapshot
    from csi_driver.storage.volume import Volume

FORMAT = "csi-driver.storage"
VERSION = 1
LIBRARY_CLASS = "BackendList"
CLASSES = (LIBRARY_CLASS, "Backend", "Volume", "Snapshot", "Connection")
_TABLES = ("volumes", "snapshots", "connections")


def to_string(document: dict[str, Any]) -> str:
    """Compact JSON text of a document."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def copy_record(value: Any) -> Any:
    """A deep copy of JSON-shaped data (faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: copy_record(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_record(v) for v in value]
    return value


class Serializable:
    """The ``json``/``jsons``/``dump``/``dumps`` properties and ``load`` classmethod."""

    @property
    def json(self) -> dict[str, Any]:
        """This object as a document dict; lazy relations not yet loaded are left out."""
        return document(self, load_lazy=False, copy=True)

    @property
    def jsons(self) -> str:
        """``json`` as a string."""
        return to_string(document(self, load_lazy=False))

    @property
    def dump(self) -> dict[str, Any]:
        """Like ``json`` after loading each lazy relation not loaded yet (none is refreshed)."""
        return document(self, load_lazy=True, copy=True)

    @property
    def dumps(self) -> str:
        """``dump`` as a string."""
        return to_string(document(self, load_lazy=True))

    @classmethod
    def load(cls, data: str | bytes | dict[str, Any], save: bool = False) -> Self:
        """Rebuild an object of this class from any of the four forms above.

        ``save=True`` also writes what was loaded into the metadata store.
        """
        return load(data, save=save, expect=cls.__name__)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------
class _Collector:
    """Walks loaded relations from a root and keeps each object once."""

    def __init__(self, load_lazy: bool) -> None:
        self.load_lazy = load_lazy
        self.backends: dict[str, Backend] = {}
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.connections: dict[str, Connection] = {}

    def backend(self, backend: Backend, with_volumes: bool = True) -> None:
        self.backends.setdefault(backend.name, backend)
        if not with_volumes:
            return
        if self.load_lazy:
            backend._load_everything()
        for volume in backend._volumes or ():
            self.volume(volume)

    def volume(self, volume: Volume) -> None:
        if volume.id in self.volumes:
            return
        self.volumes[volume.id] = volume
        self.backends.setdefault(volume.backend.name, volume.backend)
        if self.load_lazy:
            volume.snapshots  # noqa: B018 - loads the relation
            volume.connections  # noqa: B018
        for snapshot in volume._snapshots or ():
            self.snapshot(snapshot)
        for connection in volume._connections or ():
            self.connection(connection)

    def _parent(self, child: Snapshot | Connection) -> None:
        if self.load_lazy and child._volume is None:
            from csi_driver.storage.exceptions import NotFound

            try:
                child.volume  # noqa: B018 - loads the relation
            except NotFound:
                return  # an orphan is dumped as it is
        if child._volume is not None:
            self.volume(child._volume)

    def snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.id not in self.snapshots:
            self.snapshots[snapshot.id] = snapshot
            self.backends.setdefault(snapshot.backend.name, snapshot.backend)
            self._parent(snapshot)

    def connection(self, connection: Connection) -> None:
        if connection.id not in self.connections:
            self.connections[connection.id] = connection
            self.backends.setdefault(connection.backend.name, connection.backend)
            self._parent(connection)


def _backend_entry(backend: Backend, full: bool) -> dict[str, Any]:
    entry = backend._full_config() if full else {"volume_backend_name": backend.name}
    if backend._volumes is not None:
        entry["volumes"] = [v.id for v in backend._volumes]
    return entry


def _volume_entry(volume: Volume) -> dict[str, Any]:
    entry = dict(volume._data)
    if volume._snapshots is not None:
        entry["snapshots"] = [s.id for s in volume._snapshots]
    if volume._connections is not None:
        entry["connections"] = [c.id for c in volume._connections]
    return entry


def _render(collector: _Collector, cls: str, root: str | None, copy: bool) -> dict[str, Any]:
    full = runtime.settings().output_all_backend_info
    backends = [_backend_entry(b, full) for b in collector.backends.values()]
    volumes = [_volume_entry(v) for v in collector.volumes.values()]
    snapshots = [s._data for s in collector.snapshots.values()]
    connections = [c._data for c in collector.connections.values()]
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "class": cls}
    if root is not None:
        doc["root"] = root
    doc.update(backends=backends, volumes=volumes, snapshots=snapshots, connections=connections)
    return copy_record(doc) if copy else doc


def document(obj: Any, load_lazy: bool, copy: bool = False) -> dict[str, Any]:
    """The document of one Backend, Volume, Snapshot or Connection."""
    from csi_driver.storage.backend import Backend

    collector = _Collector(load_lazy)
    cls = type(obj).__name__
    if isinstance(obj, Backend):
        collector.backend(obj)
        root = obj.name
    else:
        getattr(collector, obj.KIND)(obj)
        root = obj.id
    return _render(collector, cls, root, copy)


def library_document(load_lazy: bool, copy: bool = False) -> dict[str, Any]:
    """The document of every configured backend with its resources."""
    from csi_driver.storage.backend import Backend

    collector = _Collector(load_lazy)
    for backend in list(Backend.backends.values()):
        collector.backend(backend)
    return _render(collector, LIBRARY_CLASS, None, copy)


# ---------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------
def _fail(where: str, problem: str) -> SerializationError:
    return SerializationError(f"{where}: {problem}")


def _parse(data: str | bytes | dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The document dict, and whether it is the caller's own dict (so must be copied)."""
    if isinstance(data, dict):
        return data, True
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8", errors="strict")
    if not isinstance(data, str):
        raise SerializationError(
            f"cannot load a {type(data).__name__}; give the JSON text or dict that was dumped"
        )
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise SerializationError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(doc, dict):
        raise SerializationError(f"a document is a JSON object, not {type(doc).__name__}")
    return doc, False


def _check_header(doc: dict[str, Any], expect: str | None) -> str:
    if doc.get("format") != FORMAT:
        raise _fail("format", f"expected {FORMAT!r}, got {doc.get('format')!r}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail("version", f"expected an integer, got {version!r}")
    if version != VERSION:
        raise _fail(
            "version", f"unsupported format version {version} (this library reads {VERSION})"
        )
    cls = doc.get("class")
    if cls not in CLASSES:
        raise _fail("class", f"unknown class {cls!r}; expected one of {', '.join(CLASSES)}")
    if expect is not None and expect != cls:
        raise _fail("class", f"expected a serialized {expect}, got {cls}")
    for table in ("backends", *_TABLES):
        if not isinstance(doc.get(table, []), list):
            raise _fail(table, "expected a list")
    return cls


# Per kind: (field, accepted types, required). Other fields are kept as they are.
_NULL = type(None)
_SCHEMA: dict[str, tuple[tuple[str, tuple[type, ...], bool], ...]] = {
    "volumes": (
        ("id", (str,), True), ("backend", (str,), True), ("size", (int,), True),
        ("status", (str,), True), ("volume_type", (dict,), True),
        ("name", (str, _NULL), False), ("description", (str, _NULL), False),
        ("metadata", (dict,), False), ("snapshots", (list,), False),
        ("connections", (list,), False),
    ),
    "snapshots": (
        ("id", (str,), True), ("backend", (str,), True), ("volume_id", (str,), True),
        ("volume_size", (int,), True), ("status", (str,), True),
        ("name", (str, _NULL), False), ("metadata", (dict,), False),
    ),
    "connections": (
        ("id", (str,), True), ("backend", (str,), True), ("volume_id", (str,), True),
        ("status", (str,), True), ("connector", (dict,), True),
        ("connection_info", (dict, _NULL), True), ("attach_mode", (str,), False),
    ),
}  # fmt: skip


def _check_records(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Validate every record; return them by table and id."""
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for table in _TABLES:
        by_id: dict[str, dict[str, Any]] = {}
        schema = _SCHEMA[table]
        for index, record in enumerate(doc.get(table, [])):
            where = f"{table}[{index}]"
            if not isinstance(record, dict):
                raise _fail(where, "expected an object")
            for field, types, required in schema:
                if field not in record:
                    if required:
                        raise _fail(f"{where}.{field}", "missing")
                    continue
                value = record[field]
                if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                    names = " or ".join("null" if t is _NULL else t.__name__ for t in types)
                    raise _fail(f"{where}.{field}", f"expected {names}, got {value!r}")
            if not record["id"]:
                raise _fail(f"{where}.id", "must not be empty")
            if record["id"] in by_id:
                raise _fail(f"{where}.id", f"duplicate id {record['id']!r}")
            by_id[record["id"]] = record
        tables[table] = by_id
    return tables


def _check_references(doc: dict[str, Any], tables: dict[str, dict[str, dict[str, Any]]]) -> None:
    volumes = tables["volumes"]
    for index, record in enumerate(doc.get("volumes", [])):
        for relation in ("snapshots", "connections"):
            for ref in record.get(relation, ()):
                child = tables[relation].get(ref) if isinstance(ref, str) else None
                if child is None:
                    raise _fail(f"volumes[{index}].{relation}", f"{ref!r} is not in the document")
                if child["volume_id"] != record["id"]:
                    raise _fail(
                        f"volumes[{index}].{relation}", f"{ref!r} belongs to another volume"
                    )
    for index, entry in enumerate(doc.get("backends", [])):
        for ref in entry.get("volumes", ()) if isinstance(entry, dict) else ():
            if not isinstance(ref, str) or ref not in volumes:
                raise _fail(f"backends[{index}].volumes", f"{ref!r} is not in the document")


def _check_root(doc: dict[str, Any], cls: str, tables: dict[str, Any], names: set[str]) -> None:
    if cls == LIBRARY_CLASS:
        return
    root = doc.get("root")
    known = names if cls == "Backend" else tables[cls.lower() + "s"]
    if not isinstance(root, str) or root not in known:
        raise _fail("root", f"{root!r} is not a {cls} in the document")


def _backend_entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(doc.get("backends", [])):
        name = entry.get("volume_backend_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise _fail(f"backends[{index}].volume_backend_name", "missing or not a string")
        if "volumes" in entry and not isinstance(entry["volumes"], list):
            raise _fail(f"backends[{index}].volumes", "expected a list")
        entries[name] = entry
    return entries


def _resolve_backends(
    entries: dict[str, dict[str, Any]], tables: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, Backend]:
    """Configured backends for every name used; configure those the document carries."""
    from csi_driver.storage.backend import Backend

    used = dict.fromkeys(entries)
    for table in _TABLES:
        for record in tables[table].values():
            used.setdefault(record["backend"])
    missing = [
        n for n in used if n not in Backend.backends and "volume_driver" not in entries.get(n, {})
    ]
    if missing:
        raise _fail(
            "backend",
            f"backend {missing[0]!r} is not configured in this process and the document does "
            "not carry its configuration (configure it first, or dump with "
            "setup(output_all_backend_info=True))",
        )
    resolved: dict[str, Backend] = {}
    for name in used:
        backend = Backend.backends.get(name)
        if backend is None:
            config = {k: v for k, v in entries[name].items() if k != "volumes"}
            try:
                backend = Backend(**config)
            except (BackendSetupError, TypeError, ValueError) as exc:
                raise _fail("backend", f"backend {name!r} could not be configured: {exc}") from exc
        resolved[name] = backend
    return resolved


def _strip(record: dict[str, Any], relations: Iterable[str], copy: bool) -> dict[str, Any]:
    data = copy_record(record) if copy else dict(record)
    for relation in relations:
        data.pop(relation, None)
    return data


def load(data: str | bytes | dict[str, Any], save: bool = False, expect: str | None = None) -> Any:
    """Rebuild the objects of a document; see the module docstring for its form.

    Everything is validated before anything is created or stored, so a failed
    load changes nothing in the metadata store.
    """
    from csi_driver.storage.connection import Connection
    from csi_driver.storage.snapshot import Snapshot
    from csi_driver.storage.volume import Volume

    doc, foreign = _parse(data)
    cls = _check_header(doc, expect)
    entries = _backend_entries(doc)
    tables = _check_records(doc)
    _check_references(doc, tables)
    _check_root(doc, cls, tables, set(entries))
    backends = _resolve_backends(entries, tables)

    volumes = {
        vid: Volume(backends[raw["backend"]], _strip(raw, ("snapshots", "connections"), foreign))
        for vid, raw in tables["volumes"].items()
    }
    snapshots = {
        sid: Snapshot(
            backends[raw["backend"]], _strip(raw, (), foreign), volume=volumes.get(raw["volume_id"])
        )
        for sid, raw in tables["snapshots"].items()
    }
    connections = {
        cid: Connection(
            backends[raw["backend"]], _strip(raw, (), foreign), volume=volumes.get(raw["volume_id"])
        )
        for cid, raw in tables["connections"].items()
    }
    for vid, raw in tables["volumes"].items():
        if "snapshots" in raw:
            volumes[vid]._snapshots = [snapshots[s] for s in raw["snapshots"]]
        if "connections" in raw:
            volumes[vid]._connections = [connections[c] for c in raw["connections"]]
    for name, entry in entries.items():
        if "volumes" in entry:
            backend = backends[name]
            with backend._lock:
                backend._volumes = [volumes[v] for v in entry["volumes"]]

    if save:
        runtime.store().write(
            volumes=[v._data for v in volumes.values()],
            snapshots=[s._data for s in snapshots.values()],
            connections=[c._data for c in connections.values()],
        )

    if cls == LIBRARY_CLASS:
        return [backends[name] for name in entries]
    if cls == "Backend":
        return backends[doc["root"]]
    table: dict[str, Resource] = {
        "Volume": volumes,
        "Snapshot": snapshots,
        "Connection": connections,
    }[cls]  # type: ignore[assignment]
    return table[doc["root"]]
