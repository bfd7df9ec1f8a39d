"""``store``: each metadata store in turn, fresh and empty (csi_support/stores.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from csi_support.stores import STORE_PARAMS

from csi_driver.storage.persistence import MetadataStore


@pytest.fixture(**STORE_PARAMS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetadataStore]:
    instance = request.param(request, tmp_path)
    yield instance
    instance.close()
