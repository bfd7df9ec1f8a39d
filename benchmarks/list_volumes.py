"""ListVolumes paging benchmark: the cost of one page at 1 000 and at 10 000 volumes.

A real plugin process (controller mode, embedded FileDriver backend, SQLite store)
is asked for every page of ListVolumes, 500 entries a page, over gRPC. Its store is
filled beforehand with volume records (a third with a connection, as the library
writes them), so the measurement is the listing, not volume creation.

Goal (issue 10): a page at 10 000 volumes costs within 2x of a page at 1 000, i.e.
listing is O(page), not O(all). Prints ONE JSON line; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from csi_support.plugin import Stubs, file_backend, running, write_config  # noqa: E402
from csi_support.stores import fill, realistic_records  # noqa: E402

from csi_driver.csi_pb import csi_pb2  # noqa: E402
from csi_driver.storage.persistence.sqlite import SQLiteStore  # noqa: E402

PAGE = 500


def _measure(count: int, samples: int) -> dict[str, Any]:
    """Page times over full listings (the first one warms caches and is not counted),
    repeated until at least ``samples`` pages were timed."""
    with tempfile.TemporaryDirectory(prefix="bench-list-") as work:
        directory = Path(work)
        config = write_config(directory, [file_backend(directory / "volumes", name="embedded")])
        store = SQLiteStore(path=directory / "meta.sqlite")
        volumes, _, connections = realistic_records(count, backend="embedded")
        fill(store, (volumes, [], connections), batch=500)
        store.close()
        with running(config, "controller", directory) as plugin:
            stubs = Stubs(plugin)
            page_seconds: list[float] = []
            full_seconds: list[float] = []
            listed, rounds = 0, 0
            while len(page_seconds) < samples or rounds < 2:
                if rounds == 1:  # the warm-up round is over
                    page_seconds.clear()
                    full_seconds.clear()
                rounds += 1
                token, listed = "", 0
                started = time.perf_counter()
                while True:
                    t0 = time.perf_counter()
                    answer = stubs.controller.ListVolumes(
                        csi_pb2.ListVolumesRequest(max_entries=PAGE, starting_token=token),
                        timeout=120,
                    )
                    page_seconds.append(time.perf_counter() - t0)
                    listed += len(answer.entries)
                    token = answer.next_token
                    if not token:
                        break
                full_seconds.append(time.perf_counter() - started)
            stubs.close()
    return {
        "volumes": count,
        "listed": listed,
        "pages": -(-count // PAGE),
        "pages_timed": len(page_seconds),
        "page_ms_p50": round(statistics.median(page_seconds) * 1000, 2),
        "page_ms_max": round(max(page_seconds) * 1000, 2),
        "full_listing_s": round(min(full_seconds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--counts", default="1000,10000")
    parser.add_argument("--samples", type=int, default=40, help="pages timed per count")
    args = parser.parse_args()
    results = [_measure(int(n), args.samples) for n in args.counts.split(",")]
    small, large = results[0], results[-1]
    ratio = round(large["page_ms_p50"] / small["page_ms_p50"], 2)
    print(json.dumps({
        "benchmark": "list_volumes_paging", "page_size": PAGE, "store": "sqlite",
        "results": results, "page_cost_ratio": ratio, "goal_ratio_max": 2.0,
        "goal_met": ratio <= 2.0,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
