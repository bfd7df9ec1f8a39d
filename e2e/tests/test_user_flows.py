"""What a user does with the chart, in order, on a real single-node cluster.

Install, claim, mount, write, read back in another pod, raw block, snapshot, restore,
clone, online expansion, a controller pod killed mid-flow, Ceph RBD through Cinder's
RBDDriver, clean-up and uninstall. Each step asserts on Kubernetes objects, on what a
pod printed, or on the backend (the FileDriver's files, `rbd ls`).

The steps share one release and run in file order; a failing step leaves the ones
after it to fail on their own evidence.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

from conftest import RELEASE, RELEASE_NAMESPACE
from kube import Kubectl, Tool, pod_phase
from objects import (
    GIB,
    claim,
    claim_source,
    pod,
    quantity_bytes,
    snapshot,
    snapshot_source,
)

DRIVER = "csi-driver.cinder"
FILE_CLASS = "csi-driver-file"
XFS_CLASS = "csi-driver-file-xfs"
CEPH_CLASS = "csi-driver-ceph"
TOKEN = f"written-{uuid.uuid4().hex[:12]}"
LATER = f"later-{uuid.uuid4().hex[:12]}"
RECORD_KINDS = ("csivolumes", "csisnapshots", "csiconnections")

flow: dict[str, Any] = {}


# -- small waits ------------------------------------------------------------------------
def bound(kubectl: Kubectl, name: str, timeout: float = 180) -> dict[str, Any]:
    """Wait until the claim is Bound; its PV."""

    def check() -> Any:
        pvc = kubectl.get("pvc", name)
        return pvc if pvc and pvc.get("status", {}).get("phase") == "Bound" else None

    pvc = kubectl.wait_for(
        f"PVC {name} Bound",
        check,
        timeout=timeout,
        explain=lambda: f"events: {kubectl.events('PersistentVolumeClaim', name)}",
    )
    return kubectl.get("pv", pvc["spec"]["volumeName"], namespaced=False)


def run_pod(kubectl: Kubectl, name: str, claim_name: str, script: str, block: bool = False) -> str:
    """Run a one-shot pod to completion; its output. The pod is deleted afterwards."""
    kubectl.apply(pod(name, claim_name, script, block=block))
    phase = kubectl.wait_for(
        f"pod {name} finished",
        lambda: pod_phase(kubectl, name) in ("Succeeded", "Failed"),
        timeout=240,
        explain=lambda: f"phase {pod_phase(kubectl, name)}; events: {kubectl.events('Pod', name)}",
    )
    output = kubectl.logs(name)
    phase = pod_phase(kubectl, name)
    kubectl.delete("pod", name)
    assert phase == "Succeeded", f"pod {name} ended {phase}: {output.strip()}"
    return output


def snapshot_ready(kubectl: Kubectl, name: str, timeout: float = 180) -> dict[str, Any]:
    def check() -> Any:
        snap = kubectl.get("volumesnapshot", name)
        return snap if snap and snap.get("status", {}).get("readyToUse") else None

    return kubectl.wait_for(
        f"VolumeSnapshot {name} readyToUse",
        check,
        timeout=timeout,
        explain=lambda: (
            f"status {json.dumps((kubectl.get('volumesnapshot', name) or {}).get('status'))}; "
            f"events: {kubectl.events('VolumeSnapshot', name)}"
        ),
    )


def backend_files(host_dir: Path) -> dict[str, int]:
    """The FileDriver's volume and snapshot files: name -> apparent size."""
    return {p.name: p.stat().st_size for p in host_dir.iterdir() if not p.name.startswith(".")}


def records(kubectl: Kubectl) -> dict[str, list[str]]:
    """The plugin's metadata records (its CRD objects) in the release namespace."""
    return {kind: kubectl.names(kind, namespace=RELEASE_NAMESPACE) for kind in RECORD_KINDS}


# -- the flow ---------------------------------------------------------------------------
def test_install_brings_up_controller_and_node(
    release: dict[str, Any], kubectl: Kubectl, cluster: dict[str, str]
) -> None:
    for kind, name in (
        ("deployment", f"{RELEASE}-controller"),
        ("deployment", f"{RELEASE}-snapshot-controller"),
    ):
        obj = kubectl.get(kind, name, namespace=RELEASE_NAMESPACE)
        status = obj["status"]
        assert status.get("readyReplicas") == obj["spec"]["replicas"], f"{kind} {name}: {status}"
    daemonset = kubectl.get("daemonset", f"{RELEASE}-node", namespace=RELEASE_NAMESPACE)["status"]
    assert daemonset.get("numberReady") == daemonset.get("desiredNumberScheduled") == 1, daemonset

    # The node pod turns Ready only once kubelet confirmed the registration (its
    # /readyz), and the install waited for it (README): no waiting here.
    node = cluster["NODE_NAME"]
    csinode = kubectl.get("csinode", node, namespaced=False) or {}
    assert DRIVER in [d["name"] for d in csinode.get("spec", {}).get("drivers") or []], csinode
    print(f"helm install --wait took {release['installed_in']:.1f} s")


