"""Fixtures shared by the storage tests: a configured library, backends closed after each test.

``tests/storage`` is appended to ``sys.path`` so that backends can name the deliberate
fakes of ``tests/storage/fault_injection.py`` as ``fault_injection.<Class>`` (see there).
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from csi_driver import storage

STORAGE_TESTS_DIR = str(Path(__file__).resolve().parent)
if STORAGE_TESTS_DIR not in sys.path:
    sys.path.append(STORAGE_TESTS_DIR)


@pytest.fixture
def memory_store(tmp_path: Path) -> None:
    """The library set up with an in-memory store and this test's lock directory."""
    storage.setup(persistence_config={"storage": "memory"}, file_locks_path=str(tmp_path / "locks"))


@pytest.fixture
def make_backend(tmp_path: Path) -> Iterator[Callable[..., storage.Backend]]:
    """``make_backend(name, volume_driver=FileDriver, **options)``; every backend this
    test configured (or that got registered under a name it used) is closed after it."""
    made: list[storage.Backend] = []
    names: list[str] = []

    def make(name: str, volume_driver: str | None = None, **options: Any) -> storage.Backend:
        names.append(name)
        if volume_driver is None:
            volume_driver = "csi_driver.storage.drivers.file.FileDriver"
            options.setdefault("file_volumes_dir", str(tmp_path / name / "vols"))
        backend = storage.Backend(volume_backend_name=name, volume_driver=volume_driver, **options)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()
    for name in names:
        leftover = storage.Backend.backends.get(name)
        if leftover is not None:
            leftover.close()


class Captured:
    """What a real handler with a Formatter wrote, and what pytest's caplog holds."""

    def __init__(self, caplog: pytest.LogCaptureFixture, stream: io.StringIO) -> None:
        self.caplog = caplog
        self.stream = stream

    def texts(self) -> list[str]:
        return [self.stream.getvalue(), self.caplog.text, *self.caplog.messages]


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[Captured]:
    """Every logger at DEBUG, into caplog and into a StringIO through a Formatter."""
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level > logging.DEBUG:
            caplog.set_level(logging.DEBUG, logger=name)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield Captured(caplog, stream)
    finally:
        logging.getLogger().removeHandler(handler)
