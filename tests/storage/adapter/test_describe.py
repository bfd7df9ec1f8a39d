"""Error text names the cause a driver wrapped in a generic exception.

RBD raises "Error connecting to ceph cluster." while handling the ``rados`` error that
says what is wrong (pool missing, permission denied, timed out); an earlier failure
that a cleanup ran under is not a cause and stays out.
"""

from __future__ import annotations

from csi_driver.storage import DriverError, cinder_adapter


class WrappedError(Exception):
    """A generic driver error raised while handling the real one."""


def raise_wrapped(inner: BaseException) -> None:
    try:
        raise inner
    except type(inner):
        raise WrappedError("Error connecting to ceph cluster.")  # noqa: B904 - as drivers do


def test_the_exception_a_driver_wrapped_is_named() -> None:
    try:
        raise_wrapped(OSError("[errno 2] RADOS object not found (error opening pool 'x')"))
    except WrappedError as exc:
        text = cinder_adapter.describe(exc)
    assert text.startswith("WrappedError: Error connecting to ceph cluster.")
    assert "(caused by OSError: [errno 2] RADOS object not found (error opening pool 'x'))" in text


def test_an_earlier_failure_handled_during_cleanup_is_not_named_as_the_cause() -> None:
    try:
        raise DriverError("b", "create volume", "the first failure")
    except DriverError:
        try:
            raise WrappedError("cleanup failed")
        except WrappedError as exc:
            text = cinder_adapter.describe(exc)
    assert text == "WrappedError: cleanup failed"


def test_explicitly_suppressed_context_is_not_named() -> None:
    try:
        try:
            raise OSError("hidden")
        except OSError:
            raise WrappedError("plain") from None
    except WrappedError as exc:
        assert cinder_adapter.describe(exc) == "WrappedError: plain"
