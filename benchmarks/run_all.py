"""`make bench`: every benchmark, on the working tree and on a baseline, in ONE JSON document.

Each bench script runs as a subprocess (it prints one JSON line). The baseline is a
``git worktree`` of a baseline commit in a temporary directory, run by the same
interpreter with ``PYTHONPATH`` at the worktree (so ``import csi_driver`` and the
plugin processes resolve there) and the git-ignored generated protobuf modules copied
in. Baseline: ``BENCH_BASELINE`` (any git rev) when set, else the merge-base of HEAD
with ``origin/main`` when that ref exists, else none (``BENCH_BASELINE=none`` also
turns it off). A script the baseline does not have runs from this tree against the
baseline's code (``script_from`` in its result). Current and
baseline runs alternate, several rounds for the cheap scripts, so both see the same
machine load; ``samples`` holds each metric's value per round and ``ratios`` the
current / baseline ratio of their medians: on a noisy machine read those, not absolutes.

The document goes to stdout and to ``bench-results/bench-<date>.json`` and
``bench-results/latest.json``. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench-results"
#: Generated, git-ignored: a worktree has none of them.
GENERATED = ("csi_driver/csi_pb", "csi_driver/kubelet/registration_pb")


@dataclass(frozen=True)
class Bench:
    """A bench script, its arguments, and how many alternating rounds it gets (the metrics
    are the median over rounds); ``later`` are the arguments of the rounds after the
    first (e.g. no fsync counting: counts do not vary, timings do)."""

    script: str
    args: tuple[str, ...] = ()
    rounds: int = 1
    later: tuple[str, ...] | None = None


#: Sizes and rounds keep the whole run to minutes (2.5 to 7 on a shared 2-core machine).
BENCHES: dict[str, Bench] = {
    "serialization": Bench("benchmarks/serialization.py"),
    "list_volumes": Bench("benchmarks/list_volumes.py", rounds=2),
    "fsyncs": Bench("benchmarks/fsyncs.py", ("--rounds", "10", "--runs", "1"), rounds=5,
                    later=("--rounds", "0", "--runs", "1", "--clients", "0")),
    "startup": Bench("benchmarks/startup.py", ("--runs", "3"), rounds=2),
    "rpc_latency": Bench("benchmarks/rpc_latency.py", rounds=3),
}  # fmt: skip

#: Metrics compared as current / baseline: name -> path into a bench's JSON.
METRICS: dict[str, tuple[str, ...]] = {
    "serialization.dumps_cold_10000_s": ("serialization", "results", "10000", "dumps_cold_s"),
    "serialization.load_10000_s": ("serialization", "results", "10000", "load_s"),
    "list_volumes.page_ms_p50_1000": ("list_volumes", "results", "0", "page_ms_p50"),
    "list_volumes.page_ms_p50_10000": ("list_volumes", "results", "1", "page_ms_p50"),
    "fsyncs.pair_ms_p50": ("fsyncs", "timing", "pair_ms_p50"),
    "fsyncs.CreateVolume": ("fsyncs", "rpcs", "CreateVolume", "fsyncs"),
    "fsyncs.DeleteVolume": ("fsyncs", "rpcs", "DeleteVolume", "fsyncs"),
    "fsyncs.wal_per_pair_8": ("fsyncs", "concurrent", "wal_fsyncs_per_pair"),
    "startup.controller_ready_s": ("startup", "controller", "median", "ready_s"),
    "startup.controller_rss_mib": ("startup", "controller", "median", "rss_ready_mib"),
    "startup.all_ready_s": ("startup", "all", "median", "ready_s"),
    "startup.all_rss_mib": ("startup", "all", "median", "rss_ready_mib"),
    "startup.node_ready_s": ("startup", "node", "median", "ready_s"),
    "startup.node_rss_mib": ("startup", "node", "median", "rss_ready_mib"),
    "rpc_latency.empty_call_ms_p50": ("rpc_latency", "empty_call_ms", "p50"),
    "rpc_latency.pair_ms_p50": ("rpc_latency", "sequential", "pair_ms", "p50"),
    "rpc_latency.pair_ms_p99": ("rpc_latency", "sequential", "pair_ms", "p99"),
    "rpc_latency.create_ms_p50": ("rpc_latency", "sequential", "create_ms", "p50"),
    "rpc_latency.delete_ms_p50": ("rpc_latency", "sequential", "delete_ms", "p50"),
    "rpc_latency.pairs_per_s_8": ("rpc_latency", "concurrent", "0", "pairs_per_s"),
    "rpc_latency.pair_ms_p50_8": ("rpc_latency", "concurrent", "0", "pair_ms", "p50"),
    "rpc_latency.pair_ms_p99_8": ("rpc_latency", "concurrent", "0", "pair_ms", "p99"),
    "rpc_latency.pairs_per_s_32": ("rpc_latency", "concurrent", "1", "pairs_per_s"),
    "rpc_latency.pair_ms_p50_32": ("rpc_latency", "concurrent", "1", "pair_ms", "p50"),
    "rpc_latency.pair_ms_p99_32": ("rpc_latency", "concurrent", "1", "pair_ms", "p99"),
    "rpc_latency.rss_idle_mib": ("rpc_latency", "rss_idle_mib"),
    "rpc_latency.rss_volumes_mib": ("rpc_latency", "rss_volumes_mib"),
}


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def baseline_rev() -> str | None:
    """The commit to compare with (see the module docstring), or None."""
    chosen = os.environ.get("BENCH_BASELINE", "")
    if chosen.lower() == "none":
        return None
    if chosen:
        return _git("rev-parse", "--verify", chosen + "^{commit}")
    try:
        _git("rev-parse", "--verify", "origin/main^{commit}")
    except subprocess.CalledProcessError:
        return None
    return _git("merge-base", "HEAD", "origin/main")


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """A detached worktree of ``rev`` with this tree's generated modules, removed after."""
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as parent:
        tree = Path(parent) / "tree"
        _git("worktree", "add", "--detach", "--quiet", str(tree), rev)
        try:
            for generated in GENERATED:
                if (REPO / generated).is_dir() and not (tree / generated).exists():
                    shutil.copytree(REPO / generated, tree / generated)
            yield tree
        finally:
            _git("worktree", "remove", "--force", str(tree))


