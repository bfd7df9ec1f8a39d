"""``create_unique``: one record per name, kept by name claims.

A claim is a ``CsiKeyValue`` named from the (kind, name) hash; the API server's
409 on its create makes one creator win. The design (binding, stale claims,
takeovers) is in the package docstring, under "Unique names".
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from csi_driver.storage.exceptions import InvalidArgument, NameInUse, StoreError, StoreUnavailable
from csi_driver.storage.persistence.base import Record, check_unique_create, encode_record
from csi_driver.storage.persistence.kubernetes.api import _OK, _Maybe, _Obj, _seq_key
from csi_driver.storage.persistence.kubernetes.names import (
    _CLAIM_PREFIX,
    KEYVALUES,
    RESOURCES,
    _digest,
    _record_spec,
    _selector,
    object_name,
)
from csi_driver.storage.persistence.kubernetes.undo import UndoableWrites, _InDoubt, _Undo

LOG = logging.getLogger(__package__)  # the logger of the whole store


class NameClaims(UndoableWrites):
    """Unique creates by name claims, and the release of a record's claim.

    The attributes are set by ``KubernetesStore.__init__``.
    """

    claim_timeout: float

    def _claim_path(self, kind: str, name: str) -> str:
        return self._path(KEYVALUES, _CLAIM_PREFIX[kind] + _digest(name))

    @staticmethod
    def _claim_info(obj: _Obj) -> dict[str, Any]:
        try:
            info = json.loads(obj.spec.get("value", ""))
        except ValueError:
            info = None
        return info if isinstance(info, dict) else {}

    def _holder(self, kind: str, name: str) -> str | None:
        """The id of the first-stored record of ``kind`` named ``name``, if any."""
        objs = self._list_all(RESOURCES[kind], _selector({"name": name}))
        objs = sorted((o for o in objs if o.spec.get("name") == name), key=_seq_key)
        return objs[0].spec.get("id") if objs else None

    def _release_claim(self, kind: str, name: str, record_id: str) -> None:
        """Delete the claim on ``name`` if ``record_id`` holds it. Best effort: a claim
        left behind is found stale by the next unique create of that name."""
        path = self._claim_path(kind, name)
        try:
            claim = self._get(path)
            if claim is not None and self._claim_info(claim).get("id") == record_id:
                self._remove(path, uuid.uuid4().hex, claim, exact=True)
        except (StoreError, _Maybe) as exc:
            LOG.warning("kubernetes store: could not release the claim of a %s name: %s",
                        kind, exc)  # fmt: skip

    def _wait_for_claim(self, kind: str, name: str, path: str) -> str | None:
        """Another caller's claim holds ``name``: the id it names once bound (the
        caller raises NameInUse with it), or None when the claim was stale and is
        gone (the caller tries again)."""
        stale_after = time.monotonic() + self.claim_timeout
        last_rv = None
        delay = 0.005
        while True:
            claim = self._get(path)
            if claim is None:
                return None
            info = self._claim_info(claim)
            holder = info.get("id")
            if info.get("bound") and isinstance(holder, str):
                record = self._get(self._path(RESOURCES[kind], object_name(holder)))
                if (
                    record is not None
                    and record.spec.get("id") == holder
                    and record.spec.get("name") == name
                ):
                    return holder
                stale = True  # bound to a record that is gone or renamed
            else:
                if claim.rv != last_rv:
                    last_rv = claim.rv
                    stale_after = time.monotonic() + self.claim_timeout
                stale = time.monotonic() >= stale_after
            if stale:
                LOG.warning("kubernetes store: removing a stale claim on a %s name (held for "
                            "%s)", kind, holder)  # fmt: skip
                self._remove(path, uuid.uuid4().hex, claim, exact=True)
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _bind(self, claim: _Obj, spec: dict[str, Any], write_id: str) -> bool:
        """Mark our claim bound: False when it was taken over (deleted as stale)."""
        path = self._path(KEYVALUES, claim.name)
        current = claim
        for _ in range(self.conflict_retries + 1):
            body = self._body(KEYVALUES, claim.name, spec, current.rv, "name-claim")
            try:
                status, data = self._request("PUT", path, body=body)
            except _Maybe as maybe:
                try:
                    now = self._get(path)
                except StoreUnavailable as exc:
                    raise _InDoubt(str(maybe.cause), []) from exc
                if now is None or now.spec.get("writeId") != write_id:
                    return False
                if self._claim_info(now).get("bound"):
                    return True
                current = now
                continue
            if status in _OK:
                self._remember(path, _Obj(data))
                return True
            return False  # 404 or 409: deleted (and maybe claimed again) by another
        raise StoreUnavailable(f"kubernetes store: could not bind {self._describe(path)}")

    def create_unique(self, kind: str, record: Record) -> None:
        name = check_unique_create(kind, record)
        text = encode_record(kind, record)
        record_id = record["id"]
        self._heal()
        resource = RESOURCES[kind]
        claim_path = self._claim_path(kind, name)
        claim_name = claim_path.rsplit("/", 1)[1]
        record_name = object_name(record_id)
        write_id = uuid.uuid4().hex

        def claim_spec(bound: bool) -> dict[str, Any]:
            value = json.dumps({"id": record_id, "bound": bound}, separators=(",", ":"))
            return {"key": f"name-claim/{kind}/{name}", "value": value, "writeId": write_id}

        def attempt(done: list[_Undo]) -> str | None:
            """One round: "" once the record is stored, the id of the record that holds
            the name, or None when the round must run again."""
            holder = self._holder(kind, name)
            if holder is not None:
                return holder
            claim = self._create(KEYVALUES, claim_name, claim_spec(False), write_id, "name-claim")
            if claim is None:
                return self._wait_for_claim(kind, name, claim_path)
            done.append(_Undo(claim_path, frozenset({write_id}), None))
            spec = _record_spec(kind, record, text, self._next_seq(), write_id)
            if self._create(resource, record_name, spec, write_id) is None:
                raise InvalidArgument(f"a {kind} with id {record_id!r} already exists")
            done.append(_Undo(self._path(resource, record_name), frozenset({write_id}), None))
            if self._bind(claim, claim_spec(True), write_id):
                done.clear()
                return ""
            # Our claim was taken over as stale while we were slow: take our record
            # back, and start again.
            undos = done[:]
            done.clear()
            self._undo(undos)
            return None

        for _ in range(self.conflict_retries + 1):
            outcome = self._undoable(attempt)
            if outcome == "":
                return
            if outcome is not None:
                raise NameInUse(kind, name, outcome)
        raise StoreError(f"kubernetes store: could not settle who holds {kind} name {name!r}")
