"""Pins the one table that maps exceptions to gRPC status codes (csi_driver/errors.py):
a change of code is a change of the plugin's contract with COs and must be deliberate."""

from __future__ import annotations

import grpc
import pytest

from csi_driver import errors, host_fs
from csi_driver.storage import exceptions as storage_errors

Code = grpc.StatusCode

EXPECTED = [
    (errors.InvalidRequest("x"), Code.INVALID_ARGUMENT),
    (errors.ObjectNotFound("x"), Code.NOT_FOUND),
    (errors.AlreadyExists("x"), Code.ALREADY_EXISTS),
    (errors.FailedPrecondition("x"), Code.FAILED_PRECONDITION),
    (errors.OutOfRange("x"), Code.OUT_OF_RANGE),
    (errors.ResourceExhausted("x"), Code.RESOURCE_EXHAUSTED),
    (errors.InFlight("x"), Code.ABORTED),
    (errors.UnknownToken("x"), Code.ABORTED),
    (errors.Unavailable("x"), Code.UNAVAILABLE),
    (errors.Unimplemented("x"), Code.UNIMPLEMENTED),
    (storage_errors.InvalidArgument("x"), Code.INVALID_ARGUMENT),
    (storage_errors.SerializationError("x"), Code.INVALID_ARGUMENT),
    (storage_errors.NotFound("x"), Code.NOT_FOUND),
    (storage_errors.CapacityError("x"), Code.OUT_OF_RANGE),
    (storage_errors.InvalidState("x"), Code.FAILED_PRECONDITION),
    (storage_errors.NotSupported("x"), Code.FAILED_PRECONDITION),
    (storage_errors.BackendSetupError("b", "x"), Code.UNAVAILABLE),
    (storage_errors.StoreError("x"), Code.UNAVAILABLE),
    (storage_errors.StoreUnavailable("etcd down"), Code.UNAVAILABLE),
    (storage_errors.BadPageToken("not ours"), Code.ABORTED),
    (storage_errors.NameInUse("volume", "pvc-1", "v1"), Code.ALREADY_EXISTS),
    (storage_errors.OperationInProgress("creating elsewhere"), Code.ABORTED),
    (storage_errors.DriverError("b", "create_volume", "x"), Code.INTERNAL),
    (storage_errors.AttachError("x"), Code.INTERNAL),
    (host_fs.NotBlank("x"), Code.FAILED_PRECONDITION),
    (host_fs.Busy("x"), Code.FAILED_PRECONDITION),
    (host_fs.MissingCapability("x"), Code.FAILED_PRECONDITION),
    (host_fs.BadPath("x"), Code.INVALID_ARGUMENT),
    (host_fs.HostError("x"), Code.INTERNAL),
    (RuntimeError("a bug"), Code.INTERNAL),
    (KeyError("a bug"), Code.INTERNAL),
]


@pytest.mark.parametrize(("exc", "code"), EXPECTED, ids=[type(e).__name__ for e, _ in EXPECTED])
def test_status_code_table(exc: Exception, code: grpc.StatusCode) -> None:
    assert errors.status_for(exc) == code
    assert errors.is_expected(exc) == (code != Code.INTERNAL)


def test_every_listed_exception_is_pinned() -> None:
    pinned = {type(e) for e, _ in EXPECTED}
    assert set(errors.STATUS_CODES) <= pinned
