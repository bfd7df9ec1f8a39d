"""The one table from exception to gRPC status code.

The services raise the plugin's own errors below (or let the storage library's
typed errors through); ``status_for`` picks the code. Nothing else in the plugin
chooses a status code, so a reader can audit every answer a CO can get here.
"""

from __future__ import annotations

import grpc

from csi_driver import host_fs
from csi_driver.storage import exceptions as storage_errors


class PluginError(Exception):
    """Base of the errors the CSI services raise about a request."""


class InvalidRequest(PluginError):
    """A required field is missing or a value is malformed or unsupported."""


class ObjectNotFound(PluginError):
    """The volume, snapshot or node named in the request does not exist."""


class AlreadyExists(PluginError):
    """The name is taken by an object with incompatible parameters."""


class FailedPrecondition(PluginError):
    """The request is valid but the object's state forbids it now (e.g. still published)."""


class OutOfRange(PluginError):
    """A capacity the backend cannot provide (e.g. bigger than the limit asked)."""


class ResourceExhausted(PluginError):
    """Not enough capacity, or a limit on the number of objects was reached."""


class InFlight(PluginError):
    """Another call is already working on this name or id; the CO retries later."""


class UnknownToken(PluginError):
    """A list starting_token this plugin did not issue (the spec answers ABORTED)."""


class Unavailable(PluginError):
    """A dependency (backend, metadata store) cannot be reached now; retry later."""


class Unimplemented(PluginError):
    """An RPC of the spec this plugin does not offer (its capability is not advertised)."""


#: Exception type -> status code. The most specific class in an exception's MRO wins;
#: anything not listed is INTERNAL (and logged with its traceback).
STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    ObjectNotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    InFlight: grpc.StatusCode.ABORTED,
    UnknownToken: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    # The storage library's errors, as they reach a CSI caller.
    storage_errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    storage_errors.SerializationError: grpc.StatusCode.INVALID_ARGUMENT,
    storage_errors.NotFound: grpc.StatusCode.NOT_FOUND,
    # A size the backend cannot hold, like a capacity above limit_bytes.
    storage_errors.CapacityError: grpc.StatusCode.OUT_OF_RANGE,
    storage_errors.InvalidState: grpc.StatusCode.FAILED_PRECONDITION,
    storage_errors.NotSupported: grpc.StatusCode.FAILED_PRECONDITION,
    storage_errors.BackendSetupError: grpc.StatusCode.UNAVAILABLE,
    storage_errors.StoreError: grpc.StatusCode.UNAVAILABLE,
    # A continuation token of the store's listing that it did not issue (the spec's answer).
    storage_errors.BadPageToken: grpc.StatusCode.ABORTED,
    # Only reaches a caller when the name's holder is on a backend this process lacks.
    storage_errors.NameInUse: grpc.StatusCode.ALREADY_EXISTS,
    # Another controller replica is running an operation on it: the CO retries.
    storage_errors.OperationInProgress: grpc.StatusCode.ABORTED,
    storage_errors.DriverError: grpc.StatusCode.INTERNAL,
    storage_errors.AttachError: grpc.StatusCode.INTERNAL,
    # Node host operations: refusing to format, a mount that would hide or cut off others and
    # a privilege the deployment lacks are about the state; an unusable path is the request.
    host_fs.NotBlank: grpc.StatusCode.FAILED_PRECONDITION,
    host_fs.Busy: grpc.StatusCode.FAILED_PRECONDITION,
    host_fs.MissingCapability: grpc.StatusCode.FAILED_PRECONDITION,
    host_fs.BadPath: grpc.StatusCode.INVALID_ARGUMENT,
    host_fs.HostError: grpc.StatusCode.INTERNAL,
}


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code for an exception: its nearest listed class, else INTERNAL."""
    for cls in type(exc).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def is_expected(exc: BaseException) -> bool:
    """Whether the exception is an answer about the request rather than a fault here
    (expected ones are logged in one line, faults with their traceback)."""
    return status_for(exc) not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
