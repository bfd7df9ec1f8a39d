"""``csi-driver store copy``: move the plugin's metadata from one store to another.

Why: an installation that started on the embedded SQLite file moves to etcd or to
Kubernetes custom resources when it grows into a cluster (and back, or between two
etcd prefixes). The records are copied as stored: they are the library's own
serialized objects (what its dump/load reads), so no Cinder driver is loaded.

Safe to re-run: records already in the target with the same content are written
again unchanged, so an interrupted copy is finished by running it once more. A
target holding anything else (a record that differs, or one the source lacks) is
refused unless ``--overwrite`` is given; even then nothing in the target is deleted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml

from csi_driver.storage.exceptions import StorageError
from csi_driver.storage.persistence import MetadataStore, load_store
from csi_driver.storage.persistence.base import CONNECTION, KINDS, SNAPSHOT, VOLUME, Record

#: Records per ``write()``: one transaction each. etcd refuses a transaction of
#: more than 128 operations by default and each record takes a few (its key and
#: index keys), so batches stay well under that.
DEFAULT_BATCH = 20
READ_PAGE = 500
_BATCH_ARG = {VOLUME: "volumes", SNAPSHOT: "snapshots", CONNECTION: "connections"}


class CopyRefused(Exception):
    """The target holds data the copy would overwrite, and --overwrite was not given."""


@dataclass
class CopyReport:
    copied: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    values: int = 0
    #: Target records that differed from the source's and were replaced (--overwrite).
    replaced: int = 0
    #: Target records the source does not have (left in place).
    only_in_target: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        counts = ", ".join(f"{n} {kind}s" for kind, n in self.copied.items())
        text = f"copied {counts} and {self.values} key/value pairs in {self.seconds:.1f}s"
        if self.replaced:
            text += f"; replaced {self.replaced} differing target records"
        if self.only_in_target:
            text += f"; {self.only_in_target} target records not in the source were left alone"
        return text


def store_config(path: str) -> dict[str, Any]:
    """The persistence config in ``path``: a plugin config file (its
    ``storage.persistence_config``) or a bare one (``{storage: NAME, ...}``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StorageError(f"{path} is not valid YAML: {exc}") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("storage"), str):
        return dict(raw)
    storage = raw.get("storage") if isinstance(raw, Mapping) else None
    persistence = storage.get("persistence_config") if isinstance(storage, Mapping) else None
    if not isinstance(persistence, Mapping):
        raise StorageError(
            f"{path}: no store configured (expected storage.persistence_config, "
            "or a top-level 'storage: NAME' store config)"
        )
    return dict(persistence)


def _target_state(
    source: MetadataStore, target: MetadataStore
) -> tuple[dict[str, set[str]], dict[str, set[str]], int]:
    """Per kind, the ids of target records that equal / differ from the source's, and
    how many target records the source lacks. Reads each store a page at a time; only
    the target's records are held (none, for the usual empty target)."""
    same: dict[str, set[str]] = {kind: set() for kind in KINDS}
    differ: dict[str, set[str]] = {kind: set() for kind in KINDS}
    only_target = 0
    for kind in KINDS:
        theirs = {record["id"]: record for record in target.iterate(kind, READ_PAGE)}
        if not theirs:
            continue
        for record in source.iterate(kind, READ_PAGE):
            held = theirs.pop(record["id"], None)
            if held is None:
                continue
            (same if held == record else differ)[kind].add(record["id"])
        only_target += len(theirs)
    return same, differ, only_target


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Progress:
    """One self-rewriting line on a terminal; silent otherwise (or without a stream)."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream or sys.stderr
        self.active = stream is not None and stream.isatty()
        self.total = 0
        self.done = 0
        self.started = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        if not self.active:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        rate = self.done / max(time.monotonic() - self.started, 1e-6)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                          f"{self.done}/{self.total} records, {rate:.0f}/s")  # fmt: skip
        self.stream.flush()

    def finish(self) -> None:
        if self.active:
            self.stream.write("\n")
            self.stream.flush()


def copy_store(
    source: MetadataStore,
    target: MetadataStore,
    overwrite: bool = False,
    batch: int = DEFAULT_BATCH,
    progress: TextIO | None = None,
) -> CopyReport:
    """Copy every record and key/value pair of ``source`` into ``target``."""
    if batch < 1:
        raise StorageError(f"batch size must be at least 1, got {batch}")
    started = time.monotonic()
    report = CopyReport()
    same, differ, report.only_in_target = _target_state(source, target)
    conflicts = sum(len(ids) for ids in differ.values())
    values = source.get_values()
    target_values = target.get_values()
    conflicts += sum(1 for key, value in target_values.items()
                     if values.get(key, value) != value)  # fmt: skip
    if (conflicts or report.only_in_target) and not overwrite:
        raise CopyRefused(
            f"the target store is not empty: {conflicts} records or values differ from the "
            f"source's and {report.only_in_target} are not in the source; give --overwrite "
            "to copy over it (nothing in the target is deleted)"
        )
    report.replaced = conflicts
    bar = _Progress(progress)
    if bar.active:  # a bar needs the total: one more pass over the source
        bar.total = sum(1 for kind in KINDS for _ in source.iterate(kind, READ_PAGE))
    # Volumes first: a reader of a half-done copy never finds a snapshot or
    # connection whose volume is missing.
    for kind in (VOLUME, SNAPSHOT, CONNECTION):
        for chunk in _batches(source.iterate(kind, READ_PAGE), batch):
            todo = [r for r in chunk if r["id"] not in same[kind]]
            if todo:
                target.write(**{_BATCH_ARG[kind]: todo})
            report.copied[kind] += len(chunk)
            bar.advance(len(chunk))
    for key, value in values.items():
        if target_values.get(key) != value:
            target.set_value(key, value)
        report.values += 1
    bar.finish()
    report.seconds = time.monotonic() - started
    return report


def add_parser(commands: Any) -> None:
    store = commands.add_parser("store", help="metadata store tools")
    actions = store.add_subparsers(dest="store_command", required=True)
    copy = actions.add_parser(
        "copy",
        help="copy every record from one metadata store to another",
        description="Copy every record and key/value pair from the store FROM names to "
        "the store TO names. Each is a plugin config file (its storage.persistence_config "
        "is used) or a bare store config ('storage: NAME' and its options).",
    )
    copy.add_argument("--from", dest="source", required=True, metavar="CONFIG")
    copy.add_argument("--to", dest="target", required=True, metavar="CONFIG")
    copy.add_argument("--overwrite", action="store_true",
                      help="copy over records the target holds with other content")  # fmt: skip
    copy.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                      help=f"records per target transaction (default {DEFAULT_BATCH})")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    try:
        source = load_store(store_config(args.source))
        try:
            target = load_store(store_config(args.target))
        except BaseException:
            source.close()
            raise
        try:
            report = copy_store(source, target, args.overwrite, args.batch, progress=sys.stderr)
        finally:
            source.close()
            target.close()
    except CopyRefused as exc:
        print(f"csi-driver store copy: refused: {exc}", file=sys.stderr)
        return 1
    except StorageError as exc:
        print(f"csi-driver store copy: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0
