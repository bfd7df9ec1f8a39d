"""What every RPC handler shares: request ids, logging without secrets, error
translation through ``errors.STATUS_CODES``, per-name/id in-flight locks, and the
UNIMPLEMENTED answer of RPCs a service leaves out (``answer_unimplemented``).

Handlers are written as ``@rpc.handler(lock=...)`` methods that return a response
or raise; they never call ``context.abort`` or pick a status code themselves.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from csi_driver import errors
from csi_driver.csi_pb import csi_pb2, csi_pb2_grpc
from csi_driver.storage import crash_points
from csi_driver.storage.secrets import mask_text

LOG = logging.getLogger("csi_driver.rpc")

#: Map fields whose values may carry credentials and are not marked csi_secret in the
#: spec: publish_context holds a serialized connection (iSCSI CHAP, RBD keys).
SENSITIVE_MAPS = frozenset({"publish_context"})

R = TypeVar("R", bound=Message)
S = TypeVar("S", bound=type)


class InFlightLocks:
    """Named locks: a second call on a busy key is refused at once (ABORTED), as the
    CSI spec asks, while calls on other keys run in parallel."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[str] = set()

    @contextmanager
    def hold(self, keys: list[str]) -> Iterator[None]:
        keys = sorted(set(keys))
        with self._lock:
            taken = [k for k in keys if k in self._busy]
            if taken:
                raise errors.InFlight(
                    f"an operation on {taken[0]} is already in progress; retry later"
                )
            self._busy.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._busy.difference_update(keys)


def _redact(message: Message) -> Message:
    """A copy with every csi_secret field and sensitive map emptied (values kept as a
    count) so requests and responses can be logged."""
    copy = type(message)()
    copy.CopyFrom(message)
    _redact_in_place(copy)
    return copy


def _redact_in_place(message: Message) -> None:
    for field, value in message.ListFields():
        options = field.GetOptions()
        secret = (
            options.Extensions[csi_pb2.csi_secret]
            if options.HasExtension(csi_pb2.csi_secret)
            else False
        )
        if secret or field.name in SENSITIVE_MAPS:
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                container = getattr(message, field.name)
                keys = list(container.keys())
                for key in keys:
                    container[key] = "<redacted>"
            else:
                message.ClearField(field.name)
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue
            if isinstance(value, Message):
                _redact_in_place(value)
            else:  # a repeated message field
                for item in value:
                    _redact_in_place(item)


def describe(message: Message) -> str:
    """One log line for a request or response, secrets removed."""
    text = text_format.MessageToString(_redact(message), as_one_line=True)
    return mask_text(text)


def handler(
    lock: Callable[[Any], list[str]] | None = None,
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a servicer method ``(self, request, context) -> response``.

    ``lock(request)`` names the keys to hold while the call runs (e.g.
    ``['volume-name:pvc-1']``); a concurrent call holding one gets ABORTED. The
    servicer must have an ``inflight`` attribute (an ``InFlightLocks``).
    """

    def decorate(method: Callable[..., R]) -> Callable[..., R]:
        name = method.__name__
        crash_point = f"rpc.{name}.before-response"  # fault injection: work done, no answer
        if crash_point not in crash_points.POINTS:
            crash_point = ""

        @functools.wraps(method)
        def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> R:
            request_id = _request_id(context)
            started = time.monotonic()
            if LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("[%s] %s request: %s", request_id, name, describe(request))
            try:
                keys = lock(request) if lock is not None else []
                if keys:
                    with self.inflight.hold(keys):
                        response = method(self, request, context)
                else:
                    response = method(self, request, context)
            except Exception as exc:
                code = errors.status_for(exc)
                text = mask_text(str(exc)) or type(exc).__name__
                elapsed = time.monotonic() - started
                if errors.is_expected(exc):
                    LOG.info("[%s] %s -> %s: %s (%.3fs)", request_id, name, code.name, text,
                             elapsed)  # fmt: skip
                else:
                    LOG.error("[%s] %s failed -> %s: %s (%.3fs)", request_id, name, code.name,
                              text, elapsed, exc_info=True)  # fmt: skip
                    text = f"{text} (request id {request_id})"
                context.abort(code, text)
                raise AssertionError("context.abort returned") from exc  # pragma: no cover
            if crash_point:
                crash_points.reach(crash_point)
            LOG.info("[%s] %s ok (%.3fs)", request_id, name, time.monotonic() - started)
            if LOG.isEnabledFor(logging.DEBUG):
                LOG.debug("[%s] %s response: %s", request_id, name, describe(response))
            return response

        return wrapper

    return decorate


def answer_unimplemented(cls: S) -> S:
    """Class decorator for a servicer: every RPC of its generated base class that the
    class does not define answers UNIMPLEMENTED through ``handler`` (one INFO line),
    instead of the base's NotImplementedError, which gRPC logs with a traceback."""
    for base in cls.__mro__[1:]:
        if base.__module__ != csi_pb2_grpc.__name__:
            continue
        service = f"{csi_pb2.DESCRIPTOR.package}.{base.__name__.removesuffix('Servicer')}"
        for name, member in vars(base).items():
            if name.startswith("_") or not callable(member):
                continue
            owner = next(c for c in cls.__mro__ if name in vars(c))
            if owner is base:
                setattr(cls, name, _unimplemented(service, name))
    return cls


def _unimplemented(service: str, name: str) -> Callable[..., Message]:
    def method(self: Any, request: Any, context: grpc.ServicerContext) -> Message:
        raise errors.Unimplemented(f"{service}/{name} is not implemented by this plugin")

    method.__name__ = method.__qualname__ = name
    return handler()(method)


def caller_request_id(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The request id the caller sent (x-request-id metadata) as it is logged: secrets
    masked, at most 64 characters; None when it sent none."""
    for key, value in metadata:
        if key == "x-request-id" and isinstance(value, str) and value:
            return mask_text(value)[:64]
    return None


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


def _request_id(context: grpc.ServicerContext) -> str:
    """The caller's request id when it sent one, else a new one."""
    return caller_request_id(context.invocation_metadata() or ()) or new_request_id()
