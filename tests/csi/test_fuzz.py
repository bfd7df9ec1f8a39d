"""Property-based fuzzing (hypothesis) of every Identity, Controller and Node RPC through
real gRPC against one real plugin process (``--mode all``, FileDriver + SQLite).

Requests mix garbage with near-valid ones built from what the module really created
(volume and snapshot ids, names, the node id, publish_context documents from
ControllerPublishVolume, staging and target paths), so the deep code runs too: real
stages, mounts and loop devices. Every path sent stays in a sandbox directory whose
symlinks point OUT to a sibling ``canary`` directory, the one foreign place the fuzzer
can reach (through those links or ``..``). Checked after every call and at the end:

- the status code is OK or one the spec names (the RPC's table and the general ones);
  never UNKNOWN, INTERNAL, UNAVAILABLE (nothing is transient here) or DEADLINE_EXCEEDED
  (a hang); UNIMPLEMENTED exactly for what the plugin does not advertise; an error
  status carries a message;
- no lock is left held: afterwards every name and id used answers other than ABORTED;
- no foreign path is touched: the canary stays byte-for-byte and mode-for-mode the same,
  nothing is mounted on it, no loop device maps its files; the plugin removes no sandbox
  path it never published to, and a call about one volume never unmounts another's
  (a mount hiding other volumes' mounts is recorded in the summary, not asserted);
- after cleaning up through the CSI API no mount or loop device is left under the
  sandbox, the canary or the plugin's directory, and the plugin stops cleanly.

The plugin is stateful, so hypothesis draws *symbolic* requests ("the 3rd live volume,
upper-cased", "a real publish_context with device_path changed to sandbox/escape/fs.img")
whose shape never depends on what exists; the module's World resolves them against
what the plugin really made. Violations are collected rather than raised (a replay
would meet another state and not reproduce): per distinct failure the smallest request
that showed it is kept as its reproducer.

Budget: ``CSI_DRIVER_FUZZ_EXAMPLES``, else the profile ``CSI_DRIVER_FUZZ_PROFILE``
(``ci``, the default: 4000 examples, ~45 s; ``soak``: 40000, what ``make soak`` runs);
an example is one call, sent once or raced by 2-3 copies of itself. Generation is
derandomized unless ``CSI_DRIVER_FUZZ_SEED`` is set (the plugin's timing still varies
a little between runs). Counts per RPC and the codes seen go to ``fuzz-summary.json``
in the module's tmp directory, whose path and a table are printed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from csi_support import plugin, report
from csi_support.requests import capability as valid_capability
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from csi_driver import node_identity
from csi_driver.csi_pb import csi_pb2

Code = grpc.StatusCode
GiB = 1024**3
TiB = 1024**4
Mode = csi_pb2.VolumeCapability.AccessMode.Mode

PROFILES = {"ci": 4000, "soak": 40000}
PROFILE = os.environ.get("CSI_DRIVER_FUZZ_PROFILE", "ci")
EXAMPLES = int(os.environ.get("CSI_DRIVER_FUZZ_EXAMPLES") or PROFILES.get(PROFILE, 4000))
SEED = os.environ.get("CSI_DRIVER_FUZZ_SEED")
#: A call answering later than this has hung (staging a 1 GiB volume takes well under 1 s).
CALL_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.skipif(not plugin.is_root(), reason="node RPCs need root: loop devices, mounts"),
    pytest.mark.skipif(shutil.which("losetup") is None, reason="losetup (util-linux) is missing"),
    pytest.mark.timeout(600 + EXAMPLES // 5),  # the whole run is the module fixture's setup
]

# -- what the spec allows ---------------------------------------------------------------------

#: The codes each RPC's error table in the spec (v1.13.0 spec.md) names.
_SPEC_TABLE = """
Probe: FAILED_PRECONDITION
CreateVolume: OUT_OF_RANGE INVALID_ARGUMENT NOT_FOUND ALREADY_EXISTS RESOURCE_EXHAUSTED
DeleteVolume: FAILED_PRECONDITION
ControllerPublishVolume: NOT_FOUND ALREADY_EXISTS RESOURCE_EXHAUSTED FAILED_PRECONDITION
ControllerUnpublishVolume: NOT_FOUND
ValidateVolumeCapabilities: NOT_FOUND
ListVolumes: ABORTED
ControllerListVolumeHealth: ABORTED
ControllerGetVolumeHealth: NOT_FOUND
ControllerGetVolume: NOT_FOUND
ControllerModifyVolume: INVALID_ARGUMENT NOT_FOUND
CreateSnapshot: ABORTED ALREADY_EXISTS RESOURCE_EXHAUSTED
DeleteSnapshot: ABORTED INVALID_ARGUMENT FAILED_PRECONDITION
ListSnapshots: ABORTED
GetSnapshot: NOT_FOUND
ControllerExpandVolume: OUT_OF_RANGE INVALID_ARGUMENT NOT_FOUND FAILED_PRECONDITION
NodeStageVolume: NOT_FOUND ALREADY_EXISTS FAILED_PRECONDITION
NodeUnstageVolume: NOT_FOUND
NodePublishVolume: NOT_FOUND ALREADY_EXISTS FAILED_PRECONDITION
NodeUnpublishVolume: NOT_FOUND
NodeGetVolumeStats: NOT_FOUND
NodeGetVolumeHealth: NOT_FOUND
NodeExpandVolume: OUT_OF_RANGE INVALID_ARGUMENT NOT_FOUND FAILED_PRECONDITION
"""


def _words(text: str) -> list[str]:
    return text.split()


SPEC_CODES = {
    rpc: {Code[c] for c in codes.split()}
    for rpc, codes in (line.split(":") for line in _SPEC_TABLE.strip().splitlines())
}
#: The spec's general error scheme (missing or invalid field, operation pending) and what
#: any RPC may answer about an object's state. UNAVAILABLE is left out: nothing is
#: transient on a local FileDriver + SQLite. PERMISSION_DENIED and UNAUTHENTICATED are
#: about secrets, which this plugin does not check.
GENERAL_CODES = {
    Code[c]
    for c in _words(
        "INVALID_ARGUMENT NOT_FOUND ALREADY_EXISTS FAILED_PRECONDITION OUT_OF_RANGE "
        "RESOURCE_EXHAUSTED ABORTED"
    )
}
#: The capability without which an RPC is one the plugin does not offer (UNIMPLEMENTED).
_NEEDS_TABLE = """
CreateVolume DeleteVolume: controller CREATE_DELETE_VOLUME
ControllerPublishVolume ControllerUnpublishVolume: controller PUBLISH_UNPUBLISH_VOLUME
ListVolumes: controller LIST_VOLUMES
GetCapacity: controller GET_CAPACITY
CreateSnapshot DeleteSnapshot: controller CREATE_DELETE_SNAPSHOT
ListSnapshots: controller LIST_SNAPSHOTS
GetSnapshot: controller GET_SNAPSHOT
ControllerExpandVolume: controller EXPAND_VOLUME
ControllerGetVolume: controller GET_VOLUME
ControllerModifyVolume: controller MODIFY_VOLUME
ControllerGetVolumeHealth: controller GET_VOLUME_HEALTH
ControllerListVolumeHealth: controller LIST_VOLUME_HEALTH
NodeStageVolume NodeUnstageVolume: node STAGE_UNSTAGE_VOLUME
NodeGetVolumeStats: node GET_VOLUME_STATS
NodeExpandVolume: node EXPAND_VOLUME
NodeGetVolumeHealth: node GET_VOLUME_HEALTH
NodeGetStorageHealth: node GET_STORAGE_HEALTH
"""
NEEDS = {
    rpc: tuple(need.split())
    for rpcs, need in (line.split(":") for line in _NEEDS_TABLE.strip().splitlines())
    for rpc in rpcs.split()
}
SERVICES = ("Identity", "Controller", "Node")
#: Every RPC of the three services, from the spec's descriptors: name -> (service, type).
RPCS: dict[str, tuple[str, type[Message]]] = {
    method.name: (service, getattr(csi_pb2, method.input_type.name))
    for service in SERVICES
    for method in csi_pb2.DESCRIPTOR.services_by_name[service].methods
}
#: How often each RPC is drawn (1 unless named): the stateful ones more.
WEIGHTS = {
    rpc: int(weight)
    for rpc, weight in (
        pair.split("=")
        for pair in _words("""
    CreateVolume=6 DeleteVolume=3 ControllerPublishVolume=5 ControllerUnpublishVolume=3
    ValidateVolumeCapabilities=2 ListVolumes=2 GetCapacity=2 CreateSnapshot=3 DeleteSnapshot=2
    ListSnapshots=2 GetSnapshot=2 ControllerExpandVolume=3 ControllerGetVolume=2
    NodeStageVolume=8 NodeUnstageVolume=5 NodePublishVolume=7 NodeUnpublishVolume=5
    NodeGetVolumeStats=3 NodeGetVolumeHealth=2 NodeExpandVolume=3""")
    )
}
WEIGHTED_RPCS = [rpc for rpc in RPCS for _ in range(WEIGHTS.get(rpc, 1))]

# -- the sandbox and its canary ---------------------------------------------------------------

#: relative path -> (kind, content). The sandbox's entries are what paths are made of.
SKELETON: dict[str, tuple[str, Any]] = {
    **{d: ("dir", None) for d in ("stage", "pods", "dirs", "files", "ünïcödé", "with space")},
    **{f"pods/{i}": ("dir", None) for i in range(4)},
    "new\nline": ("dir", None),
    "dirs/empty": ("dir", None),
    "dirs/full": ("dir", None),
    "dirs/full/keep.txt": ("file", b"kept by the CO, not the plugin's\n"),
    "files/keep.txt": ("file", b"a file the plugin never created\n"),
    "files/empty.bin": ("file", b""),
    "files/blob.bin": ("file", bytes(range(256)) * 256),
    "escape": ("link", "{canary}"),
    "escape-rel": ("link", "../canary"),
    "escape-file": ("link", "{canary}/data.bin"),
    "dangling": ("link", "{sandbox}/nowhere"),
    "selfloop": ("link", "selfloop"),
}
CANARY: dict[str, tuple[str, Any]] = {
    "data.bin": ("file", hashlib.sha256(b"canary").digest() * 2048),
    "notes.txt": ("file", b"nothing in the sandbox may change this\n"),
    "fs.img": ("ext4", 8 * 1024**2),
    "sub": ("dir", None),
    "sub/inner.txt": ("file", b"inner\n"),
    "empty-dir": ("dir", None),
    "link": ("link", "notes.txt"),
}
COMPONENTS = [
    *_words(
        "stage pods 0 1 2 3 dirs empty full files keep.txt blob.bin empty.bin escape "
        "escape-rel escape-file dangling selfloop ünïcödé .. . new-a new-b data.bin fs.img "
        "notes.txt sub inner.txt empty-dir lost+found"
    ),
    *["with space", "new\nline", "", "x\0y", "n" * 300],
]


def _build(root: Path, layout: dict[str, tuple[str, Any]], names: dict[str, str]) -> None:
    for rel, (kind, value) in layout.items():
        path = root / rel
        if kind == "dir":
            path.mkdir(exist_ok=True)
        elif kind == "file":
            path.write_bytes(value)
        elif kind == "link":
            path.symlink_to(value.format(**names))
        else:  # an ext4 image: mounting it would write its superblock
            with open(path, "wb") as handle:
                handle.truncate(value)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, timeout=60)


def _entry(path: str) -> tuple[Any, ...] | None:
    """What a canary entry is, byte for byte: kind, mode and content (or link target)."""
    try:
        found = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(found.st_mode):
        return ("link", found.st_mode, os.readlink(path))
    if stat.S_ISREG(found.st_mode):
        return ("file", found.st_mode, hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return ("other", found.st_mode, None)


def _signature(path: str) -> tuple[int, ...] | None:
    """A cheap fingerprint checked after every call (any write changes mtime or ctime)."""
    try:
        s = os.lstat(path)
    except OSError:
        return None
    return (s.st_mode, s.st_size, s.st_ino, s.st_mtime_ns, s.st_ctime_ns)


def _walk(root: str) -> list[str]:
    found = [root]
    for top, dirs, files in os.walk(root):
        found += [os.path.join(top, n) for n in dirs + files]
    return found


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + "/") for r in roots)


def _mounts(roots: tuple[str, ...]) -> set[tuple[str, str, str]]:
    """Mounts (id, mount point, source) on or under one of the roots."""
    found = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if _under(point, roots):
                found.add((fields[0], point, fields[fields.index("-") + 2]))
    return found


def _loops(roots: tuple[str, ...]) -> set[tuple[str, str]]:
    """Loop devices (device, backing file) whose backing file is under one of the roots."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = backing.read_text(errors="replace").rstrip("\n")
            if _under(name.removesuffix(" (deleted)"), roots):
                found.add((f"/dev/{backing.parent.parent.name}", name))
    return found


