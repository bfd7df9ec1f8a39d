"""The etcd store's requests: the operations and compares of its transactions.

Why a module: a write is one compare-and-swap transaction whose shape (a flat one,
or groups of adjacent keys as nested transactions when it is too big for
``--max-txn-ops``) is worked out from the records alone, apart from sending it.
"""

from __future__ import annotations

import random
import time
from typing import Any, NamedTuple

from etcd3 import etcdrpc as rpc

from csi_driver.storage.exceptions import StoreError
from csi_driver.storage.persistence.etcd.keys import Keys, key_after

#: Transactions tried by one write before it gives up on a record that keeps changing.
CAS_ATTEMPTS = 64


# -- operations and compares ---------------------------------------------------------------
def range_request(
    key: bytes,
    end: bytes = b"",
    *,
    limit: int = 0,
    revision: int = 0,
    keys_only: bool = False,
) -> Any:
    return rpc.RangeRequest(
        key=key, range_end=end, limit=limit, revision=revision, keys_only=keys_only
    )


def get_op(key: bytes, end: bytes = b"", **options: Any) -> Any:
    return rpc.RequestOp(request_range=range_request(key, end, **options))


def put_op(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def nested_op(ops: list[Any]) -> Any:
    """A transaction inside a transaction: applied with it, at the same revision."""
    return rpc.RequestOp(request_txn=rpc.TxnRequest(success=ops))


def delete_op(key: bytes) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key))


def mod_is(key: bytes, revision: int) -> Any:
    """Compare: the key was last changed at ``revision`` (0: the key is absent)."""
    return rpc.Compare(
        key=key, target=rpc.Compare.MOD, result=rpc.Compare.EQUAL, mod_revision=revision
    )


def absent(key: bytes, end: bytes = b"") -> Any:
    """Compare: no key in [key, end) exists (just ``key`` without ``end``)."""
    return rpc.Compare(
        key=key, range_end=end, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
    )


def backoff(attempt: int) -> None:
    """Pause before compare-and-swap attempt ``attempt + 1``: none for the first few (the
    failed one brought the fresh state), then a growing random one against a crowd."""
    if attempt >= 3:
        time.sleep(random.uniform(0, min(0.1, 0.001 * 2**attempt)))  # noqa: S311


# -- the records of a write ----------------------------------------------------------------
class Stored(NamedTuple):
    """What a write must know of a stored record: its revision, place and index values."""

    mod_revision: int
    pos: int
    fields: dict[str, str | None]


class Change(NamedTuple):
    """One record to put (``text`` set: its JSON) or delete (``text`` None)."""

    kind: str
    record_id: str
    key: bytes
    text: str | None
    fields: dict[str, str | None]


def change_ops(
    keys: Keys, changes: list[Change], known: dict[bytes, Stored | None], *, full_index: bool
) -> tuple[dict[bytes, list[Any]], dict[bytes, int]]:
    """The operations of each change, and the place of each record put."""
    ops: dict[bytes, list[Any]] = {}
    places: dict[bytes, int] = {}
    new_place = 0
    for change in changes:
        old = known[change.key]
        old_index = keys.index_keys(change.kind, change.record_id, old.fields) if old else set()
        mine = ops[change.key] = []
        if change.text is None:
            if old is not None:
                mine.append(delete_op(change.key))
                mine.extend(delete_op(k) for k in sorted(old_index))
            continue
        if old is None:  # its place among the records this transaction creates
            pos, new_place = new_place, new_place + 1
        else:
            pos = old.pos
        places[change.key] = pos
        mine.append(put_op(change.key, b"%d\n" % pos + change.text.encode()))
        new_index = keys.index_keys(change.kind, change.record_id, change.fields)
        mine.extend(delete_op(k) for k in sorted(old_index - new_index))
        mine.extend(
            put_op(k, b"") for k in sorted(new_index if full_index else new_index - old_index)
        )
    return ops, places


def group_changes(
    changes: list[Change], ops: dict[bytes, list[Any]], max_ops: int, where: str
) -> list[list[Change]]:
    """Changes in key order, cut into at most max_txn_ops/4 runs of one kind."""
    ordered = sorted(changes, key=lambda change: change.key)
    max_groups = max(1, max_ops // 4)
    if len(ordered) <= max_groups:
        return [[change] for change in ordered]
    budget = max_ops - max_groups
    cut: list[list[Change]] = []
    size = 0
    for change in ordered:
        count = max(len(ops[change.key]), 1)
        if cut and cut[-1][-1].kind == change.kind and size + count <= budget:
            cut[-1].append(change)
            size += count
        else:
            cut.append([change])
            size = count
    if len(cut) > max_groups:
        raise StoreError(
            f"{where}: cannot write {len(changes)} records in one etcd transaction: "
            f"they need {sum(map(len, ops.values()))} operations, more than "
            f"{max_groups} nested transactions of {budget} fit in --max-txn-ops "
            f"{max_ops} (the store option max_txn_ops); write fewer records at once. "
            "Nothing was written."
        )
    return cut


def unchanged(group: list[Change], known: dict[bytes, Stored | None], revision: int) -> Any:
    """Compare: the group's records are as ``known`` says."""
    if len(group) == 1:
        old = known[group[0].key]
        return mod_is(group[0].key, old.mod_revision if old else 0)
    return rpc.Compare(
        key=group[0].key,
        range_end=key_after(group[-1].key),
        target=rpc.Compare.MOD,
        result=rpc.Compare.LESS,
        mod_revision=revision + 1,
    )
