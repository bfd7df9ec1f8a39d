"""Metadata stores and ``load_store``, which builds one from the plugin's config.

A store is named in ``persistence_config`` (``{'storage': 'sqlite', 'path': ...}``).
The name is looked up, in this order, in ``STORES`` (imported lazily, so that
an unused store costs no import), in the ``csi_driver.storage.persistence``
entry points (stores shipped by other packages), then as a dotted
``package.module.Class`` path.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from csi_driver.storage.exceptions import InvalidArgument, StoreError
from csi_driver.storage.persistence.base import MetadataStore

__all__ = ["ENTRY_POINT_GROUP", "STORES", "MetadataStore", "load_store"]

ENTRY_POINT_GROUP = "csi_driver.storage.persistence"

#: Built-in stores: name -> dotted path of the class.
STORES: dict[str, str] = {
    "memory": "csi_driver.storage.persistence.memory.MemoryStore",
    "sqlite": "csi_driver.storage.persistence.sqlite.SQLiteStore",
    "kubernetes": "csi_driver.storage.persistence.kubernetes.KubernetesStore",
    "etcd": "csi_driver.storage.persistence.etcd.EtcdStore",
}


def load_store(config: Mapping[str, Any] | MetadataStore) -> MetadataStore:
    """Build the store ``config['storage']`` names, with the other keys as options.

    A store that is already built is returned as is, so callers (and tests) can
    hand one over instead of a config.
    """
    if isinstance(config, MetadataStore):
        return config
    if not isinstance(config, Mapping):
        raise InvalidArgument(
            f"persistence config must be a mapping or a MetadataStore, not {type(config).__name__}"
        )
    options = dict(config)
    name = options.pop("storage", None)
    if not isinstance(name, str) or not name:
        raise InvalidArgument(
            f"persistence config needs 'storage' naming a store, one of {_known_names()} "
            f"or a dotted path package.module.Class; got {name!r}"
        )
    cls = _find_class(name)
    _check_options(cls, name, options)
    return cls(**options)


def _known_names() -> list[str]:
    return sorted({*STORES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def _find_class(name: str) -> type[MetadataStore]:
    if name in STORES:
        cls = _import_dotted(STORES[name], name)
    elif matches := entry_points(group=ENTRY_POINT_GROUP, name=name):
        entry_point = next(iter(matches))
        try:
            cls = entry_point.load()
        except (ImportError, AttributeError) as exc:
            raise StoreError(
                f"store {name!r} (entry point {entry_point.value}) cannot be loaded: {exc}"
            ) from exc
    elif "." in name:
        cls = _import_dotted(name, name)
    else:
        raise InvalidArgument(
            f"unknown metadata store {name!r}; known stores: {', '.join(_known_names())} "
            "(or give a dotted path package.module.Class)"
        )
    if not (isinstance(cls, type) and issubclass(cls, MetadataStore)):
        raise InvalidArgument(f"store {name!r} names {cls!r}, which is not a MetadataStore class")
    if inspect.isabstract(cls):
        raise InvalidArgument(f"store {name!r} names an abstract class, not a store")
    return cls


def _import_dotted(path: str, name: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr or path.startswith("."):
        raise InvalidArgument(f"metadata store {name!r} is not a dotted path package.module.Class")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            # The named module itself is missing: a wrong name in the config.
            raise InvalidArgument(
                f"metadata store {name!r}: no module {module_name!r}; known stores: "
                f"{', '.join(_known_names())}"
            ) from exc
        raise StoreError(f"metadata store {name!r} cannot be loaded: {exc}") from exc
    except ImportError as exc:
        raise StoreError(f"metadata store {name!r} cannot be loaded: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidArgument(
            f"metadata store {name!r}: module {module_name!r} has no {attr!r}"
        ) from None


def _check_options(cls: type[MetadataStore], name: str, options: dict[str, Any]) -> None:
    """Name the unknown or missing option, rather than let a TypeError say 'argument'."""
    params = [
        p
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.VAR_KEYWORD)
    ]
    accepted = [p.name for p in params if p.kind != p.VAR_KEYWORD]
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise InvalidArgument(
                f"metadata store {name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(accepted) or 'none'}"
            )
    missing = [p.name for p in params if p.default is p.empty and p.kind != p.VAR_KEYWORD]
    missing = [option for option in missing if option not in options]
    if missing:
        raise InvalidArgument(
            f"metadata store {name!r} needs option {', '.join(map(repr, missing))}"
        )
