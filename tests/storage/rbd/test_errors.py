"""Ceph mistakes an administrator can act on: each raises an error naming the backend
and the cause, within a bounded time, and leaves nothing in the store.

Connection attempts are bounded with the driver's own options
(``rados_connect_timeout``, ``rados_connection_retries=1``); Cinder's defaults retry
three times with 5 s and 10 s pauses. The RBD driver wraps every librados failure in
"Error connecting to ceph cluster."; the cause comes from the exception it wrapped.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rbd_support import POOL, ClusterView, RbdSite, harness, timed

from csi_driver import storage
from csi_driver.storage import runtime

MakeBackend = Callable[..., storage.Backend]
BOUND = 20.0  # seconds any of these failures may take

pytestmark = pytest.mark.usefixtures("memory_store")


def bounded(rbd_site: RbdSite, **extra: Any) -> dict[str, Any]:
    """Options that make connection failures quick."""
    return rbd_site.options(**{"rados_connect_timeout": 3, "rados_connection_retries": 1, **extra})


def store_is_empty() -> bool:
    store = runtime.store()
    return not (store.get_volumes() or store.get_snapshots() or store.get_connections())


def fails_to_set_up(make_backend: MakeBackend, name: str, options: dict[str, Any]) -> str:
    """Configure a backend that must fail; the error message, checked for the basics."""
    started = time.monotonic()
    with pytest.raises(storage.BackendSetupError) as caught:
        make_backend(name, **options)
    elapsed = time.monotonic() - started
    assert elapsed < BOUND, f"setup failure took {elapsed:.1f}s"
    assert caught.value.backend == name
    assert f"backend {name!r}" in str(caught.value)
    assert name not in storage.Backend.backends
    assert store_is_empty()
    return str(caught.value)


def test_missing_pool_is_named_at_setup(make_backend: MakeBackend, rbd_site: RbdSite) -> None:
    with timed("setup error: missing pool"):
        message = fails_to_set_up(
            make_backend, "rbd-nopool", bounded(rbd_site, rbd_pool="no-such-pool")
        )
    assert "error opening pool 'no-such-pool'" in message


def test_user_unknown_to_the_cluster_is_refused_at_setup(
    make_backend: MakeBackend, rbd_site: RbdSite, tmp_path: Path
) -> None:
    keyring = tmp_path / "ghost.keyring"
    harness.new_keyring(keyring, "client.ghost")
    conf = rbd_site.cluster.client_conf(tmp_path / "ghost.conf", keyring=keyring)
    options = bounded(rbd_site, rbd_user="ghost", rbd_ceph_conf=str(conf))
    with timed("setup error: unknown user"):
        message = fails_to_set_up(make_backend, "rbd-ghost", options)
    assert "permission denied" in message.lower()


def test_wrong_key_of_a_known_user_is_refused_at_setup(
    make_backend: MakeBackend, rbd_site: RbdSite, tmp_path: Path
) -> None:
    keyring = tmp_path / "wrong.keyring"
    wrong_key = harness.new_keyring(keyring, "client.cinder")
    assert wrong_key != rbd_site.keys["cinder"]
    conf = rbd_site.cluster.client_conf(tmp_path / "wrong.conf", keyring=keyring)
    options = bounded(rbd_site, rbd_ceph_conf=str(conf))
    with timed("setup error: wrong key"):
        message = fails_to_set_up(make_backend, "rbd-wrongkey", options)
    assert "permission denied" in message.lower()
    assert wrong_key not in message


def test_unreachable_cluster_times_out_at_setup(
    make_backend: MakeBackend, rbd_site: RbdSite, tmp_path: Path
) -> None:
    v2, v1 = harness.free_port(), harness.free_port()
    nowhere = f"[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]"  # nobody listens there
    conf = rbd_site.cluster.client_conf(tmp_path / "nowhere.conf", mon_host=nowhere)
    options = bounded(rbd_site, rbd_ceph_conf=str(conf))
    with timed("setup error: unreachable (timeout 3 s)"):
        message = fails_to_set_up(make_backend, "rbd-nowhere", options)
    assert "timed out" in message
    assert "error connecting to the cluster" in message


def test_user_without_caps_on_the_pool_fails_the_create_and_keeps_no_record(
    make_backend: MakeBackend, rbd_site: RbdSite, view: ClusterView
) -> None:
    # The pool exists, so setup passes; user-a's caps are for pool-a only.
    backend = make_backend("rbd-nocaps", **bounded(rbd_site, rbd_user="user-a"))
    with pytest.raises(storage.DriverError) as caught:
        backend.create_volume(size=1)
    message = str(caught.value)
    assert caught.value.backend == "rbd-nocaps"
    assert "create volume failed" in message
    assert "permission" in message.lower()
    assert store_is_empty()
    assert backend.volumes == []
    assert view.live_images(POOL) == set()


@pytest.fixture
def doomed_pool(rbd_site: RbdSite) -> Iterator[str]:
    """A pool of its own (and client.doomer with caps on it), deleted by the test."""
    pool = f"doomed-{uuid.uuid4().hex[:8]}"
    with timed("create 1 pool"):
        rbd_site.cluster.create_pools(pool)
    rbd_site.cluster.create_user("doomer", [pool])
    yield pool
    if rbd_site.view.pool_exists(pool):
        rbd_site.cluster.delete_pool(pool)


def test_create_on_a_pool_deleted_after_setup_leaves_no_record(
    make_backend: MakeBackend, rbd_site: RbdSite, doomed_pool: str
) -> None:
    backend = make_backend(
        "rbd-doomed", **bounded(rbd_site, rbd_pool=doomed_pool, rbd_user="doomer")
    )
    first = backend.create_volume(size=1)
    rbd_site.cluster.delete_pool(doomed_pool)

    started = time.monotonic()
    with pytest.raises(storage.DriverError) as caught:
        backend.create_volume(size=1, name="too-late")
    assert time.monotonic() - started < BOUND
    message = str(caught.value)
    assert caught.value.backend == "rbd-doomed"
    assert "create volume failed" in message
    assert f"error opening pool '{doomed_pool}'" in message
    stored = runtime.store().get_volumes(backend="rbd-doomed")
    assert [v["id"] for v in stored] == [first.id]
    assert backend.find_volumes("too-late") == []
    assert [v.id for v in backend.volumes] == [first.id]
