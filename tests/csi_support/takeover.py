"""What an older Cinder release left, taken over by the newest one (the running process).

``OlderMaker`` runs ``older_release_resources.py`` on an older release once per (release,
source) and keeps what it made; ``take_over`` sets this process's library up from it the
way an upgraded controller would:

- ``dump``: the library's default dump (backends named only): the backend is configured
  here, then ``storage.load(dump, save=True)`` fills a new, empty store;
- ``dump-all``: the dump written with ``output_all_backend_info=True``: nothing is
  configured here, ``load`` configures the backend from the dump itself;
- ``store``: the SQLite store the older release wrote, reopened here with the backend
  configured as there.

Every test works on its own case's resources only (each case is its own set of volumes),
so the tests sharing what one run made do not see each other's changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from csi_driver import storage

from . import releases

SCRIPT = Path(__file__).resolve().parent / "older_release_resources.py"
MARKER = b"written-by-an-older-cinder-release"
SOURCES = ("dump", "dump-all", "store")
GiB = 1 << 30


@dataclass
class Made:
    """What one run on an older release made, where it lies, and every name's id."""

    release: str
    source: str
    root: Path
    name: str
    options: dict[str, Any]
    ids: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> Path:
        return self.root / "meta.sqlite"

    def document(self, name: str) -> str:
        return (self.root / "out" / f"{name}.json").read_text()


@dataclass
class OlderMaker:
    """``maker(release, source)``: the cases made on ``release`` for ``source``, made once.

    ``options(root)`` gives the backend's options for a run whose files live under
    ``root``; ``marker`` says whether to write ``MARKER`` into each source volume (it
    needs an attachment this host can make)."""

    factory: pytest.TempPathFactory
    name: str
    options: Callable[[Path], dict[str, Any]]
    cases: tuple[str, ...]
    connector: dict[str, Any]
    marker: bool = True
    made: dict[tuple[str, str], Made] = field(default_factory=dict)

    def __call__(self, release: str, source: str) -> Made:
        if (release, source) not in self.made:
            root = self.factory.mktemp(f"cinder{release}-{source}")
            made = Made(release, source, root, self.name, self.options(root))
            made.ids = releases.run(release, SCRIPT, {
                "store": str(made.store), "locks": str(root / "locks"), "name": self.name,
                "options": made.options, "cases": list(self.cases), "connector": self.connector,
                "all_backend_info": source == "dump-all", "out": str(root / "out"),
                "marker": MARKER.decode() if self.marker else None,
            })["ids"]  # fmt: skip
            self.made[release, source] = made
        return self.made[release, source]


def older_params(sources: tuple[str, ...] = SOURCES) -> list[Any]:
    """Fixture params: every older release with every source."""
    return [pytest.param((r, s), id=f"cinder{r}-{s}") for r in releases.OLDER for s in sources]


def close_all_backends() -> None:
    for backend in list(storage.Backend.backends.values()):
        backend.close()


class Newest:
    """The library of this process (the newest release) holding what ``made`` left."""

    def __init__(self, made: Made) -> None:
        self.made = made
        self.ids = made.ids

    @property
    def backend(self) -> storage.Backend:
        return storage.Backend.backends[self.made.name]

    # Lookups go through the store (the catalog), as a controller's RPCs do.
    def volume(self, case: str, name: str) -> storage.Volume:
        return storage.get_volume(self.ids[f"{case}-{name}"])

    def snapshot(self, case: str) -> storage.Snapshot:
        return storage.get_snapshot(self.ids[f"{case}-snap"])

    def connection(self, case: str) -> storage.Connection:
        return self.backend.get_connection(self.ids[f"{case}-conn"])

    def stored_ids(self) -> set[str]:
        store = storage.runtime.store()
        tables = (store.get_volumes(), store.get_snapshots(), store.get_connections())
        return {record["id"] for table in tables for record in table}

    def case_ids(self, case: str) -> set[str]:
        return {i for name, i in self.ids.items() if name.startswith(f"{case}-")}

    # FileDriver: each volume and snapshot is the file named as Cinder names it.
    def files(self) -> set[str]:
        return set(os.listdir(self.made.options["file_volumes_dir"]))

    def file(self, resource: storage.Volume | storage.Snapshot) -> Path:
        kind = "volume" if isinstance(resource, storage.Volume) else "snapshot"
        return Path(self.made.options["file_volumes_dir"]) / f"{kind}-{resource.id}"

    def file_marker(self, resource: storage.Volume | storage.Snapshot) -> bytes:
        """The first bytes of the resource's file (a volume exported to another host)."""
        with open(self.file(resource), "rb") as data:
            return data.read(len(MARKER))


def read_marker(volume: storage.Volume) -> bytes:
    """The first bytes of a volume that has no connection, read through an attachment
    made on this release."""
    connection = volume.attach()
    try:
        with open(connection.path, "rb") as device:
            return device.read(len(MARKER))
    finally:
        volume.detach()


@contextmanager
def newest_library(tmp_path: Path, store: Path) -> Iterator[None]:
    """This process's library on the SQLite ``store``; every backend closed after."""
    close_all_backends()
    assert releases.running_release() == releases.NEWEST
    storage.setup(
        persistence_config={"storage": "sqlite", "path": str(store)},
        file_locks_path=str(tmp_path / "locks"),
    )
    try:
        yield
    finally:
        close_all_backends()
        storage.setup(file_locks_path=str(tmp_path / "locks"))


@contextmanager
def take_over(made: Made, tmp_path: Path) -> Iterator[Newest]:
    """The newest release's library holding what ``made`` left, as its source says."""
    store = made.store if made.source == "store" else tmp_path / "taken-over.sqlite"
    with newest_library(tmp_path, store):
        if made.source != "dump-all":
            storage.Backend(volume_backend_name=made.name, **made.options)
        if made.source != "store":
            assert list(storage.Backend.backends) == ([made.name] if made.source == "dump" else [])
            loaded = storage.load(made.document("library"), save=True)
            assert [(type(b).__name__, b.name) for b in loaded] == [("Backend", made.name)]
            assert loaded[0] is storage.Backend.backends[made.name]
            if made.source == "dump-all":
                config = loaded[0]._full_config()
                for option, value in made.options.items():
                    assert config[option] == value, option
        yield Newest(made)
