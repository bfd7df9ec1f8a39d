"""Two RBD backends in one process (two pools, two users, two secret uuids) keep
their own configuration: each creates in its own pool, and each one's user and
secret uuid, and nobody else's, show up in its connection info and stats.

Each user has caps on its own pool only, so a leaked pool or user would also make
the other backend's operations fail on the cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rbd_support import POOL_A, POOL_B, ClusterView, RbdSite
from samples import NODE_A

from csi_driver import storage

MakeBackend = Callable[..., storage.Backend]
Check = Callable[[storage.Backend, str], None]

UUID_A = "aaaaaaaa-0000-4000-8000-00000000000a"
UUID_B = "bbbbbbbb-0000-4000-8000-00000000000b"


def test_two_rbd_backends_do_not_share_configuration(
    tmp_path: Path,
    make_backend: MakeBackend,
    rbd_site: RbdSite,
    view: ClusterView,
    store_matches_cluster: Check,
) -> None:
    storage.setup(
        persistence_config={"storage": "sqlite", "path": f"{tmp_path}/meta.db"},
        file_locks_path=f"{tmp_path}/locks",
    )
    a = make_backend("rbd-a", **rbd_site.options(POOL_A, "user-a", rbd_secret_uuid=UUID_A))
    b = make_backend("rbd-b", **rbd_site.options(POOL_B, "user-b", rbd_secret_uuid=UUID_B))

    # Interleaved, so that any value one driver installs is in place for the other.
    va = a.create_volume(size=1, name="in-a")
    vb = b.create_volume(size=2, name="in-b")
    sa = va.create_snapshot()
    cb = vb.clone()
    assert view.live_images(POOL_A) == {f"volume-{va.id}"}
    assert view.live_images(POOL_B) == {f"volume-{vb.id}", f"volume-{cb.id}"}
    assert view.snaps(POOL_A, f"volume-{va.id}") == {f"snapshot-{sa.id}"}
    store_matches_cluster(a, POOL_A)
    store_matches_cluster(b, POOL_B)

    conn_a, conn_b = va.connect(NODE_A), vb.connect(NODE_A)
    data_a, data_b = conn_a.connection_info["data"], conn_b.connection_info["data"]
    assert data_a["name"] == f"{POOL_A}/volume-{va.id}"
    assert data_b["name"] == f"{POOL_B}/volume-{vb.id}"
    assert (data_a["auth_username"], data_a["secret_uuid"]) == ("user-a", UUID_A)
    assert (data_b["auth_username"], data_b["secret_uuid"]) == ("user-b", UUID_B)

    stats_a, stats_b = a.stats(refresh=True), b.stats(refresh=True)
    assert stats_a["location_info"].endswith(f":user-a:{POOL_A}")
    assert stats_b["location_info"].endswith(f":user-b:{POOL_B}")
    assert (stats_a["volume_backend_name"], stats_b["volume_backend_name"]) == ("rbd-a", "rbd-b")
    assert (a.config["rbd_pool"], a.config["rbd_user"]) == (POOL_A, "user-a")
    assert (b.config["rbd_pool"], b.config["rbd_user"]) == (POOL_B, "user-b")

    # Closing one leaves the other working with its own settings.
    conn_a.disconnect()
    sa.delete()
    va.delete()
    a.close()
    vb2 = b.create_volume(size=1)
    assert f"volume-{vb2.id}" in view.live_images(POOL_B)
    assert view.live_images(POOL_A) == set()
    assert b.get_volume(vb.id).connections[0].connection_info["data"]["secret_uuid"] == UUID_B
    conn_b.disconnect()
    for volume in (cb, vb, vb2):
        volume.delete()
    store_matches_cluster(b, POOL_B)
    assert view.live_images(POOL_B) == set()
