"""Checks on the parts of CSI requests that several RPCs share: capacity ranges,
volume capabilities, topology and StorageClass parameters.

Pure functions over protobuf messages: they raise ``errors.InvalidRequest`` (and
friends) with a message naming the field, and never touch storage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from csi_driver import capabilities, errors
from csi_driver.config import BackendConfig, PluginConfig
from csi_driver.csi_pb import csi_pb2

GiB = 1024**3
#: The largest capacity_bytes a CSI message can carry (an int64).
INT64_MAX = 2**63 - 1
#: Linux's PATH_MAX, counting the terminating NUL: the longest path a mount takes.
PATH_MAX = 4096
#: Keys Kubernetes' external-provisioner adds to parameters (PVC name, secrets...).
K8S_PARAMETER_PREFIX = "csi.storage.k8s.io/"
#: StorageClass parameters the plugin understands.
PARAMETERS = ("backend", "volume_type")
#: Access mode number -> name, for the modes the spec defines (proto3 keeps other numbers).
_MODE_NAMES = {v.number: v.name for v in csi_pb2.VolumeCapability.AccessMode.Mode.DESCRIPTOR.values}


def require(value: object, field: str) -> None:
    """A REQUIRED field must be set (proto3 leaves unset strings empty)."""
    if not value:
        raise errors.InvalidRequest(f"{field} is required")


def require_path(value: str, field: str, *, absolute: bool = True) -> str:
    """A REQUIRED host path (staging_target_path, target_path, volume_path...) with no NUL
    byte and shorter than PATH_MAX, which the system calls it reaches would otherwise
    refuse with errors that are not about the request; absolute, as the spec asks.

    ``absolute=False`` is for a path only compared with what the node recorded
    (volume_path): csi-sanity sends a relative one there and expects NOT_FOUND.
    """
    require(value, field)
    if "\0" in value:
        raise errors.InvalidRequest(f"{field} contains a NUL byte")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size >= PATH_MAX:
        raise errors.InvalidRequest(
            f"{field} is {size} bytes long; a path has at most {PATH_MAX - 1}"
        )
    if absolute and not value.startswith("/"):
        raise errors.InvalidRequest(f"{field} {value!r} is not an absolute path")
    return value


def optional(message: Any, name: str) -> Any:
    """A message field's value, or None when unset (proto3 returns defaults otherwise)."""
    return getattr(message, name) if message.HasField(name) else None


