"""Serialized documents: what ``json``/``dumps`` write and ``load`` reads.

A document is one flat JSON object, so cycles (volume -> snapshot -> volume) and
shared objects cost nothing and appear once::

    {"format": "csi-driver.storage", "version": 1,
     "class": "Volume", "root": "<id of the serialized object>",
     "backends": [{"volume_backend_name": "lvm"}],
     "volumes": [{...record...}], "snapshots": [...], "connections": [...],
     "loaded": {"backend_volumes": ["lvm"], "volume_snapshots": ["<volume id>"],
                "volume_connections": ["<volume id>"]}}

Records are exactly the metadata store's records, in the library's own field
names (not Cinder's versioned-object primitives): neither writing nor reading
builds a Cinder object or copies a record, and a later Cinder release reads the
same documents, the adapter mapping fields to whatever objects it has.

``loaded`` names the owners whose lazy list is loaded; such a list is every
record of the document that points at its owner (``backend``/``volume_id``), in
document order. A snapshot's or connection's ``volume`` is loaded when that
volume is in the document. ``load`` restores exactly that state. ``class`` is
``BackendList`` for the library-level dumps, which has no ``root``.
Backends are referenced by name unless ``setup(output_all_backend_info=True)``,
which writes each backend's full driver configuration so that ``load`` can
configure missing backends itself.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Self

from csi_driver.storage import runtime
from csi_driver.storage.exceptions import BackendSetupError, SerializationError
from csi_driver.storage.persistence.base import share_values

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


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def to_string(document: dict[str, Any]) -> str:
    """Compact JSON text of a document.

    Records are encoded one at a time: encoding the whole document in one call
    holds every small piece of it as a separate string before joining them, which
    costs several times the size of the result in memory.
    """
    parts = ["{"]
    for index, (key, value) in enumerate(document.items()):
        parts.append(("," if index else "") + _encode(key) + ":")
        if key in _TABLES:
            parts.append("[")
            for position, record in enumerate(value):
                parts.append("," + _encode(record) if position else _encode(record))
            parts.append("]")
        else:
            parts.append(_encode(value))
    parts.append("}")
    return "".join(parts)


def copy_record(value: Any) -> Any:
    """A deep copy of JSON-shaped data (faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: copy_record(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_record(v) for v in value]
    return value


class Serializable:
    """The ``json``/``jsons``/``dump``/``dumps`` properties and ``load`` classmethod."""

    __slots__ = ()

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
        #: Backends whose volume list belongs in the document (not mere owners).
        self.listed: set[str] = set()
        self.volumes: dict[str, Volume] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.connections: dict[str, Connection] = {}

    def backend(self, backend: Backend) -> None:
        """A backend with its volume list (only backends added here get one)."""
        self.backends.setdefault(backend.name, backend)
        self.listed.add(backend.name)
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


def _render(collector: _Collector, cls: str, root: str | None, copy: bool) -> dict[str, Any]:
    full = runtime.settings().output_all_backend_info
    volumes = collector.volumes.values()
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "class": cls}
    if root is not None:
        doc["root"] = root
    doc.update(
        backends=[
            b._full_config() if full else {"volume_backend_name": b.name}
            for b in collector.backends.values()
        ],
        volumes=[v._data for v in volumes],
        snapshots=[s._data for s in collector.snapshots.values()],
        connections=[c._data for c in collector.connections.values()],
        loaded={
            "backend_volumes": [
                b.name
                for b in collector.backends.values()
                if b.name in collector.listed and b._volumes is not None
            ],
            "volume_snapshots": [v.id for v in volumes if v._snapshots is not None],
            "volume_connections": [v.id for v in volumes if v._connections is not None],
        },
    )
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


class _Constant(str):
    """Stands in for NaN/Infinity while parsing, so the error can name where it was."""


def _find_constant(value: Any, where: str) -> tuple[str, str] | None:
    if isinstance(value, _Constant):
        return where, str(value)
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = _find_constant(
            item, f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"
        )
        if found:
            return found
    return None