def test_claim_is_bound_with_its_size(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(claim("data", FILE_CLASS, "1Gi"))
    pv = bound(kubectl, "data")
    assert quantity_bytes(pv["spec"]["capacity"]["storage"]) == GIB
    handle = pv["spec"]["csi"]["volumeHandle"]
    files = backend_files(release["host_dir"])
    assert files.get(f"volume-{handle}") == GIB, f"backend files: {files}"
    flow["data_handle"] = handle


def test_pod_writes_and_a_new_pod_reads_it_back(release: dict[str, Any], kubectl: Kubectl) -> None:
    script = f"echo {TOKEN} > /data/msg && sync && cat /data/msg"
    written = run_pod(kubectl, "writer", "data", script)
    assert written.strip() == TOKEN
    read = run_pod(kubectl, "reader", "data", "cat /data/msg; df -k /data | tail -1")
    lines = read.strip().splitlines()
    assert lines[0] == TOKEN, f"second pod read {read!r}"


def test_raw_block_claim(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(claim("raw", FILE_CLASS, "1Gi", block=True))
    bound(kubectl, "raw")
    marker = f"block-{TOKEN}"
    run_pod(
        kubectl,
        "block-writer",
        "raw",
        f"printf '{marker}' | dd of=/dev/xvda bs=512 count=1 conv=sync,fsync && echo ok",
        block=True,
    )
    out = run_pod(
        kubectl,
        "block-reader",
        "raw",
        f"dd if=/dev/xvda bs=512 count=1 2>/dev/null | head -c {len(marker)}",
        block=True,
    )
    assert out == marker, f"block device read back {out!r}"


def test_snapshot_becomes_ready(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(snapshot("snap", "data"))
    snap = snapshot_ready(kubectl, "snap")
    assert quantity_bytes(snap["status"]["restoreSize"]) >= GIB
    content = kubectl.get(
        "volumesnapshotcontent", snap["status"]["boundVolumeSnapshotContentName"], namespaced=False
    )
    handle = content["status"]["snapshotHandle"]
    assert f"snapshot-{handle}" in backend_files(release["host_dir"])
    # The volume changes after the snapshot: a restore must show the old data.
    run_pod(kubectl, "overwriter", "data", f"echo {LATER} > /data/msg && sync")


def test_claim_restored_from_the_snapshot(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(claim("restored", FILE_CLASS, "1Gi", source=snapshot_source("snap")))
    bound(kubectl, "restored")
    assert run_pod(kubectl, "restored-reader", "restored", "cat /data/msg").strip() == TOKEN


def test_claim_cloned_from_a_claim(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(claim("clone", FILE_CLASS, "1Gi", source=claim_source("data")))
    bound(kubectl, "clone")
    assert run_pod(kubectl, "clone-reader", "clone", "cat /data/msg").strip() == LATER


def test_claim_expanded_while_mounted(release: dict[str, Any], kubectl: Kubectl) -> None:
    kubectl.apply(claim("grow", XFS_CLASS, "1Gi"))
    pv = bound(kubectl, "grow")
    kubectl.apply(pod("grower", "grow", "echo ready; sleep 3600"))
    kubectl.wait_for(
        "pod grower Running",
        lambda: pod_phase(kubectl, "grower") == "Running",
        timeout=240,
        explain=lambda: kubectl.events("Pod", "grower"),
    )

    def size_kib() -> int:
        return int(kubectl.exec("grower", "df", "-k", "/data").splitlines()[-1].split()[1])

    before = size_kib()
    kubectl.patch("pvc", "grow", {"spec": {"resources": {"requests": {"storage": "2Gi"}}}})

    def grown() -> bool:
        pvc = kubectl.get("pvc", "grow")
        capacity = pvc.get("status", {}).get("capacity", {}).get("storage", "0")
        return quantity_bytes(capacity) == 2 * GIB

    kubectl.wait_for(
        "PVC grow capacity 2Gi",
        grown,
        timeout=180,
        explain=lambda: kubectl.events("PersistentVolumeClaim", "grow"),
    )
    after = kubectl.wait_for(
        "the pod sees a bigger filesystem",
        lambda: (size := size_kib()) > before + 512 * 1024 and size,
        timeout=120,
    )
    handle = pv["spec"]["csi"]["volumeHandle"]
    assert backend_files(release["host_dir"])[f"volume-{handle}"] == 2 * GIB
    assert after > 1.5 * 1024 * 1024, f"filesystem {before} KiB -> {after} KiB"
    kubectl.delete("pod", "grower")


def test_controller_pod_killed_mid_flow(release: dict[str, Any], kubectl: Kubectl) -> None:
    lease = DRIVER.replace(".", "-")
    spec = (kubectl.get("lease", lease, namespace=RELEASE_NAMESPACE) or {}).get("spec", {})
    holder = spec.get("holderIdentity")
    assert holder, f"no provisioner lease {lease} holder"
    kubectl.apply(claim("survivor", FILE_CLASS, "1Gi"), snapshot("survivor-snap", "data"))
    kubectl.run("delete", "pod", holder, "-n", RELEASE_NAMESPACE, "--wait=false")
    bound(kubectl, "survivor", timeout=300)
    snapshot_ready(kubectl, "survivor-snap", timeout=300)

    def controller_back() -> bool:
        dep = kubectl.get("deployment", f"{RELEASE}-controller", namespace=RELEASE_NAMESPACE)
        status = dep["status"]
        return status.get("readyReplicas") == 2 and status.get("updatedReplicas") == 2

    kubectl.wait_for("controller Deployment 2/2 ready again", controller_back, timeout=240)
    # Exactly one backend file per volume and per snapshot: nothing created twice.
    pvs = [
        pv
        for pv in kubectl.get("pv", namespaced=False)
        if pv["spec"].get("csi", {}).get("driver") == DRIVER
        and pv["spec"]["storageClassName"] != CEPH_CLASS
    ]
    contents = kubectl.get("volumesnapshotcontent", namespaced=False)
    files = backend_files(release["host_dir"])
    assert sorted(f for f in files if f.startswith("volume-")) == sorted(
        f"volume-{pv['spec']['csi']['volumeHandle']}" for pv in pvs
    )
    assert sorted(f for f in files if f.startswith("snapshot-")) == sorted(
        f"snapshot-{c['status']['snapshotHandle']}" for c in contents
    )


def test_ceph_rbd_class_controller_side(
    release: dict[str, Any], kubectl: Kubectl, ceph: Any
) -> None:
    """Cinder's RBDDriver from the controller pod: provision, snapshot, restore, clone,
    delete (no pod: this host's kernel has no krbd; node attach is proven in the VM)."""

    def images() -> list[str]:
        return ceph.rbd("ls", "kube").split()

    kubectl.apply(claim("rbd", CEPH_CLASS, "1Gi"))
    handle = bound(kubectl, "rbd")["spec"]["csi"]["volumeHandle"]
    assert f"volume-{handle}" in images()
    kubectl.apply(snapshot("rbd-snap", "rbd"))
    content = kubectl.get(
        "volumesnapshotcontent",
        snapshot_ready(kubectl, "rbd-snap")["status"]["boundVolumeSnapshotContentName"],
        namespaced=False,
    )
    snap_handle = content["status"]["snapshotHandle"]
    snaps = ceph.rbd("snap", "ls", f"kube/volume-{handle}")
    assert f"snapshot-{snap_handle}" in snaps, snaps
    kubectl.apply(
        claim("rbd-restored", CEPH_CLASS, "1Gi", source=snapshot_source("rbd-snap")),
        claim("rbd-clone", CEPH_CLASS, "1Gi", source=claim_source("rbd")),
    )
    restored = bound(kubectl, "rbd-restored")["spec"]["csi"]["volumeHandle"]
    cloned = bound(kubectl, "rbd-clone")["spec"]["csi"]["volumeHandle"]
    assert {f"volume-{restored}", f"volume-{cloned}"} <= set(images())
    kubectl.delete("pvc", "rbd-restored", "rbd-clone")
    kubectl.delete("volumesnapshot", "rbd-snap")
    kubectl.delete("pvc", "rbd")
    # Upstream RBDDriver keeps a volume that had a COW clone as "<name>.deleted" (its
    # .clone_snap survives the clone's delete; tests/storage/rbd/test_lifecycle.py shows
    # the same without Kubernetes): nothing else may remain.
    kubectl.wait_for(
        "every RBD image deleted",
        lambda: set(images()) <= {f"volume-{handle}.deleted"},
        timeout=180,
        explain=lambda: f"rbd ls: {images()}",
    )


def test_deleting_everything_removes_backend_files_and_records(
    release: dict[str, Any], kubectl: Kubectl
) -> None:
    kubectl.run("delete", "pods", "--all", "-n", kubectl.namespace, "--wait=true")
    kubectl.run("delete", "volumesnapshots", "--all", "-n", kubectl.namespace, "--wait=true")
    kubectl.run("delete", "pvc", "--all", "-n", kubectl.namespace, "--wait=true")

    def ours(kind: str) -> list[str]:
        items = kubectl.get(kind, namespaced=False) or []
        return [
            i["metadata"]["name"]
            for i in items
            if (i["spec"].get("csi") or {}).get("driver", DRIVER) == DRIVER
            and i.get("spec", {}).get("driver", DRIVER) == DRIVER
        ]

    for kind in ("pv", "volumesnapshotcontent", "volumeattachment"):
        kubectl.wait_for(
            f"no {kind} of {DRIVER} left",
            lambda k=kind: not ours(k),
            timeout=240,
            explain=lambda k=kind: f"left: {ours(k)}",
        )
    host_dir = release["host_dir"]
    kubectl.wait_for(
        "backend directory empty",
        lambda: not backend_files(host_dir),
        timeout=60,
        explain=lambda: f"left: {backend_files(host_dir)}",
    )
    left = records(kubectl)
    assert not any(left.values()), f"metadata records left: {left}"
    node_state = release["node_state"]
    leftovers = [p.name for p in node_state.iterdir()] if node_state.exists() else []
    assert not leftovers, f"node stage records left: {leftovers}"


def test_uninstall_leaves_nothing(
    release: dict[str, Any], kubectl: Kubectl, helm: Tool, cluster: dict[str, str]
) -> None:
    helm.run("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "3m")
    release["uninstalled"] = True
    instance = f"app.kubernetes.io/instance={RELEASE}"

    def remaining() -> list[str]:
        kinds = "all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases"
        names = kubectl.names(kinds, namespace=RELEASE_NAMESPACE, selector=instance)
        cluster_kinds = "clusterroles,clusterrolebindings,csidrivers,storageclasses"
        names += kubectl.names(cluster_kinds, namespaced=False, selector=instance)
        crds = kubectl.names("crd", namespaced=False)
        names += [c for c in crds if "metadata.csi-driver.dev" in c]
        return names

    def release_pods() -> list[str]:
        return kubectl.names("pods", namespace=RELEASE_NAMESPACE)

    kubectl.wait_for(
        "nothing of the release left",
        lambda: not remaining(),
        timeout=120,
        explain=lambda: f"left: {remaining()}",
    )
    kubectl.wait_for(
        "release pods gone",
        lambda: not release_pods(),
        timeout=120,
        explain=lambda: f"left: {release_pods()}",
    )
    # Helm never deletes a chart's crds/ (the VolumeSnapshot CRDs, shared by every CSI
    # driver's snapshots): the README's last step removes them.
    snapshot_crds = [c for c in kubectl.names("crd", namespaced=False) if "snapshot.storage" in c]
    assert len(snapshot_crds) == 3, snapshot_crds
    chart_crds = Path(__file__).resolve().parents[2] / "charts" / "csi-driver" / "crds"
    kubectl.run("delete", "-f", str(chart_crds), "--wait=true")
    left = [c for c in kubectl.names("crd", namespaced=False) if "snapshot.storage" in c]
    assert not left, f"snapshot CRDs left: {left}"
    node = cluster["NODE_NAME"]

    def unregistered() -> bool:
        csinode = kubectl.get("csinode", node, namespaced=False) or {}
        return not any(d["name"] == DRIVER for d in csinode.get("spec", {}).get("drivers") or [])

    kubectl.wait_for(f"CSINode {node} no longer lists {DRIVER}", unregistered, timeout=120)
    kubelet = Path(cluster["KUBELET_DIR"])
    sockets = [str(p) for p in (kubelet / "plugins_registry").glob("*")]
    sockets += [str(p) for p in (kubelet / "plugins").rglob("*.sock")]
    assert not sockets, f"plugin sockets left under the kubelet dir: {sockets}"
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith(str(kubelet) + "/")
    ]
    assert not mounts, f"mounts left under the kubelet dir: {mounts}"
    loops = subprocess.run(["losetup", "-J"], capture_output=True, text=True, check=False).stdout
    host_dir = str(release["host_dir"])
    attached = [
        d["name"]
        for d in (json.loads(loops)["loopdevices"] if loops.strip() else [])
        if (d.get("back-file") or "").startswith(host_dir)
    ]
    assert not attached, f"loop devices left on backend files: {attached}"
