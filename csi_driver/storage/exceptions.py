"""Errors raised by the storage library.

No gRPC or Cinder imports here: the CSI layer maps these types to status codes in
one table, and the Cinder adapter translates driver exceptions into them.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage library raises on purpose."""


class NotFound(StorageError):
    """A resource (volume, snapshot, connection, backend) does not exist."""


class InvalidState(StorageError):
    """The resource exists but is in a state that forbids the operation."""


class InvalidArgument(StorageError, ValueError):
    """A caller passed a value the library cannot accept."""


class CapacityError(StorageError):
    """The backend cannot hold a volume of the requested size (e.g. over its file or
    LUN size limit): the request is too big, not the backend broken."""


class BackendSetupError(StorageError):
    """A backend could not be configured or its driver failed to start.

    The message names the backend and the cause (for example the missing
    volume group) so an administrator can act on it.
    """

    def __init__(self, backend: str, reason: str) -> None:
        self.backend = backend
        self.reason = reason
        super().__init__(f"backend {backend!r}: {reason}")


class DriverError(StorageError):
    """A driver operation failed; the message names backend, operation and cause."""

    def __init__(self, backend: str, operation: str, reason: str) -> None:
        self.backend = backend
        self.operation = operation
        self.reason = reason
        super().__init__(f"backend {backend!r}: {operation} failed: {reason}")


class NotSupported(StorageError):
    """The operation needs something a standalone host cannot offer."""


class AttachError(StorageError):
    """os-brick could not attach or detach a connection on this host."""


class StoreError(StorageError):
    """The metadata store failed or holds data it cannot read."""


class StoreUnavailable(StoreError):
    """The store's server cannot be reached (or did not answer in time).

    Nothing of the failed call was applied: stores write in one transaction. The
    caller may retry once the server is back.
    """


class OperationInProgress(StorageError):
    """Another live process (a controller replica) is running an operation on this
    resource right now: retry once it has finished."""


class NameInUse(StorageError):
    """A record of that kind already holds the name a unique create asked for.

    ``existing_id`` is the id of the record that holds it: callers that create
    idempotently by name (CSI CreateVolume) continue with that record.
    """

    def __init__(self, kind: str, name: str, existing_id: str) -> None:
        self.kind = kind
        self.name = name
        self.existing_id = existing_id
        super().__init__(f"{kind} name {name!r} is already held by {kind} {existing_id}")


class BadPageToken(StorageError, ValueError):
    """A listing continuation the store did not issue (or for another listing)."""


class SerializationError(StorageError, ValueError):
    """Serialized data cannot be loaded; the message names the offending field."""
