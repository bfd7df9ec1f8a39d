"""The Kubernetes objects a user writes: claims, snapshots and the pods that use them.

Why: the flows read as a sequence of user actions; the YAML they apply lives here once.
"""

from __future__ import annotations

import os
from typing import Any

GIB = 1024**3
#: busybox built by `make images` from Debian's busybox-static (no registry).
BUSYBOX = os.environ.get("BUSYBOX_IMAGE", "localhost/busybox:1.35")


def claim(
    name: str,
    storage_class: str,
    size: str = "1Gi",
    *,
    block: bool = False,
    source: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": storage_class,
        "resources": {"requests": {"storage": size}},
        "volumeMode": "Block" if block else "Filesystem",
    }
    if source:
        spec["dataSource"] = source
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": spec,
    }


def snapshot_source(name: str) -> dict[str, str]:
    return {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": name}


def claim_source(name: str) -> dict[str, str]:
    return {"kind": "PersistentVolumeClaim", "name": name}


def snapshot(name: str, claim_name: str, snapshot_class: str = "csi-driver") -> dict[str, Any]:
    return {
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": {"name": name},
        "spec": {
            "volumeSnapshotClassName": snapshot_class,
            "source": {"persistentVolumeClaimName": claim_name},
        },
    }


def pod(name: str, claim_name: str, script: str, *, block: bool = False) -> dict[str, Any]:
    """A busybox pod running ``script`` with the claim at /data (or /dev/xvda for a
    block claim); it runs once (restartPolicy Never) unless the script sleeps."""
    container: dict[str, Any] = {
        "name": "main",
        "image": BUSYBOX,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", script],
    }
    if block:
        container["volumeDevices"] = [{"name": "data", "devicePath": "/dev/xvda"}]
    else:
        container["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity ("1Gi", "1073741824", "2G") in bytes."""
    units = {
        "Ki": 1024,
        "Mi": 1024**2,
        "Gi": GIB,
        "Ti": 1024**4,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
        "T": 10**12,
    }
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)
