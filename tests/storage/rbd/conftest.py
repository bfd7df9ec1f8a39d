"""Fixtures of the RBD tests: a real Ceph cluster for the session, always stopped.

The cluster is started once per session and stopped at its end whatever happened;
its daemons get SIGKILL if this process dies first. Every test starts with the
shared pools empty. Timings of the cluster and of RBD operations are printed at the
end of the run.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from csi_support.harnesses import report_timings

from csi_driver import storage

RBD_TESTS_DIR = str(Path(__file__).resolve().parent)
if RBD_TESTS_DIR not in sys.path:
    sys.path.append(RBD_TESTS_DIR)

from rbd_support import (  # noqa: E402
    POOL,
    POOL_A,
    POOL_B,
    TIMINGS,
    USERS,
    ClusterView,
    RbdSite,
    assert_store_matches_cluster,
    harness,
    record_timing,
    timed,
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    report_timings(terminalreporter, "RBD timings", TIMINGS)


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A running cluster for the whole session; stopped even when tests fail."""
    missing = [
        t for t in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "rbd") if not shutil.which(t)
    ]
    if missing:
        pytest.fail(f"Ceph is not installed ({', '.join(missing)} missing); run 'make ceph-deps'")
    cluster = harness.CephCluster(tmp_path_factory.mktemp("ceph"))
    with cluster:
        record_timing("cluster start (HEALTH_OK, OSD up)", cluster.timings["start"])
        yield cluster
    record_timing("cluster stop", cluster.timings["stop"])


@pytest.fixture(scope="session")
def rbd_site(ceph_cluster: Any) -> Iterator[RbdSite]:
    """The pools and users named in rbd_support, created once per session."""
    with timed("create 3 pools (parallel init)"):
        ceph_cluster.create_pools(POOL, POOL_A, POOL_B)
    view = ClusterView(ceph_cluster.conf)
    site = RbdSite(ceph_cluster, view)
    for user, pools in USERS.items():
        site.keys[user] = ceph_cluster.create_user(user, pools)
    try:
        yield site
    finally:
        view.close()


@pytest.fixture(autouse=True)
def empty_pools(rbd_site: RbdSite) -> Iterator[None]:
    """Each test starts with empty pools, whatever the previous one left behind."""
    for pool in (POOL, POOL_A, POOL_B):
        rbd_site.view.purge(pool)
    yield


@pytest.fixture
def view(rbd_site: RbdSite) -> ClusterView:
    return rbd_site.view


@pytest.fixture
def store_matches_cluster(view: ClusterView) -> Any:
    """``check(backend, pool)``: see ``assert_store_matches_cluster``."""

    def check(backend: storage.Backend, pool: str) -> None:
        assert_store_matches_cluster(view, backend.name, pool)

    return check