def run_bench(tree: Path, name: str, baseline: bool, first: bool) -> dict[str, Any]:
    """One bench script in a subprocess against ``tree``'s code: its JSON line (with
    ``script_from`` saying whose script ran) or an error. The baseline runs its own
    script, or this tree's when it has none (a benchmark newer than the baseline: it
    drives the plugin over gRPC, so it measures the baseline's code all the same)."""
    bench = BENCHES[name]
    script = tree / bench.script
    script_from = "baseline" if baseline else "current"
    if not script.exists():
        script, script_from = REPO / bench.script, "current"
    args = bench.args if first or bench.later is None else bench.later
    env = dict(os.environ)
    # Run in ``tree``: ``python -m csi_driver.cli`` (the plugins the scripts start) puts
    # the working directory first on sys.path, before PYTHONPATH.
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    label = "baseline" if baseline else "current"
    print(f"bench: {name} ({label})...", file=sys.stderr, flush=True)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(script), *args], cwd=tree, env=env, capture_output=True, text=True
    )
    seconds = round(time.monotonic() - started, 1)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}", "stderr": done.stderr[-3000:],
                "bench_seconds": seconds}  # fmt: skip
    result = json.loads(lines[-1])
    result["bench_seconds"] = seconds
    result["script_from"] = script_from
    return result


def _lookup(results: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = results
    for key in path:
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def samples(rounds: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each metric's value in each round (a round: {bench name: its JSON})."""
    out: dict[str, list[float]] = {}
    for metric, path in METRICS.items():
        values = [v for r in rounds if (v := _lookup(r, path)) is not None]
        if values:
            out[metric] = values
    return out


def ratios(current: dict[str, list[float]], baseline: dict[str, list[float]]) -> dict[str, float]:
    """current / baseline of each metric's median over its rounds."""
    out: dict[str, float] = {}
    for metric, values in current.items():
        then = statistics.median(baseline.get(metric) or [0])
        if then:
            out[metric] = round(statistics.median(values) / then, 3)
    return out


def _machine() -> dict[str, Any]:
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return {"cpus": os.cpu_count(), "mem_mib": pages * page_size // 2**20,
            "kernel": platform.release(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def _commit() -> str:
    commit = _git("rev-parse", "HEAD")
    return commit + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated bench names (default: all)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = set(names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench(es): {sorted(unknown)}; known: {list(BENCHES)}")
    date = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    rev = baseline_rev()
    document: dict[str, Any] = {
        "date": date, "machine": _machine(), "commit": _commit(), "baseline": rev,
        "results": {}, "baseline_results": {}, "samples": {}, "ratios": {},
    }  # fmt: skip
    current: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    with worktree(rev) if rev else _no_tree() as tree:
        for name in names:
            for index in range(BENCHES[name].rounds):
                while len(current) <= index:
                    current.append({})
                    baseline.append({})
                # Alternate which goes first, so neither always runs on the warmer machine.
                for is_baseline in (False, True) if index % 2 == 0 else (True, False):
                    if is_baseline and tree is None:
                        continue
                    where = tree if is_baseline and tree else REPO
                    result = run_bench(where, name, is_baseline, first=index == 0)
                    (baseline if is_baseline else current)[index][name] = result
    # Full output of each bench's first round; the metrics of every round.
    document["results"], document["baseline_results"] = current[0], baseline[0]
    document["samples"] = {"current": samples(current), "baseline": samples(baseline)}
    document["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    document["ratios"] = ratios(document["samples"]["current"], document["samples"]["baseline"])
    text = json.dumps(document, indent=1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench-{date}.json").write_text(text + "\n")
    (RESULTS / "latest.json").write_text(text + "\n")
    print(text)


@contextmanager
def _no_tree() -> Iterator[None]:
    yield None


if __name__ == "__main__":
    main()
