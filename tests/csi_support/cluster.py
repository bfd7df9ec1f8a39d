"""pytest fixtures for a real etcd and a real kube-apiserver (harness e2e/cluster/cluster.py).

A pytest plugin (``tests/conftest.py`` lists it in ``pytest_plugins``), so every test
directory can use:

- ``etcd_server``: an ``Etcd`` of the harness, for the session, on its own data
  directory: ``.endpoint`` (``http://127.0.0.1:PORT``), ``.stop()``, ``.start()``
  (same port and data), ``.put()``/``.get()``/``.count()``, ``.pid``, ``.running``.
- ``kube_apiserver``: a ``ControlPlane`` of the harness, for the session (API server
  only, no controller manager or scheduler): ``.kubeconfig`` and ``.kubectl`` (paths
  as str), ``.server``, ``.stop()``, ``.start()`` (same port, PKI and data),
  ``.run_kubectl(*args)``, ``.kubectl_env()``, ``.etcd`` (its own ``Etcd``).

The API server has an etcd of its own, not ``etcd_server``'s: a test that stops one
does not take the other down, and keys the API server writes never show up in the
plugin's etcd. Both are session-wide, so a test that stops one must ``start()`` it
again (in a ``finally``); ``start()`` is a no-op on a running server.

Without the binaries the fixtures fail, naming the make target, rather than skip:
a skipped proof proves nothing. ``make test`` builds them first.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_support.harnesses import load_by_path, report_timings

HARNESS = Path(__file__).resolve().parents[2] / "e2e" / "cluster" / "cluster.py"
#: Seconds per event, printed at the end of the run.
TIMINGS: dict[str, list[float]] = {}


harness = load_by_path("csi_test_k8s_cluster", HARNESS)


def record_timing(label: str, seconds: float) -> None:
    TIMINGS.setdefault(label, []).append(seconds)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    report_timings(terminalreporter, "etcd / kube-apiserver timings", TIMINGS)


def _require_etcd() -> None:
    if harness.find_etcd() is None:
        pytest.fail("etcd is not installed; run 'make etcd-deps' (Debian's etcd-server)")


def _require_kube_binaries() -> None:
    missing = harness.missing_kube_binaries()
    if missing:
        pytest.fail(
            f"Kubernetes binaries missing ({', '.join(missing)}); run 'make kube-binaries' "
            f"(or set KUBE_BIN to their directory)"
        )


def _start_etcd(directory: Path) -> Any:
    etcd = harness.Etcd(directory / "data", log=directory / "etcd.log")
    etcd.start()
    record_timing("etcd start (to /health)", etcd.timings["start"])
    return etcd


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A one-member etcd for the session; stopped at its end whatever happened."""
    _require_etcd()
    etcd = _start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield etcd
    finally:
        etcd.stop()


@pytest.fixture(scope="session")
def kube_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """kube-apiserver (on its own etcd) for the session; stopped at its end."""
    _require_etcd()
    _require_kube_binaries()
    directory = tmp_path_factory.mktemp("kube")
    etcd = _start_etcd(directory / "etcd")
    plane = harness.ControlPlane(directory, None, etcd)
    try:
        plane.start()
        record_timing("kube-apiserver start (to /readyz)", plane.timings["apiserver start"])
        yield plane
    finally:
        plane.stop()
        etcd.stop()
