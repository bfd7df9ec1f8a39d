"""``local`` connections (the FileDriver's) are attached by ``connector`` itself, as
os-brick's ``local`` connector does — the path handed back, nothing to undo at detach,
the size the device shows after an extend — and without loading os-brick, which a
process then never imports. Other protocols still go through os-brick."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from csi_driver.storage import InvalidArgument, connector

MiB = 1024**2


def test_a_local_attach_loads_no_os_brick(tmp_path: Path) -> None:
    volume = tmp_path / "volume-1"
    volume.write_bytes(b"")
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from csi_driver import storage
        from csi_driver.storage import connector
        storage.setup(file_locks_path={str(tmp_path / "locks")!r})
        info = {{"driver_volume_type": "local", "data": {{"device_path": {str(volume)!r}}}}}
        connector.check_protocol(info)
        device = connector.connect(info)
        os.truncate({str(volume)!r}, 3 * {MiB})
        size = connector.extend(info)
        connector.disconnect(info, device)
        loaded = sorted({{m.partition(".")[0] for m in sys.modules}} & {{"os_brick", "eventlet"}})
        print(json.dumps({{"device": device, "size": size, "loaded": loaded}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "device": {"type": "local", "path": str(volume)},
        "size": 3 * MiB,
        "loaded": [],
    }


@pytest.mark.usefixtures("memory_store")
@pytest.mark.parametrize("data", [{}, {"device_path": ""}, {"device_path": 7}])
def test_a_local_connection_without_a_device_path_is_invalid(data: dict) -> None:
    with pytest.raises(InvalidArgument, match="local connection info is malformed"):
        connector.connect({"driver_volume_type": "local", "data": data})


@pytest.mark.usefixtures("memory_store")
def test_other_protocols_still_go_through_os_brick() -> None:
    built = connector._attacher({"driver_volume_type": "iscsi", "data": {}}, use_multipath=False)
    assert type(built).__module__.startswith("os_brick.")
