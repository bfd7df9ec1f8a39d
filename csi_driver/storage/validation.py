"""Checks of caller-supplied arguments, with messages that name the bad value."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from csi_driver.storage.exceptions import InvalidArgument
from csi_driver.storage.persistence.base import compact, shared_volume_type

DEFAULT_VOLUME_TYPE = "__DEFAULT__"
_TYPE_NAMESPACE = uuid.UUID("6f1d1f0e-5a43-4c39-9d2a-0c5ad0f1c7b1")
_VOLUME_EXTRAS = frozenset(
    {"id", "pool", "volume_type", "extra_specs", "qos_specs", "multiattach",
     "availability_zone", "metadata"}
)  # fmt: skip
_RESOURCE_EXTRAS = frozenset({"id", "metadata"})


def check_size(size: Any) -> None:
    """Sizes are whole GiB, at least 1."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidArgument(f"size must be a whole number of GiB >= 1, got {size!r}")


def check_optional_str(field: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a string or None, got {type(value).__name__}")


def check_str_dict(field: str, value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidArgument(f"{field} must be a mapping of strings to strings")
    return dict(value)


def check_id(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a UUID string, got {value!r}")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID string, got {value!r}") from None


def volume_type(
    name: Any = DEFAULT_VOLUME_TYPE, extra_specs: Any = None, qos_specs: Any = None
) -> dict[str, Any]:
    """A volume type record: what Cinder drivers read as ``volume.volume_type``.

    Its id is derived from its content, so the same specs always give the same id.
    """
    check_optional_str("volume_type name", name)
    specs = check_str_dict("extra_specs", extra_specs or {})
    qos = check_str_dict("qos_specs", qos_specs) if qos_specs else None
    content = json.dumps([name, specs, qos], sort_keys=True)
    return shared_volume_type(
        compact(
            {
                "id": str(uuid.uuid5(_TYPE_NAMESPACE, content)),
                "name": name or DEFAULT_VOLUME_TYPE,
                "extra_specs": specs,
                "qos_specs": qos,
            }
        )
    )


def volume_extras(extra: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise the keyword arguments of volume creation; unknown keys are refused."""
    unknown = sorted(set(extra) - _VOLUME_EXTRAS)
    if unknown:
        raise InvalidArgument(
            f"unknown volume argument(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(sorted(_VOLUME_EXTRAS))}"
        )
    out: dict[str, Any] = {}
    if extra.get("id") is not None:
        out["id"] = check_id("id", extra["id"])
    if extra.get("pool") is not None:
        check_optional_str("pool", extra["pool"])
        out["pool"] = extra["pool"]
    vtype = extra.get("volume_type")
    if vtype is not None and ("extra_specs" in extra or "qos_specs" in extra):
        raise InvalidArgument("give either volume_type or extra_specs/qos_specs, not both")
    if vtype is None:
        out["volume_type"] = volume_type(
            extra_specs=extra.get("extra_specs"), qos_specs=extra.get("qos_specs")
        )
    elif isinstance(vtype, Mapping):
        bad = sorted(set(vtype) - {"id", "name", "extra_specs", "qos_specs"})
        if bad:
            raise InvalidArgument(f"unknown volume_type key(s) {', '.join(bad)}")
        out["volume_type"] = volume_type(
            vtype.get("name", DEFAULT_VOLUME_TYPE), vtype.get("extra_specs"), vtype.get("qos_specs")
        )
    else:
        raise InvalidArgument("volume_type must be a mapping with name, extra_specs, qos_specs")
    if "multiattach" in extra:
        if not isinstance(extra["multiattach"], bool):
            raise InvalidArgument("multiattach must be True or False")
        out["multiattach"] = extra["multiattach"]
    if extra.get("availability_zone") is not None:
        check_optional_str("availability_zone", extra["availability_zone"])
        out["availability_zone"] = extra["availability_zone"]
    if extra.get("metadata") is not None:
        out["metadata"] = check_str_dict("metadata", extra["metadata"])
    return out


def pop_unique_name(kind: str, name: Any, extra: dict[str, Any]) -> bool:
    """Take ``unique_name`` out of creation keywords: whether the new record must be
    the only one of its kind with ``name`` (checked and stored in one store step)."""
    unique = extra.pop("unique_name", False)
    if not isinstance(unique, bool):
        raise InvalidArgument(f"unique_name must be True or False, got {unique!r}")
    if unique and not (isinstance(name, str) and name):
        raise InvalidArgument(f"unique_name needs a non-empty {kind} name")
    return unique


def resource_extras(kind: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments accepted when creating snapshots: ``id`` and ``metadata``."""
    unknown = sorted(set(extra) - _RESOURCE_EXTRAS)
    if unknown:
        raise InvalidArgument(f"unknown {kind} argument(s) {', '.join(unknown)}")
    out: dict[str, Any] = {"metadata": {}}
    if extra.get("id") is not None:
        out["id"] = check_id("id", extra["id"])
    if extra.get("metadata") is not None:
        out["metadata"] = check_str_dict("metadata", extra["metadata"])
    return out
