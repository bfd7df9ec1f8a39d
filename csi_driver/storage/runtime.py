"""Process-wide settings of the storage library and the metadata store in use.

``storage.setup()`` fills one frozen ``Settings`` and opens the store it names.
Everything else reads them through ``current()``; nothing here touches Cinder
(the Cinder adapter applies the settings when the first backend starts).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from csi_driver.storage import persistence, secrets
from csi_driver.storage.exceptions import InvalidArgument
from csi_driver.storage.persistence.base import MetadataStore


@dataclasses.dataclass(frozen=True)
class Settings:
    """What ``storage.setup()`` accepts; every field has a production-sane default."""

    #: Which metadata store keeps the drivers' state: ``{'storage': 'memory'}``,
    #: ``{'storage': 'sqlite', 'path': FILE}``, or a store instance.
    persistence_config: Mapping[str, Any] | MetadataStore = dataclasses.field(
        default_factory=lambda: {"storage": "memory"}
    )
    #: Put each backend's full driver configuration (secrets included) into dumps,
    #: making them self-contained; by default only the backend name is written.
    output_all_backend_info: bool = False
    #: Directory for the file locks of Cinder drivers and of the coordination
    #: layer; processes sharing a host must share it.
    file_locks_path: str = os.path.join(tempfile.gettempdir(), "csi-driver-locks")
    #: Cinder's ``state_path`` (some drivers keep files there); defaults to the lock dir.
    state_path: str | None = None
    #: Command prefix used by Cinder's ``execute(run_as_root=True)`` when not root.
    root_helper: str = "sudo"
    #: ``'in-process'`` runs privileged calls in this process (needs root);
    #: ``'helper'`` starts the venv's ``privsep-helper`` through ``root_helper``;
    #: ``'auto'`` picks in-process when running as root.
    privsep: str = "auto"
    #: Host name used in Cinder's ``host@backend#pool`` strings and attachments.
    host: str = dataclasses.field(default_factory=socket.gethostname)
    #: IP address drivers advertise (Cinder's ``my_ip``); None lets Cinder guess.
    my_ip: str | None = None
    project_id: str = "csi-driver"
    user_id: str = "csi-driver"
    #: Extra process-wide Cinder options (``[DEFAULT]`` group), e.g.
    #: ``{'volume_name_template': 'volume-%s'}``.
    cinder_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: This process only attaches serialized connections (a CSI node): a document
    #: naming a backend that is not configured here loads against an attach-only
    #: stand-in with no driver and no credentials, instead of being refused, even when
    #: the document carries the backend's configuration (no driver is started).
    attach_only: bool = False
    #: Seconds after which an operation another machine's process left in a record
    #: (``creating``, ``deleting``...) counts as abandoned and is healed; the same
    #: machine's are judged by whether their process still runs (storage/ownership.py).
    stale_operation_seconds: float = 900.0

    def __post_init__(self) -> None:
        if self.privsep not in ("auto", "in-process", "helper"):
            raise InvalidArgument(
                f"privsep must be 'auto', 'in-process' or 'helper', not {self.privsep!r}"
            )
        for name in ("file_locks_path", "host", "root_helper", "project_id", "user_id"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidArgument(f"setup option {name!r} must be a non-empty string")

    @property
    def privsep_in_process(self) -> bool:
        """Whether privileged calls run in this process rather than a helper."""
        if self.privsep == "auto":
            return os.geteuid() == 0
        return self.privsep == "in-process"


class _Runtime:
    def __init__(self, settings: Settings, store: MetadataStore) -> None:
        self.settings = settings
        self.store = store
        #: Bumped on every setup() so the Cinder adapter knows to re-apply settings.
        self.generation = 0


_lock = threading.Lock()
_runtime: _Runtime | None = None


def setup(**options: Any) -> Settings:
    """Configure the library; may be called again to change settings or store.

    Unknown options are refused by name. The previous store is closed when a new
    one replaces it.
    """
    global _runtime
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InvalidArgument(
            f"unknown setup option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    if options.get("persistence_config") is None:
        options.pop("persistence_config", None)
    settings = Settings(**options)
    store = persistence.load_store(settings.persistence_config)
    secrets.install_log_masking()
    with _lock:
        previous = _runtime
        _runtime = _Runtime(settings, store)
        _runtime.generation = previous.generation + 1 if previous else 1
    if previous is not None and previous.store is not store:
        previous.store.close()
    return settings


def current() -> _Runtime:
    """The runtime set by ``setup()``; a default one (memory store) when never called."""
    runtime = _runtime
    if runtime is None:
        setup()
        runtime = _runtime
    assert runtime is not None
    return runtime


def store() -> MetadataStore:
    """The metadata store in use."""
    return current().store


def settings() -> Settings:
    """The settings in use."""
    return current().settings
