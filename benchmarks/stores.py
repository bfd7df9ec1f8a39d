"""Metadata store benchmark: every store side by side at 1 000 and 10 000 volumes.

Stores: memory, sqlite (a file in a temporary directory), etcd (Debian's etcd on
loopback) and kubernetes (custom resources on a kube-apiserver v1.37.2 on loopback,
``make kube-binaries``), the servers started here by the test harness
(e2e/cluster/cluster.py) and stopped at the end.

Per store and size: ``create`` (create_unique of one volume record), ``get`` (one
volume by id) and ``list_page`` (500 records) p50 and p99 in milliseconds, and
``full_listing_s`` (every volume, a page of 500 at a time). The store is filled to
the size with realistic volume records (``tests/csi_support/stores.py``) before
measuring; the created samples are deleted again. Prints ONE JSON line; nothing
here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "e2e" / "cluster"))

import cluster  # noqa: E402  (e2e/cluster/cluster.py, the test harness)
from csi_support.kube_store import ensure_crds, new_namespace  # noqa: E402
from csi_support.stores import realistic_records  # noqa: E402

from csi_driver.storage.persistence import MetadataStore, load_store  # noqa: E402
from csi_driver.storage.persistence.base import VOLUME  # noqa: E402

PAGE = 500
FILL_BATCH = 20


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 3), "p99_ms": round(p99 * 1000, 3)}


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _fill(store: MetadataStore, volumes: list[dict]) -> float:
    started = time.perf_counter()
    for start in range(0, len(volumes), FILL_BATCH):
        store.write(volumes=volumes[start : start + FILL_BATCH])
    return time.perf_counter() - started


def _measure(store: MetadataStore, count: int, samples: int) -> dict[str, Any]:
    ids = [r["id"] for r in store.iterate(VOLUME, PAGE)]
    assert len(ids) == count, (len(ids), count)
    creates = []
    for n in range(samples):
        record = {"id": f"bench-new-{count}-{n}", "backend": "lvm", "name": f"bench-{count}-{n}",
                  "size": 1, "status": "creating"}  # fmt: skip
        creates.append(_timed(lambda r=record: store.create_unique(VOLUME, r)))
    for n in range(samples):
        store.delete_volume(f"bench-new-{count}-{n}")
    step = max(1, len(ids) // samples)
    gets = [_timed(lambda i=i: store.get_volumes(volume_id=i)) for i in ids[::step][:samples]]
    pages: list[float] = []
    full: list[float] = []
    while len(pages) < 20 or len(full) < 2:
        token, started = "", time.perf_counter()
        while True:
            t0 = time.perf_counter()
            page = store.list_page(VOLUME, limit=PAGE, token=token)
            pages.append(time.perf_counter() - t0)
            token = page.next_token
            if not token:
                break
        full.append(time.perf_counter() - started)
    return {"create": _ms(creates), "get": _ms(gets), "list_page": _ms(pages),
            "full_listing_s": round(min(full), 3)}  # fmt: skip


@contextmanager
def _servers(work: Path, kube_bin: str | None) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        etcd = stack.enter_context(cluster.Etcd(work / "etcd"))
        kube_etcd = stack.enter_context(cluster.Etcd(work / "kube-etcd"))
        plane = stack.enter_context(cluster.ControlPlane(work / "kube", kube_bin, kube_etcd))
        ensure_crds(plane)
        yield {"etcd": etcd, "kube": plane}


def _configs(work: Path, servers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    plane = servers["kube"]
    return {
        "memory": {"storage": "memory"},
        "sqlite": {"storage": "sqlite", "path": str(work / "bench.sqlite")},
        "etcd": {
            "storage": "etcd",
            "endpoints": [servers["etcd"].endpoint],
            "prefix": "/bench/",
        },
        "kubernetes": {
            "storage": "kubernetes",
            "namespace": new_namespace(plane, "bench"),
            "kubeconfig": plane.kubeconfig,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--stores", default="memory,sqlite,etcd,kubernetes")
    parser.add_argument("--samples", type=int, default=200, help="creates and gets timed")
    parser.add_argument("--kube-bin", default=None)
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.counts.split(","))
    volumes, _, _ = realistic_records(counts[-1])
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as tmp:
        work = Path(tmp)
        with _servers(work, args.kube_bin) as servers:
            configs = _configs(work, servers)
            for name in args.stores.split(","):
                store = load_store(configs[name])
                try:
                    results[name] = {}
                    filled = 0
                    for count in counts:
                        fill_s = _fill(store, volumes[filled:count])
                        rate = (count - filled) / max(fill_s, 1e-9)
                        filled = count
                        results[name][str(count)] = {
                            **_measure(store, count, args.samples),
                            "fill_records_per_s": round(rate),
                        }
                finally:
                    store.close()
    print(json.dumps({"benchmark": "metadata_stores", "page_size": PAGE,
                      "samples": args.samples, "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
