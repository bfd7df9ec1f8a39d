"""Makes ``tests/csi_support`` (plugin processes, csi-sanity runner) importable from
every test directory, e.g. the RBD tests that run csi-sanity on a real cluster."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:
    sys.path.append(TESTS_DIR)

# Fixtures any test can use: etcd_server, kube_apiserver (real servers, e2e/cluster).
pytest_plugins = ["csi_support.cluster"]
