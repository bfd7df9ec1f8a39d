"""The Ceph harness itself: a second cluster started by the script coexists with the
session's on other ports and ``stop`` leaves no daemon behind; a start that times out
fails loudly, with the daemon logs, and leaves no daemon behind either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rbd_support import HARNESS, RbdSite, harness, timed


def daemons_using(conf: Path) -> list[int]:
    """Pids of live processes whose command line names ``conf``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if str(conf).encode() in argv and state != "Z":
            pids.append(int(entry.name))
    return pids


def script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HARNESS), *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_script_cluster_coexists_with_the_session_cluster_and_stops_cleanly(
    rbd_site: RbdSite, tmp_path: Path
) -> None:
    directory = tmp_path / "second"
    conf = directory / "ceph.conf"
    try:
        with timed("script start (cluster + 1 pool + 1 user)"):
            started = script("start", "--dir", str(directory), "--pool", "p", "--user", "u")
        assert started.returncode == 0, started.stderr[-3000:]
        described = json.loads(started.stdout)
        ours = set(described["mon_ports"].values())
        assert not ours & set(rbd_site.cluster.mon_ports), "two clusters share a mon port"
        assert set(described["pids"]) == {"mon.a", "mgr.x", "osd.0"}
        assert sorted(daemons_using(conf)) == sorted(described["pids"].values())
        listed = subprocess.run(
            ["rbd", "-c", str(conf), "--id", "u", "ls", "p"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
    finally:
        with timed("script stop"):
            stopped = script("stop", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert daemons_using(conf) == []
    assert rbd_site.cluster.ceph_json("health")["status"] == "HEALTH_OK"


def test_start_that_times_out_fails_loudly_and_leaves_no_daemon(tmp_path: Path) -> None:
    cluster = harness.CephCluster(tmp_path / "hasty", timeout=0.5)
    with pytest.raises(harness.ClusterError) as caught:
        cluster.start()
    message = str(caught.value)
    assert "timed out after 0.5s waiting for" in message or "exited with" in message
    assert "--- " in message and ".log" in message  # the daemon logs' tail
    assert daemons_using(cluster.conf) == []