def _force_clean(roots: tuple[str, ...]) -> list[str]:
    """Last resort after the module: lazily unmount and detach what is left under roots,
    in passes (a mount over a parent hides the mounts below it until it is gone)."""
    done = []
    for _ in range(5):
        mounts, loops = _mounts(roots), _loops(roots)
        if not mounts and not loops:
            break
        for _, point, _ in sorted(mounts, key=lambda m: -len(m[1])):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=60)
            done.append(f"umount {point}")
        for device, _ in loops:
            subprocess.run(["losetup", "-d", device], capture_output=True, check=False, timeout=60)
            done.append(f"losetup -d {device}")
    return done


# -- symbolic requests: what hypothesis draws ---------------------------------------------------

UNSET = object()


@dataclasses.dataclass(frozen=True)
class Ref:
    """Something the plugin really made (the index-th of a pool), maybe twisted."""

    pool: str
    index: int
    twist: str = ""


@dataclasses.dataclass(frozen=True)
class PathSpec:
    """A path made of sandbox components (kind composed/relative/long/empty), or one the
    plugin really staged or published at (kind known) with a suffix."""

    kind: str
    parts: tuple[str, ...] = ()
    index: int = 0


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One change to a real serialized Connection; every argument is drawn up front."""

    choice: int
    volume: Any
    device: Any
    pick: int
    junk: str


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    kind: str  # unset, empty, map, junk, real, mutated
    index: int = 0
    value: Any = None
    mutation: Mutation | None = None


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    kind: str  # snapshot, volume, empty
    ref: Any = None


@dataclasses.dataclass(frozen=True)
class Drawn:
    """One symbolic call: a valid request from the tape (or random fields), some fields
    replaced by the drawn random ones, sent ``copies`` times at once."""

    template: bool
    tape: tuple[int, ...]
    fields: dict[str, tuple[bool, Any]]
    mutations: tuple[tuple[int, bool], ...]
    copies: int


def _scatter(value: int) -> int:
    """Hypothesis draws 0, small and boundary integers far more often than the rest; a
    multiplicative hash spreads those over the range, so ``% n`` picks evenly."""
    return ((value + 1) * 2654435761) % 2**32


#: A wide, evenly spread integer: the source of every choice below.
WIDE = st.integers(0, 2**32 - 1).map(_scatter)


def choose(values: list[Any]) -> st.SearchStrategy[Any]:
    """One of the values, evenly (hypothesis' own sampled_from favours the first ones)."""
    return WIDE.map(lambda v: values[v % len(values)])


def either(*branches: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of the strategies, evenly (list one twice to weigh it double)."""
    return WIDE.flatmap(lambda v: branches[v % len(branches)])


SPECIAL = [
    *["", " ", "\0", "a\0b", "line\nbreak", "../escape", ".hidden", "a/b", "é" * 20, "\u202e"],
    *["%s%n", "'; DROP TABLE volumes; --", "null", "{}", "🙂"],
]
#: Long strings, made at draw time (their repr would swamp every strategy's).
HUGE = choose([256, 300, 5000]).map(lambda n: "x" * n)
JUNK = either(choose(SPECIAL), HUGE, st.text(st.characters(codec="utf-8"), max_size=40))
NAMES = [f"fuzz-{i}" for i in range(8)]
SNAPSHOT_NAMES = [f"fuzz-snap-{i}" for i in range(6)]
TWISTS = ["upper", "nul", "newline", "chop", "space", "file", "dotdot", "double"]
NODE_TWISTS = ["crc", "trunc", "v2", "extra", "double"]
MODES = [*Mode.values(), 8, 99, -1, 2**31 - 1]
FS_TYPES = ["", "", "ext4", "ext3", "xfs", "btrfs", "vfat", "EXT4", "ext4\0", "../xfs", "nfs"]
MOUNT_FLAGS = [
    *_words("noatime nodiratime ro rw nosuid nodev noexec sync lazytime junk-flag a,b discard"),
    *["", "data=journal", "errors=remount-ro", "x" * 300],
]
ZONE = "topology.csi-driver.cinder/zone"
BYTES = [0, 1, -1, -(2**63), GiB - 1, GiB, GiB + 1, 2 * GiB, 3 * GiB + 7, 4 * GiB]
BYTES += [2**50, 17 * TiB, 2**62, 2**63 - 1]
INDEX = WIDE


def chance(k: int, n: int) -> st.SearchStrategy[bool]:
    """True k times in n."""
    return WIDE.map(lambda v: v % n < k)


def _bounded(value: int) -> int:
    """Sizes from 4 GiB to 16 TiB are left out: valid, and staging one formats terabytes."""
    return value if value <= 4 * GiB or value > 16 * TiB else 4 * GiB


BYTE_VALUES = either(choose(BYTES), st.integers(0, 4 * GiB), st.integers(-(2**63), 2**63 - 1)).map(
    _bounded
)
CAPACITY = either(
    st.builds(
        lambda r, lim: csi_pb2.CapacityRange(
            **{k: v for k, v in (("required_bytes", r), ("limit_bytes", lim)) if v is not None}
        ),
        st.none() | BYTE_VALUES,
        st.none() | BYTE_VALUES,
    ),
    st.just(UNSET),
)


@st.composite
def capability(draw: Callable[..., Any]) -> csi_pb2.VolumeCapability:
    """mount/block/none, known and unknown access modes, filesystems and mount flags."""
    cap = csi_pb2.VolumeCapability()
    if draw(chance(6, 7)):
        cap.access_mode.mode = draw(choose(MODES))
    kind = draw(choose(["mount", "mount", "block", "none"]))
    if kind == "block":
        cap.block.SetInParent()
    elif kind == "mount":
        cap.mount.SetInParent()
        cap.mount.fs_type = draw(choose(FS_TYPES))
        cap.mount.mount_flags.extend(draw(st.lists(choose(MOUNT_FLAGS), max_size=2)))
        if draw(chance(1, 10)):
            cap.mount.volume_mount_group = draw(JUNK)
    return cap


def string_map(keys: list[str], values: list[str]) -> st.SearchStrategy[dict[str, str]]:
    key = either(choose(keys), JUNK) if keys else JUNK
    value = either(choose(values), JUNK) if values else JUNK
    return st.dictionaries(key, value, max_size=3)


TOPOLOGY = st.builds(lambda s: csi_pb2.Topology(segments=s), string_map([ZONE], ["a", "b", ""]))
REQUIREMENT = st.builds(
    lambda r, p: csi_pb2.TopologyRequirement(requisite=r, preferred=p),
    st.lists(TOPOLOGY, max_size=2),
    st.lists(TOPOLOGY, max_size=2),
)
PARAMETERS = string_map(
    ["backend", "volume_type", "csi.storage.k8s.io/pvc/name", "csi.storage.k8s.io/pv/name"],
    ["embedded", "zoned", "gold", "", "nope"],
)


def ids(pool: str, other: str) -> st.SearchStrategy[Any]:
    """A real id most of the time (from ``pool``, sometimes the wider ``other``), else a
    near miss of one, a well-formed unknown one, or junk."""
    real = st.builds(Ref, st.just(pool), INDEX)
    return either(
        real,
        real,
        real,
        st.builds(Ref, st.just(other), INDEX),
        st.builds(Ref, choose([pool, other]), INDEX, choose(TWISTS)),
        st.uuids().map(str),
        JUNK,
    )


VOLUME_IDS = ids("vol", "any_vol")
SNAPSHOT_IDS = ids("snap", "gone_snap")
NODE_IDS = either(
    st.just(Ref("node", 0)),
    st.just(Ref("node", 0)),
    st.just(Ref("foreign", 0)),
    st.builds(Ref, st.just("node"), st.just(0), choose(NODE_TWISTS)),
    JUNK,
)
PARTS = st.lists(choose(COMPONENTS), max_size=4).map(tuple)
PATHS = either(
    *[st.builds(PathSpec, st.just("composed"), PARTS)] * 5,
    st.builds(PathSpec, st.just("relative"), PARTS),
    st.builds(PathSpec, choose(["long", "empty", "known", "known"]), st.just(()), INDEX),
)
DEVICE_PATHS = either(PATHS, st.builds(Ref, st.just("file"), INDEX))
MUTATIONS = st.builds(Mutation, choose(list(range(16))), VOLUME_IDS, DEVICE_PATHS, INDEX, JUNK)
#: publish_context kinds, weighted; every spec carries a map, a string and a mutation so
#: that any kind can be made of it (a focused NodeStageVolume always mutates).
CONTEXT_KINDS = ["real"] * 2 + ["mutated"] * 4 + ["unset", "empty", "map", "junk"]
CONTEXTS = st.builds(
    ContextSpec,
    choose(CONTEXT_KINDS),
    INDEX,
    either(string_map(["connection", "signature"], ["", "{}", "null"]), JUNK),
    MUTATIONS,
)
SOURCES = either(
    st.builds(SourceSpec, st.just("snapshot"), SNAPSHOT_IDS),
    st.builds(SourceSpec, st.just("volume"), VOLUME_IDS),
    st.just(SourceSpec("empty")),
    st.just(UNSET),
)
MAX_ENTRIES = either(
    choose([0, 1, 2, 5, -1, -(2**31), 2**31 - 1]), st.integers(-(2**31), 2**31 - 1)
)
FIELD_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "volume_id": VOLUME_IDS,
    "source_volume_id": VOLUME_IDS,
    "snapshot_id": SNAPSHOT_IDS,
    "node_id": NODE_IDS,
    "capacity_range": CAPACITY,
    "volume_capabilities": st.lists(capability(), max_size=3),
    "volume_capability": either(*[capability()] * 5, st.just(UNSET)),
    "parameters": PARAMETERS,
    "publish_context": CONTEXTS,
    "staging_target_path": PATHS,
    "target_path": PATHS,
    "volume_path": PATHS,
    "volume_publish_path": PATHS,
    "volume_context": either(st.just({"backend": "embedded"}), string_map([], [])),
    "volume_content_source": SOURCES,
    "accessibility_requirements": either(REQUIREMENT, st.just(UNSET)),
    "accessible_topology": either(TOPOLOGY, st.just(UNSET)),
    "max_entries": MAX_ENTRIES,
    "starting_token": either(st.just(""), st.builds(Ref, st.just("token"), INDEX), VOLUME_IDS),
    "secrets": string_map(["password", "username"], ["x"]),
    "mutable_parameters": string_map(["iops"], ["100"]),
}


def field_strategy(rpc: str, field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.name == "name":
        pool = SNAPSHOT_NAMES if rpc == "CreateSnapshot" else NAMES
        return either(*[choose(pool)] * 3, JUNK)
    if field.name in FIELD_STRATEGIES:
        return FIELD_STRATEGIES[field.name]
    return st.booleans() if field.type == FieldDescriptor.TYPE_BOOL else JUNK


def drawn_calls(rpc: str) -> st.SearchStrategy[Drawn]:
    """The symbolic calls of one RPC: their shape depends on nothing but the RPC."""
    fields = RPCS[rpc][1].DESCRIPTOR.fields
    return st.builds(
        Drawn,
        chance(6, 10),
        st.lists(INDEX, min_size=8, max_size=8).map(tuple),
        st.fixed_dictionaries(
            {f.name: st.tuples(chance(4, 5), field_strategy(rpc, f)) for f in fields}
        ),
        st.lists(st.tuples(INDEX, chance(1, 4)), max_size=2).map(tuple),
        WIDE.map(lambda n: 1 if n % 11 < 9 else n % 11 - 7),
    )


DRAWN = {rpc: drawn_calls(rpc) for rpc in RPCS}
#: The field of a valid request replaced a third of the time (beyond the random ones):
#: what reaches furthest into the plugin when it is wrong.
FOCUS = {
    "NodeStageVolume": "publish_context",
    "NodePublishVolume": "target_path",
    "NodeUnpublishVolume": "target_path",
    "NodeUnstageVolume": "staging_target_path",
    "CreateVolume": "volume_capabilities",
    "ControllerExpandVolume": "capacity_range",
    "NodeExpandVolume": "volume_path",
}


# -- the world the fuzzer knows ---------------------------------------------------------------


@dataclasses.dataclass
class Vol:
    """A volume the plugin really created, and what the fuzzer saw happen to it."""

    id: str
    block: bool
    capacity: int
    context: dict[str, str] | None = None
    staging: str | None = None
    targets: list[str] = dataclasses.field(default_factory=list)
    deleted: bool = False


@dataclasses.dataclass
class Failure:
    """One distinct violation, with the smallest request that showed it."""

    rpc: str
    code: str
    message: str
    request: str
    size: int
    count: int = 1


@dataclasses.dataclass
class Outcome:
    code: Code
    details: str
    response: Any
    seconds: float


def _text(request: Message, limit: int = 1500) -> str:
    text = text_format.MessageToString(request, as_one_line=True, as_utf8=True)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _normalized(message: str) -> str:
    """A failure message with the request's own values blanked, to group failures."""
    text = re.sub(r"\s*\(request id \w+\)", "", message)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<s>", text)
    text = re.sub(r"/\S*", "<path>", text)
    return re.sub(r"\d+", "<n>", text)[:300]


TWIST = {
    "upper": str.upper,
    "nul": lambda s: s + "\0",
    "newline": lambda s: s + "\n",
    "chop": lambda s: s[:-1],
    "space": lambda s: " " + s,
    "file": lambda s: "volume-" + s,
    "dotdot": lambda s: s + "/..",
    "double": lambda s: s * 2,
    "crc": lambda s: s[:-1] + ("0" if s[-1:] != "0" else "1"),
    "trunc": lambda s: s[:40],
    "v2": lambda s: s.replace("v1;", "v2;", 1),
    "extra": lambda s: s + ";x=1",
}


class World:
    """The running plugin, what the fuzzer made on it, and everything it observed."""

    def __init__(self, root: Path, process: plugin.PluginProcess) -> None:
        self.sandbox = str(root / "sandbox")
        self.canary = str(root / "canary")
        self.plugin_dir = str(root / "plugin")
        self.volumes_dir = str(root / "plugin" / "volumes" / "embedded")
        self.watched = (self.sandbox, self.canary, self.plugin_dir)
        self.process = process
        self.stubs = plugin.Stubs(process)
        self.pool = futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="fuzz")
        self.node_id = self.stubs.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id
        self.foreign_node_id, _ = node_identity.encode("fuzz-other-node", {"ip": "192.0.2.9"}, 2)
        self.offered = self._offered()
        self.vols: dict[str, Vol] = {}
        self.snapshots: list[str] = []
        self.gone_snapshots: list[str] = []
        self.tokens: list[str] = []
        self.contexts: list[dict[str, str]] = []
        self.staged: list[tuple[str, str]] = []
        self.published: list[tuple[str, str]] = []
        self.published_paths: set[str] = set()
        self.used: dict[str, set[str]] = {k: set() for k in ("vname", "sname", "vid", "sid")}
        self.calls: Counter[str] = Counter()
        self.codes: dict[str, Counter[str]] = {rpc: Counter() for rpc in RPCS}
        self.slowest: dict[str, float] = {}
        self.failures: dict[tuple[str, str, str], Failure] = {}
        self.foreign: list[dict[str, str]] = []
        self.cross_volume: list[dict[str, str]] = []
        self.shadowing: list[dict[str, str]] = []
        self.origins: dict[Any, tuple[str, str]] = {}
        self._episodes: set[tuple[str, str]] = set()
        self._tainted: dict[str, str] = {}
        self._known_mounts: set[tuple[str, str, str]] = set()
        self._known_loops: set[tuple[str, str]] = set()
        self.canary_baseline = {p: _entry(p) for p in _walk(self.canary)}
        self._canary_bytes = {
            p: Path(p).read_bytes() for p, e in self.canary_baseline.items() if e and e[0] == "file"
        }
        self._canary_sigs = {p: _signature(p) for p in self.canary_baseline}

    def _offered(self) -> set[str]:
        have = {
            "controller": self.stubs.controller.ControllerGetCapabilities(
                csi_pb2.ControllerGetCapabilitiesRequest()
            ).capabilities,
            "node": self.stubs.node.NodeGetCapabilities(
                csi_pb2.NodeGetCapabilitiesRequest()
            ).capabilities,
        }
        names = {k: {type(c.rpc).Type.Name(c.rpc.type) for c in v} for k, v in have.items()}
        return {rpc for rpc in RPCS if rpc not in NEEDS or NEEDS[rpc][1] in names[NEEDS[rpc][0]]}

    def allowed(self, rpc: str) -> set[Code]:
        if rpc not in self.offered:
            return {Code.UNIMPLEMENTED}
        return {Code.OK} | SPEC_CODES.get(rpc, set()) | GENERAL_CODES

    # -- resolving symbolic requests ------------------------------------------------------------
    def _pool(self, name: str) -> list[str]:
        live = [v.id for v in self.vols.values() if not v.deleted]
        files = [f"{self.volumes_dir}/volume-{v}" for v in self.vols]
        files += [f"{self.volumes_dir}/snapshot-{s}" for s in self.snapshots]
        files += [self.volumes_dir, f"{self.volumes_dir}/volume-missing"]
        return {
            "vol": live,
            "any_vol": list(self.vols),
            "snap": self.snapshots,
            "gone_snap": self.gone_snapshots,
            "token": self.tokens,
            "node": [self.node_id],
            "foreign": [self.foreign_node_id],
            "file": files,
        }[name]

    def resolve(self, spec: Any) -> Any:
        if isinstance(spec, Ref):
            pool = self._pool(spec.pool)
            value = pool[spec.index % len(pool)] if pool else f"{spec.index:08x}-0-4-8-0"
            return TWIST[spec.twist](value) if spec.twist else value
        if isinstance(spec, PathSpec):
            return self.path(spec)
        if isinstance(spec, ContextSpec):
            return self.context(spec)
        if isinstance(spec, SourceSpec):
            if spec.kind == "snapshot":
                return csi_pb2.VolumeContentSource(
                    snapshot=csi_pb2.VolumeContentSource.SnapshotSource(
                        snapshot_id=self.resolve(spec.ref)
                    )
                )
            if spec.kind == "volume":
                return csi_pb2.VolumeContentSource(
                    volume=csi_pb2.VolumeContentSource.VolumeSource(
                        volume_id=self.resolve(spec.ref)
                    )
                )
            return csi_pb2.VolumeContentSource()
        return spec

    def path(self, spec: PathSpec) -> str:
        parts = list(spec.parts)
        if spec.kind == "composed":
            path = "/".join([self.sandbox, *parts])
        elif spec.kind == "relative":  # the plugin's cwd is the sandbox
            path = "/".join(parts)
        elif spec.kind == "long":
            path = (
                self.sandbox
                + ["/" + "a" * 5000, ("/" + "d" * 250) * 20, "/" + "b" * 256][spec.index % 3]
            )
        elif spec.kind == "known":
            known = [p for v in self.vols.values() for p in [v.staging, *v.targets] if p]
            base = known[spec.index % len(known)] if known else self.sandbox
            suffixes = ["", "/", "/.", "//", "/../" + base.rsplit("/", 1)[-1]]
            path = base + suffixes[spec.index % len(suffixes)]
        else:
            path = ""
        return path if not path or self.confined(path) else self.sandbox + "/new-a"

    def confined(self, path: str) -> bool:
        """Whether a path (relative ones in the plugin's cwd, the sandbox) stays in the
        sandbox or the canary, lexically and through symlinks."""
        probe = path.replace("\0", "")
        base = probe if os.path.isabs(probe) else os.path.join(self.sandbox, probe)
        roots = (self.sandbox, self.canary)
        return _under(os.path.normpath(base), roots) and _under(os.path.realpath(base), roots)

    def context(self, spec: ContextSpec, volume_id: str = "") -> Any:
        """A publish_context; a real or mutated one is mostly the document of the
        request's own volume (another volume's is refused before anything deep runs)."""
        own = self.vols.get(volume_id)
        pool = [own.context] if own and own.context and spec.index % 8 else self.contexts
        if spec.kind == "unset":
            return UNSET
        junk = spec.value if isinstance(spec.value, str) else json.dumps(spec.value)
        if spec.kind == "map":
            return spec.value if isinstance(spec.value, dict) else {"connection": junk}
        if spec.kind == "junk":
            return {"connection": junk}
        if spec.kind == "empty" or not pool:
            return {}
        real = pool[spec.index % len(pool)]
        if spec.kind == "real" or spec.mutation is None:
            return dict(real)
        return {**real, "connection": self.mutate(real["connection"], spec.mutation)}

    def mutate(self, text: str, m: Mutation) -> str:
        """A real serialized Connection with one thing changed."""
        doc = json.loads(text)
        try:
            conn = doc["connections"][0]
            info = conn["connection_info"]
            if m.choice in (1, 2, 3, 12, 13, 14, 15):
                # A document issued while the volume was attached names the attached device,
                # and the node would not connect again: drop it so os-brick meets the change.
                conn.pop("device", None)
                conn["status"] = "connected"
            if m.choice == 0:
                conn["volume_id"] = self.resolve(m.volume)
            elif m.choice in (1, 2):
                info["data"]["device_path"] = self.resolve(m.device)
            elif m.choice in (3, 12, 13, 14, 15):  # what os-brick connects with
                types = ["local", "iscsi", "rbd", "nvmeof", "fibre_channel", "nfs", "", "x", 7]
                info["driver_volume_type"] = types[m.pick % len(types)]
            elif m.choice == 4:
                target = [doc, conn, info, info["data"]][m.pick % 4]
                del target[sorted(target)[m.pick % len(target)]]
            elif m.choice == 5:
                key = ["format", "version", "class", "root"][m.pick % 4]
                doc[key] = [None, 2, "Volume", "junk", [], {}][m.pick % 6]
            elif m.choice == 6:
                info["data"] = [None, [], "x", {}, {"device_path": None}][m.pick % 5]
            elif m.choice == 7:
                doc["backends"] = [[], [{"volume_backend_name": "nope"}], None][m.pick % 3]
            elif m.choice == 8:
                doc["connections"] = [[], [conn, conn], None][m.pick % 3]
            elif m.choice == 9:
                conn["attach_mode"] = ["ro", "junk", None][m.pick % 3]
            else:
                raw = json.dumps(doc)
                cut = m.pick % (len(raw) + 1)
                return raw[:cut] + (m.junk + raw[cut:] if m.choice == 10 else "")
        except (KeyError, IndexError, TypeError, ZeroDivisionError):
            pass
        return json.dumps(doc)

    def stage_dir(self, vol: Vol) -> str:
        """A staging directory of the volume's own, made as a CO does before staging."""
        path = os.path.join(self.sandbox, "stage", vol.id[:8])
        with contextlib.suppress(OSError):
            os.makedirs(path, exist_ok=True)
        return path

    def template(self, rpc: str, tape: tuple[int, ...]) -> dict[str, Any] | None:
        """A request a CO could send, from what really exists (None when nothing fits)."""

        def pick(seq: list[Any], k: int) -> Any:
            return seq[tape[k] % len(seq)] if seq else None

        live = [v for v in self.vols.values() if not v.deleted]
        vol = pick(live, 0)
        mode = [Mode.SINGLE_NODE_WRITER] * 3 + [
            Mode.SINGLE_NODE_SINGLE_WRITER,
            Mode.SINGLE_NODE_MULTI_WRITER,
            Mode.SINGLE_NODE_READER_ONLY,
        ]
        fs_type = pick(["", "", "ext4", "xfs"], 2)

        def cap(block: bool) -> csi_pb2.VolumeCapability:
            return valid_capability(block=block, fs_type=fs_type, mode=pick(mode, 3))

        if rpc == "CreateVolume":
            values = {
                "name": pick(NAMES, 1),
                "capacity_range": csi_pb2.CapacityRange(
                    required_bytes=pick([GiB, GiB, 2 * GiB, GiB + 1], 4)
                ),
                "volume_capabilities": [cap(tape[5] % 4 == 0)],
            }
            if tape[6] % 4 == 0:
                values["parameters"] = {"backend": "embedded"}
            if tape[6] % 6 == 1 and self.snapshots:
                values["volume_content_source"] = self.resolve(
                    SourceSpec("snapshot", Ref("snap", tape[7]))
                )
            elif tape[6] % 6 == 3 and live:
                values["volume_content_source"] = self.resolve(
                    SourceSpec("volume", Ref("vol", tape[7]))
                )
            return values
        if rpc in ("ListVolumes", "ListSnapshots"):
            token = pick(self.tokens, 1) if self.tokens and tape[2] % 2 else ""
            return {"max_entries": tape[3] % 6, "starting_token": token}
        if rpc == "GetCapacity":
            return {"volume_capabilities": [cap(tape[5] % 4 == 0)]}
        if rpc in ("DeleteSnapshot", "GetSnapshot") and self.snapshots:
            return {"snapshot_id": pick(self.snapshots, 1)}
        if vol is None:
            return None
        if rpc == "CreateSnapshot":
            return {"source_volume_id": vol.id, "name": pick(SNAPSHOT_NAMES, 1)}
        if rpc in ("DeleteVolume", "ControllerGetVolume"):
            return {"volume_id": vol.id}
        if rpc == "ControllerPublishVolume":
            return {
                "volume_id": vol.id,
                "node_id": self.node_id,
                "volume_capability": cap(vol.block),
            }
        if rpc == "ControllerUnpublishVolume":
            return {"volume_id": vol.id, "node_id": pick([self.node_id, ""], 1)}
        if rpc == "ValidateVolumeCapabilities":
            return {"volume_id": vol.id, "volume_capabilities": [cap(vol.block)]}
        if rpc == "ControllerExpandVolume":
            wanted = min(vol.capacity + pick([0, GiB], 1), 4 * GiB)
            return {
                "volume_id": vol.id,
                "capacity_range": csi_pb2.CapacityRange(required_bytes=wanted),
            }
        if rpc == "NodeStageVolume":
            ready = [v for v in live if v.context and v.capacity <= 4 * GiB]
            fresh = [v for v in ready if not v.staging]  # a stage that really attaches
            vol = pick(fresh if fresh and tape[4] % 4 else ready, 1)
            if vol is None:
                return None
            return {
                "volume_id": vol.id,
                "staging_target_path": vol.staging or self.stage_dir(vol),
                "volume_capability": cap(vol.block),
                "publish_context": dict(vol.context),
            }
        vol = pick([v for v in live if v.staging], 1)
        if vol is None:
            return None
        target = f"{self.sandbox}/pods/{tape[2] % 4}/{vol.id[:8]}-{tape[3] % 3}"
        paths = [vol.staging, *vol.targets]
        if rpc == "NodeUnstageVolume":
            return {"volume_id": vol.id, "staging_target_path": vol.staging}
        if rpc == "NodePublishVolume":
            if vol.targets and tape[4] % 2:
                target = pick(vol.targets, 5)
            return {
                "volume_id": vol.id,
                "staging_target_path": vol.staging,
                "target_path": target,
                "volume_capability": cap(vol.block),
                "readonly": tape[6] % 4 == 0,
            }
        if rpc == "NodeUnpublishVolume":
            return {"volume_id": vol.id, "target_path": pick(vol.targets or [target], 5)}
        if rpc == "NodeGetVolumeStats":
            return {"volume_id": vol.id, "volume_path": pick(paths, 5)}
        if rpc == "NodeGetVolumeHealth":
            return {"volume_id": vol.id, "staging_target_path": vol.staging}
        if rpc == "NodeExpandVolume":
            return {
                "volume_id": vol.id,
                "volume_path": pick(paths, 5),
                "staging_target_path": vol.staging,
                "capacity_range": csi_pb2.CapacityRange(required_bytes=vol.capacity),
            }
        return None

    def build(self, rpc: str, drawn: Drawn) -> Message:
        """The concrete request: a valid one with up to two fields replaced by the drawn
        random ones, or (half the time, or when nothing valid fits) random fields."""
        names = list(drawn.fields)
        values = self.template(rpc, drawn.tape) if drawn.template else None
        if values is None:
            values = {k: v for k, (present, v) in drawn.fields.items() if present}
            replaced = list(values)
        else:
            replaced = []
            if rpc in FOCUS and drawn.tape[7] // 7 % 3 == 0:  # the field steering deep code
                focused = drawn.fields[FOCUS[rpc]][1]
                if isinstance(focused, ContextSpec):
                    focused = dataclasses.replace(focused, kind="mutated")
                values[FOCUS[rpc]] = focused
                replaced.append(FOCUS[rpc])
            for index, unset in drawn.mutations:
                name = names[index % len(names)]
                values[name] = UNSET if unset else drawn.fields[name][1]
                replaced.append(name)
        for name in sorted(set(replaced), key=names.index):  # volume_id before publish_context
            spec = values[name]
            if isinstance(spec, ContextSpec):
                volume_id = values.get("volume_id")
                values[name] = self.context(spec, volume_id if isinstance(volume_id, str) else "")
            else:
                values[name] = self.resolve(spec)
        return RPCS[rpc][1](**{k: v for k, v in values.items() if v is not UNSET})

    # -- calling ------------------------------------------------------------------------------
    def invoke(self, rpc: str, request: Message) -> Outcome:
        started = time.monotonic()
        method = getattr(getattr(self.stubs, RPCS[rpc][0].lower()), rpc)
        try:
            response = method(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details() or "", None, time.monotonic() - started)
        return Outcome(Code.OK, "", response, time.monotonic() - started)

    def call(self, rpc: str, request: Message, copies: int = 1) -> Outcome:
        """Send the request (``copies`` times at once, racing itself), record every
        answer, learn from successes, then look for side effects on the host."""
        for field, kind in (
            ("name", "sname" if rpc == "CreateSnapshot" else "vname"),
            ("volume_id", "vid"),
            ("source_volume_id", "vid"),
            ("snapshot_id", "sid"),
        ):
            if getattr(request, field, ""):
                self.used[kind].add(getattr(request, field))
        if copies == 1:
            outcomes = [self.invoke(rpc, request)]
        else:
            outcomes = list(self.pool.map(lambda _: self.invoke(rpc, request), range(copies)))
        for outcome in outcomes:
            self._record(rpc, request, outcome)
        for outcome in outcomes:
            if outcome.code == Code.OK:
                self._learn(rpc, request, outcome.response)
        self._check_host(rpc, request)
        return outcomes[0]

    def _record(self, rpc: str, request: Message, outcome: Outcome) -> None:
        self.calls[rpc] += 1
        self.codes[rpc][outcome.code.name] += 1
        self.slowest[rpc] = max(self.slowest.get(rpc, 0.0), outcome.seconds)
        if outcome.code not in self.allowed(rpc):
            problem = outcome.details
        elif outcome.code != Code.OK and not outcome.details.strip():
            problem = "(the status carries no message)"
        else:
            return
        key = (rpc, outcome.code.name, _normalized(problem))
        size = request.ByteSize()
        known = self.failures.get(key)
        if known is None:
            self.failures[key] = Failure(rpc, outcome.code.name, problem, _text(request), size)
            return
        known.count += 1
        if size < known.size:
            known.request, known.size, known.message = _text(request), size, problem

    def _learn(self, rpc: str, request: Any, response: Any) -> None:
        """Successes grow the pools later requests draw from."""
        vol = self.vols.get(getattr(request, "volume_id", ""))
        if rpc == "CreateVolume":
            caps = list(request.volume_capabilities)
            block = bool(caps) and caps[0].HasField("block")
            new = Vol(response.volume.volume_id, block, response.volume.capacity_bytes)
            self.vols.setdefault(new.id, new).deleted = False
        elif rpc == "DeleteVolume" and vol:
            vol.deleted = True
        elif rpc == "ControllerPublishVolume" and vol:
            context = dict(response.publish_context)
            if request.node_id == self.node_id:
                vol.context = context
            if context not in self.contexts:
                self.contexts.append(context)
        elif rpc == "ControllerExpandVolume" and vol:
            vol.capacity = response.capacity_bytes
        elif rpc == "CreateSnapshot" and response.snapshot.snapshot_id not in self.snapshots:
            self.snapshots.append(response.snapshot.snapshot_id)
        elif rpc == "DeleteSnapshot" and request.snapshot_id in self.snapshots:
            self.snapshots.remove(request.snapshot_id)
            self.gone_snapshots.append(request.snapshot_id)
        elif rpc in ("ListVolumes", "ListSnapshots") and response.next_token:
            self.tokens = [*self.tokens[-20:], response.next_token]
        elif rpc == "NodeStageVolume":
            self.staged.append((request.volume_id, request.staging_target_path))
            if vol:
                vol.staging = request.staging_target_path
        elif rpc == "NodeUnstageVolume" and vol and vol.staging:
            if os.path.realpath(vol.staging) == os.path.realpath(request.staging_target_path):
                vol.staging = None
        elif rpc == "NodePublishVolume":
            self.published.append((request.volume_id, request.target_path))
            target = os.path.join(self.sandbox, request.target_path)
            self.published_paths |= {os.path.abspath(target), os.path.realpath(target)}
            if vol:
                vol.targets.append(request.target_path)
        elif rpc == "NodeUnpublishVolume" and vol and request.target_path in vol.targets:
            vol.targets.remove(request.target_path)

    # -- side effects on the host ---------------------------------------------------------------
    def _check_host(self, rpc: str, request: Any) -> None:
        """Attribute new mounts and loop devices to this call; find what it did to the
        canary (then restore it) or to another volume's mounts or to the sandbox."""
        origin = f"{rpc}({_text(request, 600)})"
        about = getattr(request, "volume_id", None)
        mounts, loops = _mounts(self.watched), _loops(self.watched)
        for item in (mounts - self._known_mounts) | (loops - self._known_loops):
            self.origins.setdefault(item, (origin, about or ""))
        for new in mounts - self._known_mounts:
            hidden = [m[1] for m in self._known_mounts if m[1].startswith(new[1] + "/")]
            if hidden:
                self.shadowing.append(
                    {
                        "request": origin,
                        "what": f"mounted on {new[1]}, "
                        f"hiding the mounts at {', '.join(sorted(hidden))}",
                    }
                )
        for gone in self._known_mounts - mounts:
            made_by, made_for = self.origins.get(gone, ("?", ""))
            if made_for and about is not None and made_for != about:
                self.cross_volume.append(
                    {
                        "request": origin,
                        "what": f"unmounted {gone[1]}, mounted for volume {made_for} by {made_by}",
                    }
                )
        self._known_mounts, self._known_loops = mounts, loops
        points = [m[1] for m in mounts]
        backing = {b.removesuffix(" (deleted)") for _, b in loops}

        def covered(path: str) -> bool:
            return any(path == p or path.startswith(p + "/") for p in points)

        issues: dict[tuple[str, str], str] = {}
        for point in points:
            if _under(point, (self.canary,)):
                issues[("mounted on", point)] = "a mount on the canary"
        for path in backing:
            if _under(path, (self.canary,)):
                issues[("loop device on", path)] = "a loop device maps a canary file"
                self._tainted.setdefault(path, origin)
        for path, tainted_by in list(self._tainted.items()):
            if path not in backing:  # unmapped again: what did it do while mapped?
                if _entry(path) != self.canary_baseline.get(path):
                    self.foreign.append(
                        {
                            "request": tainted_by,
                            "what": f"changed {path} while a loop device mapped it",
                        }
                    )
                    self._restore_canary(path)
                del self._tainted[path]
        for path, expected in self._canary_sigs.items():
            if not (covered(path) or path in backing or _signature(path) == expected):
                now, was = _entry(path), self.canary_baseline[path]
                issues[("changed", path)] = f"{now}, was {was}" if now != was else "touched"
                self._restore_canary(path)
        for path in _walk(self.canary):
            if path not in self.canary_baseline and not covered(path):
                issues[("created", path)] = "created in the canary"
                with contextlib.suppress(OSError):
                    os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
        for rel in SKELETON:
            path = os.path.join(self.sandbox, rel)
            if covered(path) or os.path.lexists(path):
                continue
            if not {path, os.path.realpath(path)} & self.published_paths:
                issues[("removed", path)] = "a sandbox path the plugin never published to"
            with contextlib.suppress(OSError):
                _build(
                    Path(self.sandbox),
                    {rel: SKELETON[rel]},
                    {"sandbox": self.sandbox, "canary": self.canary},
                )
        for key, what in issues.items():
            if key not in self._episodes:
                self.foreign.append({"request": origin, "what": f"{key[0]} {key[1]}: {what}"})
        self._episodes = {k for k in issues if k[0] in ("mounted on", "loop device on")}
        if issues:  # restored: the new fingerprints (of what is visible) are the reference
            self._canary_sigs = {
                p: old if covered(p) or p in backing else _signature(p)
                for p, old in self._canary_sigs.items()
            }

    def _restore_canary(self, path: str) -> None:
        kind = self.canary_baseline[path]
        with contextlib.suppress(OSError):
            if kind is None:
                return
            if kind[0] == "file":
                if os.path.isdir(path) and not os.path.islink(path):
                    os.rmdir(path)
                elif os.path.islink(path):
                    os.unlink(path)
                Path(path).write_bytes(self._canary_bytes[path])
            elif kind[0] == "link" and not os.path.lexists(path):
                os.symlink(kind[2], path)
            elif kind[0] == "other" and not os.path.lexists(path):
                os.mkdir(path)
            if kind[0] != "link":
                os.chmod(path, stat.S_IMODE(kind[1]))
        self._canary_sigs[path] = _signature(path)


# -- the run ----------------------------------------------------------------------------------


def seed_world(world: World) -> None:
    """Real objects to start from: volumes (ext4, xfs, block), a snapshot, exports to this
    node, stages and a publish, made through the same recorded calls."""
    for index, (block, fs_type) in enumerate(
        [(False, ""), (False, "xfs"), (True, ""), (False, "")]
    ):
        world.call(
            "CreateVolume",
            csi_pb2.CreateVolumeRequest(
                name=NAMES[index],
                capacity_range=csi_pb2.CapacityRange(required_bytes=GiB),
                volume_capabilities=[valid_capability(block=block, fs_type=fs_type)],
            ),
        )
    vols = list(world.vols.values())
    for vol in vols:
        world.call(
            "ControllerPublishVolume",
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=vol.id,
                node_id=world.node_id,
                volume_capability=valid_capability(block=vol.block),
            ),
        )
    world.call(
        "CreateSnapshot",
        csi_pb2.CreateSnapshotRequest(source_volume_id=vols[0].id, name=SNAPSHOT_NAMES[0]),
    )
    for vol in vols[:3]:
        world.call(
            "NodeStageVolume",
            csi_pb2.NodeStageVolumeRequest(
                volume_id=vol.id,
                staging_target_path=world.stage_dir(vol),
                volume_capability=valid_capability(block=vol.block),
                publish_context=vol.context,
            ),
        )
    if vols[0].staging:
        world.call(
            "NodePublishVolume",
            csi_pb2.NodePublishVolumeRequest(
                volume_id=vols[0].id,
                staging_target_path=vols[0].staging,
                target_path=f"{world.sandbox}/pods/0/seed",
                volume_capability=valid_capability(),
            ),
        )


