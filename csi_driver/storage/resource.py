"""What Volume, Snapshot and Connection share: a record, a backend, serialization.

Each resource wraps one *record*, the plain dict that is stored in the metadata
store and written into serialized documents. Reading a field reads the record;
changing one goes through ``_update`` and ``_save``. Because the record is the
serialized form, (de)serializing builds no Cinder objects at all: those are built
by the Cinder adapter only for the driver call that needs them.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload

from csi_driver.storage import crash_points, ownership, secrets, serialization
from csi_driver.storage.exceptions import InvalidArgument, InvalidState
from csi_driver.storage.persistence.base import apply_changes

if TYPE_CHECKING:
    from csi_driver.storage.backend import Backend
    from csi_driver.storage.persistence.base import MetadataStore, Record

T = TypeVar("T")

#: The stable status a resource of each kind returns to when an operation is undone.
AT_REST = {"volume": "available", "snapshot": "available", "connection": "connected"}
#: Statuses that say an operation was in flight when the record was stored.
TRANSITIONAL = frozenset({"creating", "deleting", "extending", "connecting", "disconnecting"})


def utcnow() -> str:
    """A timestamp as stored in records: ISO 8601, UTC, microseconds."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")


def new_id() -> str:
    return str(uuid.uuid4())


def operation_record(name: str, started_at: str, **details: Any) -> dict[str, Any]:
    """What a record says of the operation in flight: its name, start, details, and the
    process running it (so other replicas sharing the store leave a live one alone)."""
    return {"name": name, "started_at": started_at, "owner": ownership.this_process(), **details}


class Field(Generic[T]):
    """A read-only attribute backed by the record key of the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    @overload
    def __get__(self, obj: None, owner: type) -> Field[T]: ...
    @overload
    def __get__(self, obj: Resource, owner: type) -> T: ...
    def __get__(self, obj: Resource | None, owner: type) -> Field[T] | T:
        if obj is None:
            return self
        return obj._data.get(self.key)  # type: ignore[return-value]

    def __set__(self, obj: Resource, value: T) -> None:
        raise AttributeError(f"{self.key} is read-only; use the resource's methods to change it")


class Resource(serialization.Serializable):
    """Base of the stored resources; not used directly."""

    __slots__ = ("_data", "backend")

    #: Record kind in the metadata store and in documents ('volume', ...).
    KIND: ClassVar[str]
    #: Names of lazily loaded relations, in the order ``dump`` loads them.
    LAZY: ClassVar[tuple[str, ...]] = ()
    #: Record keys ``to_dict()`` shows.
    SUMMARY: ClassVar[tuple[str, ...]] = ()

    id: Field[str] = Field()
    status: Field[str] = Field()
    created_at: Field[str] = Field()
    updated_at: Field[str] = Field()
    #: The operation in flight when the record was stored ({'name': ..., 'started_at': ...,
    #: details}); absent when the resource is at rest.
    operation: Field[dict[str, Any] | None] = Field()

    def __init__(self, backend: Backend, data: Record) -> None:
        self.backend = backend
        self._data = data

    # -- identity -----------------------------------------------------------
    @property
    def backend_name(self) -> str:
        return self._data["backend"]

    def __repr__(self) -> str:
        name = self._data.get("name")
        label = f" {name!r}" if name else ""
        kind = type(self).__name__
        return f"<{kind} {self.id}{label} status={self.status} backend={self.backend_name}>"

    def to_dict(self) -> dict[str, Any]:
        """A readable summary for display and logs; secrets are masked.

        Not meant to be loaded back: use ``jsons`` to move a resource elsewhere.
        """
        out = {key: self._data.get(key) for key in self.SUMMARY}
        out["backend"] = self.backend_name
        return secrets.masked(out)

    # -- record maintenance ---------------------------------------------------------
    @property
    def record(self) -> Record:
        """A copy of the stored record (for inspection; changing it changes nothing)."""
        return serialization.copy_record(self._data)

    def _store(self) -> MetadataStore:
        return self.backend._store()

    def _update(self, **changes: Any) -> None:
        apply_changes(self._data, changes)
        self._data["updated_at"] = utcnow()

    def _save(self, durable: bool = True) -> None:
        self._store().write(**{self.KIND + "s": (self._data,)}, durable=durable)

    def _begin(self, status: str, operation: str, **details: Any) -> None:
        """Store a transitional status with the operation in flight, before the driver runs.

        A process killed before ``_end`` leaves exactly this record behind, and
        ``recovery.heal`` reads ``operation`` to finish or undo it.
        """
        self._update(status=status, operation=operation_record(operation, utcnow(), **details))
        self._save()

    def _end(self, status: str, *, durable: bool = True, **changes: Any) -> None:
        """Store a stable status (and the driver's changes); the operation is over.

        ``durable=False`` only where the ``_begin`` record, durable, makes recovery
        reach this same state when a power loss undoes this write (see the store's
        ``write``): it then costs no fsync.
        """
        self._update(status=status, operation=None, **changes)
        self._save(durable)

    def _run_delete(self, driver_delete: Callable[[], None]) -> None:
        """Run a driver delete: a busy resource keeps its status, a failure is marked."""
        previous = self.status
        if previous in TRANSITIONAL or previous == "error_deleting":
            # Healing an interrupted operation: "busy" must not leave it transitional.
            previous = "error" if previous == "creating" else AT_REST[self.KIND]
        self._begin("deleting", "delete", previous_status=previous)
        crash_points.reach(f"delete_{self.KIND}.before-driver")
        try:
            driver_delete()
        except InvalidState:
            self._end(previous)  # busy (e.g. a snapshot with clones): nothing changed
            raise
        except Exception:
            self._end("error_deleting")
            raise
        crash_points.reach(f"delete_{self.KIND}.after-driver")

    def is_loaded(self, relation: str) -> bool:
        """Whether a lazy relation has been loaded (``json`` includes only those)."""
        if relation not in self.LAZY:
            raise InvalidArgument(f"{type(self).__name__} has no lazy relation {relation!r}")
        return getattr(self, "_" + relation) is not None