def size_gib(capacity: csi_pb2.CapacityRange | None, minimum_gib: int = 1) -> int:
    """The whole number of GiB to allocate for a capacity range (drivers allocate GiB)."""
    required = capacity.required_bytes if capacity else 0
    limit = capacity.limit_bytes if capacity else 0
    if required < 0 or limit < 0:
        raise errors.InvalidRequest("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise errors.InvalidRequest(
            f"capacity_range.required_bytes {required} exceeds limit_bytes {limit}"
        )
    gib = max(-(-required // GiB), minimum_gib)
    if gib * GiB > INT64_MAX:
        raise errors.OutOfRange(
            f"capacity_range.required_bytes {required} rounds up to {gib * GiB} bytes (whole "
            f"GiB), more than a volume's capacity_bytes can express ({INT64_MAX})"
        )
    if limit and gib * GiB > limit:
        raise errors.OutOfRange(
            f"volumes are allocated in whole GiB; the smallest size satisfying the request "
            f"is {gib * GiB} bytes, above limit_bytes {limit}"
        )
    return gib


def fits(capacity: csi_pb2.CapacityRange | None, size_bytes: int) -> bool:
    """Whether an existing volume's size satisfies a capacity range."""
    if capacity is None:
        return True
    if capacity.required_bytes and size_bytes < capacity.required_bytes:
        return False
    return not (capacity.limit_bytes and size_bytes > capacity.limit_bytes)


@dataclass(frozen=True)
class Access:
    """What a list of volume capabilities asks for."""

    block: bool
    multi_node: bool
    read_only: bool
    fs_type: str


def check_capabilities(
    caps: Iterable[csi_pb2.VolumeCapability], field: str = "volume_capabilities"
) -> Access:
    """Validate capabilities and summarise them; unsupported ones are INVALID_ARGUMENT."""
    caps = list(caps)
    if not caps:
        raise errors.InvalidRequest(f"{field} is required")
    problem = next((p for p in (unsupported(c) for c in caps) if p), None)
    if problem:
        raise errors.InvalidRequest(f"{field}: {problem}")
    kinds = {c.WhichOneof("access_type") for c in caps}
    if len(kinds) > 1:
        raise errors.InvalidRequest(f"{field}: mixes block and mount access")
    fs_types = {c.mount.fs_type for c in caps if c.HasField("mount") and c.mount.fs_type}
    if len(fs_types) > 1:
        raise errors.InvalidRequest(f"{field}: asks for several filesystems {sorted(fs_types)}")
    modes = {c.access_mode.mode for c in caps}
    return Access(
        block="block" in kinds,
        multi_node=bool(modes & capabilities.MULTI_NODE_MODES),
        read_only=modes <= capabilities.READ_ONLY_MODES,
        fs_type=fs_types.pop() if fs_types else "",
    )


def single_capability(request: Any) -> Access:
    """The REQUIRED ``volume_capability`` of a publish or stage request, checked."""
    if not request.HasField("volume_capability"):
        raise errors.InvalidRequest("volume_capability is required")
    return check_capabilities([request.volume_capability], "volume_capability")


def unsupported(cap: csi_pb2.VolumeCapability) -> str | None:
    """Why one capability cannot be served, or None when it can."""
    kind = cap.WhichOneof("access_type")
    if kind is None:
        return "an access type (mount or block) is required"
    if not cap.HasField("access_mode") or cap.access_mode.mode == cap.access_mode.UNKNOWN:
        return "an access mode is required"
    mode = cap.access_mode.mode
    if mode not in _MODE_NAMES:
        return f"access_mode.mode {mode} is not an access mode of the CSI spec"
    name = _MODE_NAMES[mode]
    if mode not in capabilities.SINGLE_NODE_MODES | capabilities.MULTI_NODE_MODES:
        return f"access mode {name} is not supported"
    if kind == "mount":
        fs_type = cap.mount.fs_type
        if fs_type and fs_type not in capabilities.FILESYSTEMS:
            return (
                f"filesystem {fs_type!r} is not supported "
                f"(supported: {', '.join(capabilities.FILESYSTEMS)})"
            )
        if mode in (
            capabilities.Mode.MULTI_NODE_MULTI_WRITER,
            capabilities.Mode.MULTI_NODE_SINGLE_WRITER,
        ):
            return (
                f"access mode {name} needs a cluster filesystem; with a filesystem volume "
                "use MULTI_NODE_READER_ONLY, or request raw block access"
            )
    return None


def parameters(config: PluginConfig, params: Mapping[str, str]) -> tuple[BackendConfig, dict]:
    """The backend and Cinder volume type a StorageClass's parameters select."""
    unknown = sorted(
        k for k in params if k not in PARAMETERS and not k.startswith(K8S_PARAMETER_PREFIX)
    )
    if unknown:
        raise errors.InvalidRequest(
            f"unknown parameter {unknown[0]!r}; supported: {', '.join(PARAMETERS)}"
        )
    name = params.get("backend") or config.default_backend
    backend = config.backend(name) if name else None
    if backend is None:
        raise errors.InvalidRequest(
            f"parameter backend={name!r} names no configured backend "
            f"(configured: {', '.join(b.name for b in config.backends) or 'none'})"
        )
    vtype_name = params.get("volume_type")
    if not vtype_name:
        return backend, {}
    spec = config.volume_types.get(vtype_name)
    if spec is None:
        raise errors.InvalidRequest(
            f"parameter volume_type={vtype_name!r} is not configured "
            f"(configured: {', '.join(config.volume_types) or 'none'})"
        )
    return backend, {
        "name": vtype_name,
        "extra_specs": dict(spec["extra_specs"]),
        "qos_specs": dict(spec["qos_specs"]),
    }


def segment_matches(backend_segment: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """A backend segment serves a requested topology when every key they share agrees
    and the backend's keys are all named in the request."""
    return all(wanted.get(k) == v for k, v in backend_segment.items())


def reachable(backend: BackendConfig, topologies: Iterable[csi_pb2.Topology]) -> bool:
    """Whether a backend can serve at least one of the given topologies."""
    if not backend.topology:
        return True
    return any(segment_matches(seg, t.segments) for t in topologies for seg in backend.topology)


def accessible_topology(backend: BackendConfig) -> list[csi_pb2.Topology]:
    return [csi_pb2.Topology(segments=dict(seg)) for seg in backend.topology]


def check_requirements(
    backend: BackendConfig, requirements: csi_pb2.TopologyRequirement | None
) -> None:
    """CreateVolume's accessibility_requirements against the chosen backend."""
    if requirements is None:
        return
    wanted = list(requirements.requisite) or list(requirements.preferred)
    if wanted and not reachable(backend, wanted):
        raise errors.ResourceExhausted(
            f"backend {backend.name!r} is reachable only from "
            f"{[dict(s) for s in backend.topology]}, none of the requested topologies"
        )