def fuzz(world: World, examples: int, rpcs: list[str] = WEIGHTED_RPCS) -> None:
    """``examples`` calls, each of an RPC drawn from ``rpcs`` (evenly: see WIDE)."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=False,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate),  # nothing to shrink: failures are recorded
    )
    @given(st.data())
    def one_call(data: st.DataObject) -> None:
        rpc = rpcs[data.draw(WIDE, label="rpc") % len(rpcs)]
        drawn = data.draw(DRAWN[rpc], label="call")
        world.call(rpc, world.build(rpc, drawn), drawn.copies)

    if SEED is not None:
        one_call = seed(int(SEED))(one_call)
    one_call()


def fuzz_every_rpc(world: World, examples: int) -> None:
    """The interleaved run, then a top-up for any RPC drawn less than a few times."""
    fuzz(world, examples)
    least = 10 if examples >= 1000 else 1
    for rpc in RPCS:
        if world.calls[rpc] < least:
            fuzz(world, least - world.calls[rpc], [rpc])


def probe_locks(world: World) -> list[str]:
    """Every name and id used must be free again: a request that takes the lock and is then
    refused for a missing field must get that refusal, not ABORTED."""
    probes: list[tuple[str, Message]] = []
    for value in sorted(world.used["vname"]):
        probes.append(("CreateVolume", csi_pb2.CreateVolumeRequest(name=value)))
    for value in sorted(world.used["sname"]):
        probes.append(("CreateSnapshot", csi_pb2.CreateSnapshotRequest(name=value)))
    for value in sorted(world.used["vid"]):
        probes.append(
            ("ControllerExpandVolume", csi_pb2.ControllerExpandVolumeRequest(volume_id=value))
        )
        probes.append(("NodeExpandVolume", csi_pb2.NodeExpandVolumeRequest(volume_id=value)))
    for value in sorted(world.used["sid"]):
        probes.append(("DeleteSnapshot", csi_pb2.DeleteSnapshotRequest(snapshot_id=value)))
    held = []
    for rpc, request in probes:
        outcome = world.invoke(rpc, request)
        if outcome.code in (Code.ABORTED, Code.DEADLINE_EXCEEDED):
            held.append(f"{rpc}({_text(request, 300)}) -> {outcome.code.name}: {outcome.details}")
    return held


def clean_up(world: World) -> list[str]:
    """Undo everything through the CSI API in the order a CO would, retrying in rounds as
    a CO does (a mount can hide another until it is gone) until a round changes nothing;
    report the calls that still fail."""
    last: dict[str, tuple[str, Message, Outcome]] = {}
    for _ in range(6):
        calls: list[tuple[str, Message, tuple[Code, ...]]] = []
        for vid, target in reversed(world.published):
            request: Message = csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target)
            calls.append(("NodeUnpublishVolume", request, (Code.OK, Code.NOT_FOUND)))
        for vid, staging in reversed(world.staged):
            request = csi_pb2.NodeUnstageVolumeRequest(volume_id=vid, staging_target_path=staging)
            calls.append(("NodeUnstageVolume", request, (Code.OK,)))
        volumes = world.stubs.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60)
        ids = [e.volume.volume_id for e in volumes.entries]
        for vid in ids:
            request = csi_pb2.ControllerUnpublishVolumeRequest(volume_id=vid)
            calls.append(("ControllerUnpublishVolume", request, (Code.OK,)))
        snapshots = world.stubs.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=60)
        for entry in snapshots.entries:
            request = csi_pb2.DeleteSnapshotRequest(snapshot_id=entry.snapshot.snapshot_id)
            calls.append(("DeleteSnapshot", request, (Code.OK,)))
        for vid in ids:
            calls.append(("DeleteVolume", csi_pb2.DeleteVolumeRequest(volume_id=vid), (Code.OK,)))
        failed_before = {k for k, (_, _, o) in last.items() if o.code != Code.OK}
        for rpc, request, ok in calls:
            outcome = world.invoke(rpc, request)
            key = f"{rpc}({_text(request, 400)})"
            last[key] = (
                rpc,
                request,
                outcome if outcome.code not in ok else Outcome(Code.OK, "", None, 0),
            )
        failed = {k for k, (_, _, o) in last.items() if o.code != Code.OK}
        if not failed or failed == failed_before:
            break
    problems = [
        f"{k} -> {o.code.name}: {o.details[:400]}"
        for k, (_, _, o) in last.items()
        if o.code != Code.OK
    ]
    left = world.stubs.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=60).entries
    return problems + [f"volume {e.volume.volume_id} still listed at the end" for e in left]


@dataclasses.dataclass
class Results:
    world: World
    seconds: float
    held_locks: list[str]
    cleanup_problems: list[str]
    leftovers_running: list[str]
    leftovers_stopped: list[str]
    exit_code: int
    canary_diff: list[str]
    summary_path: Path


def _leftovers(world: World) -> list[str]:
    """csi_support's leftovers under the sandbox, canary and plugin directory, each with
    the call after which it first appeared."""
    origins: dict[str, str] = {}
    for item, (origin, _) in world.origins.items():
        origins[item[1] if len(item) == 3 else item[0]] = origin
    found = sorted(
        {
            line
            for root in (world.sandbox, world.canary, world.plugin_dir)
            for line in plugin.leftovers(Path(root))
        }
    )
    described = []
    for line in found:
        kind, rest = line.split(" ", 1)
        key = rest if kind == "mount" else rest.split()[0]
        described.append(f"{line} (made by {origins.get(key, 'unknown')})")
    return described


def _summary(results: Results) -> dict[str, Any]:
    world = results.world
    return {
        "profile": PROFILE,
        "examples": EXAMPLES,
        "seed": SEED or "derandomized",
        "seconds": round(results.seconds, 1),
        "calls": sum(world.calls.values()),
        "rpcs": {
            rpc: {
                "cases": world.calls[rpc],
                "codes": dict(world.codes[rpc]),
                "slowest_s": round(world.slowest.get(rpc, 0.0), 3),
                "offered": rpc in world.offered,
            }
            for rpc in RPCS
        },
        "failures": [dataclasses.asdict(f) for f in world.failures.values()],
        "foreign_paths_touched": world.foreign,
        "cross_volume": world.cross_volume,
        "shadowing_mounts (not asserted)": world.shadowing,
        "held_locks": results.held_locks,
        "cleanup_problems": results.cleanup_problems,
        "leftovers": results.leftovers_running,
        "leftovers_after_stop": results.leftovers_stopped,
        "canary_diff": results.canary_diff,
        "plugin_exit_code": results.exit_code,
        "plugin_log": str(world.process.log_path),
    }


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Results]:
    """Runs the whole fuzzing session once for the module, then cleans up and checks."""
    root = tmp_path_factory.mktemp("fuzz").resolve()
    for sub in ("sandbox", "canary", "plugin"):
        (root / sub).mkdir()
    names = {"sandbox": str(root / "sandbox"), "canary": str(root / "canary")}
    _build(root / "canary", CANARY, names)
    _build(root / "sandbox", SKELETON, names)
    plugin_dir = root / "plugin"
    config = plugin.write_config(
        plugin_dir,
        backends=[
            plugin.file_backend(plugin_dir / "volumes"),
            plugin.file_backend(plugin_dir / "volumes", name="zoned", topology=[{ZONE: "b"}]),
        ],
        volume_types={"gold": {"extra_specs": {"tier": "gold"}}},
        # The node mounts only in the sandbox: the canary is outside its mount_roots.
        node={"topology": {ZONE: "a"}, "mount_roots": [str(root / "sandbox")]},
    )
    process = plugin.PluginProcess(config, "all", plugin_dir / "all.sock", plugin_dir / "all.log")
    watched = (str(root / "sandbox"), str(root / "canary"), str(plugin_dir))
    cwd = os.getcwd()
    os.chdir(root / "sandbox")  # relative paths the fuzzer sends resolve in the sandbox
    try:
        process.start()
    finally:
        os.chdir(cwd)
    try:
        world = World(root, process)
        try:
            started = time.monotonic()
            seed_world(world)
            fuzz_every_rpc(world, EXAMPLES)
            seconds = time.monotonic() - started
            held = probe_locks(world)
            problems = clean_up(world)
            leftovers_running = _leftovers(world)
        finally:
            world.stubs.close()
            world.pool.shutdown()
    finally:
        exit_code = process.stop()
        leftovers_stopped = _leftovers(world) if "world" in locals() else []
        forced = _force_clean(watched)  # never leave the host with our mounts
    canary_diff = [
        f"{path}: {_entry(path)} instead of {entry}"
        for path, entry in world.canary_baseline.items()
        if _entry(path) != entry
    ]
    canary_diff += [f"{p}: new" for p in _walk(world.canary) if p not in world.canary_baseline]
    forced_text = [f"forced: {f}" for f in forced]
    results = Results(
        world,
        seconds,
        held,
        problems,
        leftovers_running,
        leftovers_stopped + forced_text,
        exit_code,
        canary_diff,
        root / "fuzz-summary.json",
    )
    summary = _summary(results)
    results.summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    yield results
    _print_summary(request, summary, results.summary_path)


def _print_summary(request: pytest.FixtureRequest, summary: dict[str, Any], path: Path) -> None:
    lines = [
        f"fuzz: {summary['calls']} calls in {summary['seconds']} s "
        f"(profile {summary['profile']}, {summary['examples']} examples); summary: {path}"
    ]
    for rpc, entry in summary["rpcs"].items():
        codes = ", ".join(f"{c}={n}" for c, n in sorted(entry["codes"].items()))
        lines.append(f"  {rpc:28} {entry['cases']:6}  {codes}")
    lines.append(
        f"  distinct failures: {len(summary['failures'])}; foreign paths touched: "
        f"{len(summary['foreign_paths_touched'])}"
    )
    report.show(request, "\n".join(lines))


# -- the properties ------------------------------------------------------------------------------


def _failures_text(failures: list[Failure]) -> str:
    return "\n".join(
        f"- {f.rpc} -> {f.code} ({f.count}x): {f.message[:400]}\n    smallest request: {f.request}"
        for f in failures
    )


@pytest.mark.parametrize("rpc", list(RPCS))
def test_only_spec_codes(fuzzed: Results, rpc: str) -> None:
    """OK or a code the spec names; never UNKNOWN, INTERNAL, UNAVAILABLE or a hang."""
    world = fuzzed.world
    assert world.calls[rpc] > 0, f"{rpc} was never called"
    failures = [f for f in world.failures.values() if f.rpc == rpc]
    assert not failures, f"{rpc}: codes seen {dict(world.codes[rpc])}\n" + _failures_text(failures)


def test_every_rpc_reached_deep_code(fuzzed: Results) -> None:
    """The run is only worth something if real stages, publishes and snapshots happened."""
    codes = fuzzed.world.codes
    for rpc in (
        "CreateVolume",
        "ControllerPublishVolume",
        "NodeStageVolume",
        "NodePublishVolume",
        "NodeUnpublishVolume",
        "NodeUnstageVolume",
        "CreateSnapshot",
        "DeleteVolume",
    ):
        assert codes[rpc]["OK"] > 0, f"{rpc} never succeeded: {dict(codes[rpc])}"


def _lines(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items)


def test_no_lock_left_held(fuzzed: Results) -> None:
    """Every name and id the fuzzer used answers something other than ABORTED now."""
    assert not fuzzed.held_locks, _lines(fuzzed.held_locks)


def test_no_foreign_path_touched(fuzzed: Results) -> None:
    """The canary (reachable only through the sandbox's escaping symlinks or '..') is never
    mounted on, mapped or changed, and no sandbox path is removed that was never published."""
    touched = "\n".join(f"- {t['what']}\n    by {t['request']}" for t in fuzzed.world.foreign)
    assert not fuzzed.world.foreign, touched
    assert not fuzzed.canary_diff, _lines(fuzzed.canary_diff)


def test_no_call_undoes_another_volumes_mount(fuzzed: Results) -> None:
    """A call about one volume never unmounts what was mounted for another."""
    undone = "\n".join(f"- {c['what']}\n    by {c['request']}" for c in fuzzed.world.cross_volume)
    assert not fuzzed.world.cross_volume, undone


def test_clean_up_through_the_api(fuzzed: Results) -> None:
    """Unpublish, unstage, unexport and delete everything the fuzzer made, as a CO would."""
    assert not fuzzed.cleanup_problems, _lines(fuzzed.cleanup_problems)


def test_no_mount_or_loop_device_left(fuzzed: Results) -> None:
    """After that clean-up (and after the plugin stopped) nothing points under the sandbox,
    the canary or the plugin's directory; each leftover names the call that made it."""
    assert not fuzzed.leftovers_running, _lines(fuzzed.leftovers_running)
    assert not fuzzed.leftovers_stopped, _lines(fuzzed.leftovers_stopped)


def test_plugin_stops_cleanly(fuzzed: Results) -> None:
    assert fuzzed.exit_code == 0, fuzzed.world.process.log()[-3000:]
