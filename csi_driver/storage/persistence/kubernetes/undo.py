"""Writes of one object that say how to undo them, and the undo of in-doubt calls.

Kubernetes has no transaction over several objects: each write returns an
``_Undo`` that puts the object back, a call collects them (``_undoable``) and
undoes them when it fails. When the server stops answering in the middle,
``_InDoubt`` carries the undo of writes that may have been applied; it waits in
``_pending`` and ``_heal`` runs it at the next call that reaches the server.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from csi_driver.storage.exceptions import StoreError, StoreUnavailable
from csi_driver.storage.persistence.kubernetes.api import _OK, KubeApi, _Maybe, _Obj
from csi_driver.storage.persistence.kubernetes.names import _role_of

LOG = logging.getLogger(__package__)  # the logger of the whole store


@dataclass
class _Undo:
    """How to put one object back the way it was before a call of this store.

    Applied only while the object still carries one of ``write_ids`` (or, for a
    delete, while it is still absent): what others wrote since is left alone.
    """

    path: str
    write_ids: frozenset[str]
    #: The object's spec before the call; None: it did not exist.
    before: dict[str, Any] | None
    #: The call deleted the object (else it created or replaced it).
    deleted: bool = False


class _InDoubt(StoreUnavailable):
    """StoreUnavailable for a call that may have changed objects; ``undos`` put them back."""

    def __init__(self, message: str, undos: list[_Undo]) -> None:
        super().__init__(message)
        self.undos = undos


class UndoableWrites(KubeApi):
    """Create, replace and delete one object; undo what a failed call wrote.

    The attributes are set by ``KubernetesStore.__init__``.
    """

    conflict_retries: int
    _pending: list[_Undo]
    _heal_lock: threading.Lock
    _object_locks: list[threading.Lock]

    def _settle(self, path: str, write_id: str, maybe: _Maybe, undo: _Undo) -> _Obj | None:
        """After a write whose answer was lost: the object if the write was applied,
        else None (the caller tries again). Unreachable: ``_InDoubt``."""
        try:
            obj = self._get(path)
        except StoreUnavailable as exc:
            raise _InDoubt(str(maybe.cause), [undo]) from exc
        if obj is not None and obj.spec.get("writeId") == write_id:
            return obj
        return None

    def _upsert(
        self,
        resource: str,
        name: str,
        write_id: str,
        make_spec: Callable[[dict[str, Any] | None], dict[str, Any]],
        role: str | None = None,
    ) -> tuple[_Obj, _Undo]:
        """Create or replace one object; its new version and how to undo the write.

        ``make_spec(old_spec)`` builds the new spec (old_spec None: a create).
        """
        path = self._path(resource, name)
        # Threads of this process take turns on an object rather than race for it;
        # other processes race, and lose to a 409.
        with self._object_locks[hash(path) % len(self._object_locks)]:
            return self._upsert_locked(path, resource, name, write_id, make_spec, role)

    def _upsert_locked(
        self,
        path: str,
        resource: str,
        name: str,
        write_id: str,
        make_spec: Callable[[dict[str, Any] | None], dict[str, Any]],
        role: str | None,
    ) -> tuple[_Obj, _Undo]:
        current = self._cached(path)
        lost: _Maybe | None = None
        for attempt in range(self.conflict_retries + 1):
            before = None if current is None else current.spec
            undo = _Undo(path, frozenset({write_id}), before)
            spec = make_spec(before)
            try:
                if current is None:
                    status, data = self._request(
                        "POST",
                        self._path(resource),
                        body=self._body(resource, name, spec, "", role),
                    )
                else:
                    status, data = self._request(
                        "PUT", path, body=self._body(resource, name, spec, current.rv, role)
                    )
            except _Maybe as maybe:
                applied = self._settle(path, write_id, maybe, undo)
                if applied is not None:
                    return applied, undo
                current, lost = self._cached(path), maybe
                continue
            lost = None
            if status in _OK:
                obj = _Obj(data)
                self._remember(path, obj)
                return obj, undo
            # 409 (exists, or another version) or 404 (deleted meanwhile): read again.
            if attempt:  # back off, with jitter, from whoever else writes it
                time.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))  # noqa: S311
            current = self._get(path)
        if lost is not None:  # the server kept failing (5xx): not applied, it said
            raise lost.cause
        raise StoreError(
            f"kubernetes store: {self._describe(path)} kept changing: gave up after "
            f"{self.conflict_retries} resourceVersion conflicts"
        )

    def _create(
        self, resource: str, name: str, spec: dict[str, Any], write_id: str, role: str | None = None
    ) -> _Obj | None:
        """Create one object: its first version, or None when the name is taken."""
        path = self._path(resource, name)
        undo = _Undo(path, frozenset({write_id}), None)
        for _ in range(self.conflict_retries + 1):
            try:
                status, data = self._request(
                    "POST", self._path(resource), body=self._body(resource, name, spec, "", role)
                )
            except _Maybe as maybe:
                try:
                    obj = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), [undo]) from exc
                if obj is None:
                    continue  # not applied: again
                return obj if obj.spec.get("writeId") == write_id else None
            if status in _OK:
                obj = _Obj(data)
                self._remember(path, obj)
                return obj
            return None
        raise StoreUnavailable(f"kubernetes store: could not create {self._describe(path)}")

    def _remove(
        self, path: str, write_id: str, current: _Obj | None = None, exact: bool = False
    ) -> tuple[_Obj | None, _Undo | None]:
        """Delete one object (if there); the deleted version and how to undo it.

        ``exact``: delete only the version ``current`` (else whatever is there).
        """
        if current is None:
            current = self._cached(path) or self._get(path)
        for _ in range(self.conflict_retries + 1):
            if current is None:
                return None, None
            undo = _Undo(path, frozenset({write_id}), current.spec, deleted=True)
            body = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "preconditions": {"resourceVersion": current.rv},
            }
            try:
                status, _ = self._request("DELETE", path, body=body)
            except _Maybe as maybe:
                try:
                    now = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), [undo]) from exc
                if now is None:
                    return current, undo
                if exact and now.rv != current.rv:
                    return None, None
                current = now
                continue
            if status in _OK:
                self._forget(path)
                return current, undo
            if status == 404:
                self._forget(path)
                return None, None
            if exact:
                self._forget(path)
                return None, None  # 409: it changed, and that version is not ours to delete
            current = self._get(path)  # 409: another version; delete that one
        raise StoreError(
            f"kubernetes store: {self._describe(path)} kept changing: gave up deleting after "
            f"{self.conflict_retries} resourceVersion conflicts"
        )

    # -- undo ------------------------------------------------------------------
    def _undo_one(self, undo: _Undo) -> None:
        resource, name = undo.path[len(self._base) :].split("/", 1)
        for _ in range(self.conflict_retries + 1):
            current = self._get(undo.path)
            if undo.deleted:
                if current is not None or undo.before is None:
                    return  # the delete was not applied, or the name was taken again
                spec = undo.before
                status, data = self._request(
                    "POST", self._path(resource), body=self._body(resource, name, spec, "",
                                                                  _role_of(resource, spec))
                )  # fmt: skip
            else:
                if current is None or current.spec.get("writeId") not in undo.write_ids:
                    return  # not applied, or changed since by someone else: leave it
                if undo.before is None:
                    body = {"apiVersion": "v1", "kind": "DeleteOptions",
                            "preconditions": {"resourceVersion": current.rv}}  # fmt: skip
                    status, data = self._request("DELETE", undo.path, body=body)
                    if status == 404 or status in _OK:
                        self._forget(undo.path)
                        return
                    continue
                spec = undo.before
                status, data = self._request(
                    "PUT", undo.path, body=self._body(resource, name, spec, current.rv,
                                                      _role_of(resource, spec))
                )  # fmt: skip
            if status in _OK:
                self._remember(undo.path, _Obj(data))
                return
            if undo.deleted and status == 409:
                return  # re-created meanwhile by someone else
        LOG.warning("kubernetes store: could not undo a write of %s: it kept changing",
                    self._describe(undo.path))  # fmt: skip

    def _heal(self) -> None:
        """Run the undo left by calls that failed while the server was unreachable.

        Raises StoreUnavailable while it still is: the caller's call then fails
        without doing anything.
        """
        if not self._pending:
            return
        with self._heal_lock:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    undo = self._pending[-1]
                try:
                    self._undo_one(undo)
                except _Maybe as maybe:
                    raise maybe.cause from None
                except StoreUnavailable:
                    raise
                except StoreError as exc:
                    LOG.warning("kubernetes store: dropped the undo of a write of %s: %s",
                                self._describe(undo.path), exc)  # fmt: skip
                with self._lock:
                    if self._pending and self._pending[-1] is undo:
                        self._pending.pop()

    def _undo(self, undos: list[_Undo]) -> None:
        """Queue the undo of a failed call and run it now if the server answers."""
        if not undos:
            return
        with self._lock:
            self._pending.extend(undos)
        try:
            self._heal()
        except StoreError as exc:
            LOG.warning("kubernetes store: a failed write is undone later, when the API "
                        "server answers again: %s", exc)  # fmt: skip

    def _undoable(self, call: Callable[[list[_Undo]], Any]) -> Any:
        """Run ``call(done)``: it appends an undo per object written; a failure undoes them."""
        done: list[_Undo] = []
        try:
            return call(done)
        except _InDoubt as exc:
            self._undo([*done, *exc.undos])
            raise StoreUnavailable(str(exc)) from None
        except _Maybe as maybe:  # a lost answer of an undo-free request
            self._undo(done)
            raise maybe.cause from None
        except BaseException:
            self._undo(done)
            raise