def _plain_copy(value: Any, where: str) -> Any:
    """A copy of a caller's dict document, refusing values JSON cannot hold."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _fail(where, f"key {key!r} is not a string")
            out[key] = _plain_copy(item, f"{where}.{key}")
        return out
    if isinstance(value, list):
        return [_plain_copy(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, f"{value!r} is not valid JSON")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise _fail(where, f"a {type(value).__name__} is not valid JSON")


def _parse(data: str | bytes | dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The document dict, and whether it is the caller's own dict (so must be copied)."""
    if isinstance(data, dict):
        return data, True
    if isinstance(data, bytes | bytearray):
        try:
            data = data.decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"not UTF-8 text: {exc}") from None
    if not isinstance(data, str):
        raise SerializationError(
            f"cannot load a {type(data).__name__}; give the JSON text or dict that was dumped"
        )
    try:
        doc = json.loads(data, parse_constant=_Constant, object_hook=share_values)
    except json.JSONDecodeError as exc:
        raise SerializationError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if "NaN" in data or "Infinity" in data:  # cheap pre-check; the walk is not
        found = _find_constant(doc, "document")
        if found:
            raise _fail(found[0].removeprefix("document."), f"{found[1]} is not valid JSON")
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
        ("metadata", (dict,), False),
    ),
    "snapshots": (
        ("id", (str,), True), ("backend", (str,), True), ("volume_id", (str,), True),
        ("volume_size", (int,), True), ("status", (str,), True),
        ("name", (str, _NULL), False), ("metadata", (dict,), False),
    ),
    "connections": (
        ("id", (str,), True), ("backend", (str,), True), ("volume_id", (str,), True),
        ("status", (str,), True), ("connector", (dict,), True),
        ("connection_info", (dict, _NULL), False), ("attach_mode", (str,), False),
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


_LOADED = {"backend_volumes": "backends", "volume_snapshots": "volumes",
           "volume_connections": "volumes"}  # fmt: skip


def _check_loaded(
    doc: dict[str, Any], tables: dict[str, dict[str, dict[str, Any]]], names: set[str]
) -> dict[str, set[str]]:
    """The owners whose lazy lists are loaded, each checked to be in the document."""
    loaded = doc.get("loaded", {})
    if not isinstance(loaded, dict):
        raise _fail("loaded", "expected an object")
    unknown = sorted(set(loaded) - set(_LOADED))
    if unknown:
        raise _fail("loaded", f"unknown relation(s) {', '.join(unknown)}")
    out: dict[str, set[str]] = {}
    for relation, owners in _LOADED.items():
        ids = loaded.get(relation, [])
        known = names if owners == "backends" else tables[owners]
        if not isinstance(ids, list):
            raise _fail(f"loaded.{relation}", "expected a list")
        for ref in ids:
            if not isinstance(ref, str) or ref not in known:
                raise _fail(f"loaded.{relation}", f"{ref!r} is not in the document")
        out[relation] = set(ids)
    return out


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
        entries[name] = entry
    return entries


def _resolve_backends(
    entries: dict[str, dict[str, Any]],
    tables: dict[str, dict[str, dict[str, Any]]],
    used: dict[str, None] | None = None,
) -> dict[str, Backend]:
    """Configured backends for every name used; configure those the document carries."""
    from csi_driver.storage.backend import Backend

    if used is None:
        used = dict.fromkeys(entries)
        for table in _TABLES:
            for record in tables[table].values():
                used.setdefault(record["backend"])
    attach_only = runtime.settings().attach_only
    # An attach-only process runs no driver, even one whose configuration the document
    # carries (a self-contained dump): a node must not start an array's driver, with its
    # credentials, to attach what os-brick attaches from the connection alone.
    missing = [
        n for n in used
        if n not in Backend.backends and (attach_only or "volume_driver" not in entries.get(n, {}))
    ]  # fmt: skip
    if missing and attach_only:
        from csi_driver.storage.backend import AttachOnlyBackend

        stand_ins = {name: AttachOnlyBackend(name) for name in missing}
        entries = {n: e for n, e in entries.items() if n not in stand_ins}
        used = {n: None for n in used if n not in stand_ins}
        return {**stand_ins, **_resolve_backends(entries, tables, used)}  # type: ignore[dict-item]
    if missing:
        raise _fail(
            "backend",
            f"backend {missing[0]!r} is not configured in this process and the document does "
            "not carry its configuration (configure it first, or dump with "
            "setup(output_all_backend_info=True))",
        )
    resolved: dict[str, Backend] = {}
    created: list[Backend] = []
    for name in used:
        backend = Backend.backends.get(name)
        if backend is None:
            try:
                backend = Backend(**entries[name])
            except (BackendSetupError, TypeError, ValueError) as exc:
                for done in created:  # a failed load configures nothing
                    done.close()
                raise _fail("backend", f"backend {name!r} could not be configured: {exc}") from exc
            created.append(backend)
        resolved[name] = backend
    return resolved


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
    loaded = _check_loaded(doc, tables, set(entries))
    _check_root(doc, cls, tables, set(entries))
    if foreign:  # never share dicts with the caller, and refuse what JSON cannot hold
        tables = {
            name: {i: _plain_copy(r, f"{name}[{i!r}]") for i, r in t.items()}
            for name, t in tables.items()
        }
    backends = _resolve_backends(entries, tables)

    volumes = {vid: Volume(backends[raw["backend"]], raw) for vid, raw in tables["volumes"].items()}
    snapshots = {
        sid: Snapshot(backends[raw["backend"]], raw, volume=volumes.get(raw["volume_id"]))
        for sid, raw in tables["snapshots"].items()
    }
    connections = {
        cid: Connection(backends[raw["backend"]], raw, volume=volumes.get(raw["volume_id"]))
        for cid, raw in tables["connections"].items()
    }
    for vid in loaded["volume_snapshots"]:
        volumes[vid]._snapshots = []
    for vid in loaded["volume_connections"]:
        volumes[vid]._connections = []
    for snapshot in snapshots.values():
        parent = volumes.get(snapshot.volume_id)
        if parent is not None and parent._snapshots is not None:
            parent._snapshots.append(snapshot)
    for connection in connections.values():
        parent = volumes.get(connection.volume_id)
        if parent is not None and parent._connections is not None:
            parent._connections.append(connection)
    for name in loaded["backend_volumes"]:
        backend = backends[name]
        with backend._lock:
            backend._volumes = [v for v in volumes.values() if v.backend_name == name]

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
