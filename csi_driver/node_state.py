"""What the node staged, kept in a node-local directory (one JSON file per volume).

The node has no metadata store, yet NodeUnstageVolume gets only a volume id and a
path: the record of the stage (the serialized Connection with its os-brick device,
the loop device, the filesystem, the published targets) is what lets it detach.
Records hold connection credentials, so files are root-only (0600 in a 0700 dir)
and written atomically (a crash leaves the old or the new record, never half).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from typing import Any

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class NodeState:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)

    def _path(self, volume_id: str) -> str:
        if not _SAFE_ID.match(volume_id) or volume_id.startswith("."):
            # Ids are used as file names: refuse anything that could leave the directory.
            raise ValueError(f"volume id {volume_id!r} is not a valid volume id of this plugin")
        return os.path.join(self.directory, volume_id + ".json")

    def get(self, volume_id: str) -> dict[str, Any] | None:
        try:
            with open(self._path(volume_id), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def put(self, volume_id: str, record: dict[str, Any]) -> None:
        path = self._path(volume_id)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def delete(self, volume_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(volume_id))

    def volume_ids(self) -> list[str]:
        return sorted(
            name[: -len(".json")]
            for name in os.listdir(self.directory)
            if name.endswith(".json") and not name.startswith(".")
        )
