"""Library-level lookups across every configured backend, for callers (like the CSI
controller) that know an id or name but not which backend holds it.

The metadata store is shared by all backends, so one query answers; a record whose
backend is not configured in this process is reported by name rather than skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from csi_driver.storage import runtime
from csi_driver.storage.backend import Backend
from csi_driver.storage.connection import Connection
from csi_driver.storage.exceptions import InvalidState, NotFound
from csi_driver.storage.persistence.base import SNAPSHOT, VOLUME, Record
from csi_driver.storage.snapshot import Snapshot
from csi_driver.storage.volume import Volume

T = TypeVar("T")


def _backend_of(record: dict[str, Any], kind: str) -> Backend:
    backend = Backend.backends.get(record["backend"])
    if backend is None:
        raise InvalidState(
            f"{kind} {record['id']} is on backend {record['backend']!r}, "
            "which is not configured in this process"
        )
    return backend


def get_volume(volume_id: str) -> Volume:
    """The volume with that id on any configured backend, or ``NotFound``."""
    records = runtime.store().get_volumes(volume_id=volume_id)
    if not records:
        raise NotFound(f"volume {volume_id} not found")
    return Volume(_backend_of(records[0], "volume"), records[0])


def get_snapshot(snapshot_id: str) -> Snapshot:
    """The snapshot with that id on any configured backend, or ``NotFound``."""
    records = runtime.store().get_snapshots(snapshot_id=snapshot_id)
    if not records:
        raise NotFound(f"snapshot {snapshot_id} not found")
    return Snapshot(_backend_of(records[0], "snapshot"), records[0])


def _on_configured(cls: Callable[[Backend, Record], T], records: Iterable[Record]) -> list[T]:
    """Objects for the records whose backend is configured in this process."""
    backends = Backend.backends
    return [cls(backends[r["backend"]], r) for r in records if r["backend"] in backends]


def find_volumes(name: str | None = None) -> list[Volume]:
    """Volumes on configured backends (with that name, when given), sorted by id."""
    records = runtime.store().get_volumes(name=name)
    return _on_configured(Volume, sorted(records, key=lambda r: r["id"]))


def find_snapshots(name: str | None = None, volume_id: str | None = None) -> list[Snapshot]:
    """Snapshots on configured backends matching the filters given, sorted by id."""
    records = runtime.store().get_snapshots(name=name, volume_id=volume_id)
    return _on_configured(Snapshot, sorted(records, key=lambda r: r["id"]))


def find_connections() -> list[Connection]:
    """Every connection on configured backends, with one store read (their volumes
    are loaded lazily, only if asked for)."""
    return _on_configured(Connection, runtime.store().get_connections())


#: Records read per store page when a listing has no limit of its own.
FULL_LISTING_PAGE = 500


def _page_of(
    kind: str,
    wrap: Callable[[Backend, Record], T],
    keep: Callable[[T], bool],
    limit: int,
    token: str,
    **filters: str | None,
) -> tuple[list[T], str]:
    """Up to ``limit`` (0: all) kept objects after the store token ``token``, in id
    order, and the store token of the next page ("" at the end).

    Each store page asks for no more than the entries still missing, so every record
    read is returned or skipped and the store's own next token is the right one; a
    page costs O(page) store work, not a read of every record.
    """
    out: list[T] = []
    while True:
        want = FULL_LISTING_PAGE if limit == 0 else limit - len(out)
        page = runtime.store().list_page(kind, limit=want, token=token, **filters)
        out.extend(item for item in _on_configured(wrap, page.records) if keep(item))
        token = page.next_token
        if not token or (limit and len(out) >= limit):
            return out, token


def volumes_page(
    limit: int, token: str, keep: Callable[[Volume], bool]
) -> tuple[list[Volume], str]:
    """A page of volumes on configured backends (see ``_page_of``)."""
    return _page_of(VOLUME, Volume, keep, limit, token)


def snapshots_page(
    limit: int, token: str, keep: Callable[[Snapshot], bool], volume_id: str | None = None
) -> tuple[list[Snapshot], str]:
    """A page of snapshots on configured backends, of one volume if given."""
    return _page_of(SNAPSHOT, Snapshot, keep, limit, token, volume_id=volume_id)


def connections_of(volume_ids: list[str]) -> list[Connection]:
    """The connections of those volumes, in one store read."""
    return _on_configured(Connection, runtime.store().connections_of(volume_ids))
