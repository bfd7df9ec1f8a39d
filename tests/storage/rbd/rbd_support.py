"""What the RBD tests share: the Ceph harness, a view of the cluster, backend options.

The cluster is ``e2e/ceph/cluster.py``'s, loaded by path (it is a harness that also
runs as a script, not a package). What the cluster holds is read as ``client.admin``
with the rbd bindings (``ClusterView``), independently of the driver under test.
Debian's ``rados``/``rbd`` bindings come from ``make ceph-deps``; without them these
tests fail naming that target instead of skipping, because a skipped proof proves nothing.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from csi_support.harnesses import load_by_path

from csi_driver.storage import runtime

try:
    import rados
    import rbd
except ImportError as exc:  # pragma: no cover - depends on the host
    raise ImportError(
        f"the RBD tests need Debian's rados/rbd bindings in the venv; run 'make ceph-deps' ({exc})"
    ) from exc

RBD_DRIVER = "cinder.volume.drivers.rbd.RBDDriver"
HARNESS = Path(__file__).resolve().parents[3] / "e2e" / "ceph" / "cluster.py"
# Pools and users every test may use; each test starts with these pools empty.
POOL, POOL_A, POOL_B = "volumes", "pool-a", "pool-b"
USERS = {"cinder": (POOL,), "user-a": (POOL_A,), "user-b": (POOL_B,)}
# Seconds per operation, printed at the end of the session (see pytest_terminal_summary).
TIMINGS: dict[str, list[float]] = {}


harness = load_by_path("ceph_test_cluster", HARNESS)


def record_timing(label: str, seconds: float) -> None:
    TIMINGS.setdefault(label, []).append(seconds)


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    """Record how long the block took under ``label``."""
    started = time.monotonic()
    yield
    record_timing(label, time.monotonic() - started)


class ClusterView:
    """What the cluster holds, read as client.admin with the rbd bindings."""

    def __init__(self, conf: Path) -> None:
        self._rados = rados.Rados(conffile=str(conf), rados_id="admin")
        self._rados.connect(timeout=30)

    def close(self) -> None:
        self._rados.shutdown()

    @contextlib.contextmanager
    def _ioctx(self, pool: str) -> Iterator[Any]:
        ioctx = self._rados.open_ioctx(pool)
        try:
            yield ioctx
        finally:
            ioctx.close()

    def images(self, pool: str) -> set[str]:
        """``rbd ls POOL``, including the ``.deleted`` images Cinder leaves behind."""
        with self._ioctx(pool) as ioctx:
            return set(rbd.RBD().list(ioctx))

    def live_images(self, pool: str) -> set[str]:
        return {name for name in self.images(pool) if not name.endswith(".deleted")}

    def snaps(self, pool: str, image: str) -> set[str]:
        """``rbd snap ls POOL/IMAGE``."""
        with self._ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
            return {snap["name"] for snap in img.list_snaps()}

    def size_gib(self, pool: str, image: str) -> float:
        with self._ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
            return img.size() / 1024**3

    def parent(self, pool: str, image: str) -> tuple[str, str, str] | None:
        """(pool, image, snapshot) this image was cloned from, or None."""
        with self._ioctx(pool) as ioctx, rbd.Image(ioctx, image, read_only=True) as img:
            try:
                return tuple(img.parent_info())  # type: ignore[return-value]
            except rbd.ImageNotFound:
                return None

    def pool_exists(self, pool: str) -> bool:
        return bool(self._rados.pool_exists(pool))

    def purge(self, pool: str) -> None:
        """Remove every image and snapshot of ``pool``, and its trash.

        Parents refuse to go while clones exist, so this goes round until the clones
        are gone (a snapshot with v2 clones moves to the snapshot trash and vanishes
        with its last clone).
        """
        if not self.pool_exists(pool):
            return
        with self._ioctx(pool) as ioctx:
            for _ in range(10):
                names = rbd.RBD().list(ioctx)
                if not names:
                    break
                for name in names:
                    with contextlib.suppress(rbd.Error):
                        with rbd.Image(ioctx, name) as img:
                            for snap in img.list_snaps():
                                if snap.get("namespace", 0) != rbd.RBD_SNAP_NAMESPACE_TYPE_USER:
                                    continue
                                if img.is_protected_snap(snap["name"]):
                                    img.unprotect_snap(snap["name"])
                                img.remove_snap(snap["name"])
                        rbd.RBD().remove(ioctx, name)
            for entry in rbd.RBD().trash_list(ioctx):
                rbd.RBD().trash_remove(ioctx, entry["id"], force=True)
            left = rbd.RBD().list(ioctx)
        assert not left, f"could not purge pool {pool}: {left}"


class RbdSite:
    """The session's cluster, its pools and users, and RBD backend options for them."""

    def __init__(self, cluster: Any, view: ClusterView) -> None:
        self.cluster = cluster
        self.view = view
        self.conf = str(cluster.conf)
        self.keys: dict[str, str] = {}

    def options(self, pool: str = POOL, user: str = "cinder", **extra: Any) -> dict[str, Any]:
        """``storage.Backend`` options for the RBD driver on this cluster."""
        return {
            "volume_driver": RBD_DRIVER,
            "rbd_pool": pool,
            "rbd_user": user,
            "rbd_ceph_conf": self.conf,
            "rbd_secret_uuid": str(uuid.uuid4()),
            "rados_connect_timeout": 10,
            **extra,
        }


def assert_store_matches_cluster(view: ClusterView, backend: str, pool: str) -> None:
    """The store's volumes and snapshots of ``backend`` are exactly the images and
    snapshots in ``pool`` (``.deleted`` images and ``.clone_snap`` snapshots are the
    driver's own bookkeeping, checked where they matter)."""
    store = runtime.store()
    volumes = store.get_volumes(backend=backend)
    images = {f"volume-{v['id']}": v for v in volumes}
    assert view.live_images(pool) == set(images), "store volumes != rbd ls"
    for image, record in images.items():
        assert record["status"] in ("available", "in-use"), record
        assert view.size_gib(pool, image) == record["size"], image
        snapshots = {f"snapshot-{s['id']}" for s in store.get_snapshots(volume_id=record["id"])}
        clone_snaps = {
            f"volume-{v['id']}.clone_snap"
            for v in volumes
            if v.get("source_volume_id") == record["id"]
        }
        on_cluster = view.snaps(pool, image)
        assert snapshots | clone_snaps <= on_cluster, f"rbd snap ls {image}"
        extra = on_cluster - snapshots - clone_snaps
        assert all(name.endswith(".clone_snap") for name in extra), f"rbd snap ls {image}: {extra}"
