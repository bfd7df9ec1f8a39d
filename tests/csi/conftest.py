"""One real plugin process (``--mode all``, FileDriver + SQLite) shared by a test
module, with stubs for its three services, plus request builders.

The backend ``faulty`` (``fault_injection.FaultInjectingFileDriver``, a fake on
purpose) fails every create_volume, to see how a driver failure reaches the CO. The
backend ``chap`` uses the deliberate fake ``fault_injection.ChapSecretInjectingFileDriver``
(tests/storage/fault_injection.py) so that connections carry CHAP credentials, as an
iSCSI backend's do, and a configured ``chap_password`` is set: the log tests check
neither ever reaches the plugin's log. Request builders live in
``csi_support.requests`` (import them from there: ``conftest`` names are ambiguous).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from csi_support import plugin
from csi_support.requests import (
    CONFIGURED_PASSWORD,
    GiB,
    Mode,
    Plugin,
    capability,
    create_request,
)

__all__ = ["CONFIGURED_PASSWORD", "GiB", "Mode", "Plugin", "capability", "create_request"]
STORAGE_TESTS = str(Path(__file__).resolve().parents[1] / "storage")


@pytest.fixture(scope="module")
def csi_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    root = tmp_path_factory.mktemp("plugin")
    config = plugin.write_config(
        root,
        backends=[
            plugin.file_backend(root / "volumes"),
            plugin.file_backend(
                root / "volumes", name="zoned", topology=[{"topology.csi-driver.cinder/zone": "a"}]
            ),
            {
                "name": "faulty",
                "driver": "fault_injection.FaultInjectingFileDriver",
                "options": {
                    "file_volumes_dir": str(root / "volumes" / "faulty"),
                    "fault_inject_operations": ["create_volume"],
                },
            },
            {
                "name": "chap",
                "driver": "fault_injection.ChapSecretInjectingFileDriver",
                "options": {
                    "file_volumes_dir": str(root / "volumes" / "chap"),
                    "chap_password": CONFIGURED_PASSWORD,
                },
            },
        ],
        volume_types={"gold": {"extra_specs": {"tier": "gold"}}},
        node={"max_volumes": 3, "topology": {"topology.csi-driver.cinder/zone": "a"}},
    )
    with plugin.running(config, "all", root, env={"PYTHONPATH": STORAGE_TESTS}) as process:
        stubs = plugin.Stubs(process)
        try:
            yield Plugin(process, stubs, root)
        finally:
            stubs.close()
