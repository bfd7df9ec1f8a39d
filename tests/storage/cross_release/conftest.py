"""FileDriver resources made on each older Cinder release, taken over by this process
(the newest release) from each source: see ``csi_support.takeover``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from csi_support import takeover
from samples import NODE_A

NAME = "xr-file"
DRIVER = "csi_driver.storage.drivers.file.FileDriver"
#: One case per operation the tests run on what the older release made.
CASES = ("extend", "snapshot", "clone", "from-snapshot", "connect", "attach", "disconnect",
         "delete-snapshot", "delete-volumes", "teardown", "kinds")  # fmt: skip


def _options(root: Path) -> dict[str, Any]:
    return {"volume_driver": DRIVER, "file_volumes_dir": str(root / "volumes")}


@pytest.fixture(scope="module")
def make_older(tmp_path_factory: pytest.TempPathFactory) -> takeover.OlderMaker:
    return takeover.OlderMaker(tmp_path_factory, NAME, _options, CASES, NODE_A)


@pytest.fixture(scope="module", params=takeover.older_params())
def older(request: pytest.FixtureRequest, make_older: takeover.OlderMaker) -> takeover.Made:
    return make_older(*request.param)


@pytest.fixture(scope="module", params=takeover.older_params(("dump", "dump-all")))
def older_dumps(request: pytest.FixtureRequest, make_older: takeover.OlderMaker) -> takeover.Made:
    return make_older(*request.param)


@pytest.fixture
def newest(older: takeover.Made, tmp_path: Path) -> Iterator[takeover.Newest]:
    with takeover.take_over(older, tmp_path) as newest:
        yield newest
