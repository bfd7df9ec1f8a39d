"""csi_driver.config: defaults of a minimal file, and every refusal naming its key.

A bad configuration must stop the plugin at start-up with the offending key path in
the message (``backends[1].driver: missing``), so an admin can fix the file without
reading code; these tests pin both the refusal and the key path it names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from csi_driver import config
from csi_driver.config import ConfigError

DRIVER = "csi_driver.storage.drivers.file.FileDriver"


def backend(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "driver": DRIVER, **extra}


def two_backends(**top: Any) -> dict[str, Any]:
    return {"backends": [backend("first"), backend("second")], **top}


def names_key(path: str) -> str:
    """A ``pytest.raises(match=...)`` pattern: the message starts with the key path."""
    return "^" + re.escape(f"{path}:")


# --- valid input ------------------------------------------------------------------------


def test_minimal_config_gets_defaults() -> None:
    cfg = config.from_dict(two_backends())

    assert cfg.driver_name == config.DEFAULT_DRIVER_NAME
    assert cfg.default_backend == "first"
    assert [b.name for b in cfg.backends] == ["first", "second"]
    assert cfg.backends[0].driver == DRIVER
    assert dict(cfg.backends[0].options) == {}
    assert cfg.backends[0].topology == ()
    assert os.path.isabs(cfg.node.state_dir)
    assert cfg.node.max_volumes == 0
    assert cfg.node.multipath is False
    assert cfg.host  # the machine's host name when the file gives none
    assert not cfg.has_topology


def test_empty_config_has_no_default_backend() -> None:
    """No backends (a node-only process): nothing to default to, and that is valid."""
    cfg = config.from_dict(None)

    assert cfg.backends == ()
    assert cfg.default_backend is None


def test_reliability_and_safety_defaults() -> None:
    cfg = config.from_dict(None)

    assert cfg.node.local_roots == ()
    assert cfg.node.mount_roots == ("/var/lib/kubelet",)
    assert cfg.signing_key_file is None
    assert cfg.shutdown_grace_seconds == 20.0
    assert cfg.reconcile_interval_seconds == 60.0
    assert cfg.reconcile_delay_seconds == 0.0
    assert cfg.grpc_workers == 32


def test_grpc_workers_is_read() -> None:
    assert config.from_dict({"grpc_workers": 4}).grpc_workers == 4


def test_local_roots_per_mode() -> None:
    """A node alone attaches under its configured roots only; in ``all`` mode the
    FileDriver backends' directories are added (the node shares their host)."""
    cfg = config.from_dict({
        "backends": [backend("files", options={"file_volumes_dir": "/srv/volumes"}),
                     backend("other")],
        "node": {"local_roots": ["/data/extra/"]},
    })  # fmt: skip

    assert cfg.local_roots("node") == ("/data/extra",)
    assert cfg.local_roots("all") == ("/data/extra", "/srv/volumes")


def test_relative_state_dir_is_made_absolute() -> None:
    cfg = config.from_dict({"node": {"state_dir": "relative/node-state"}})

    assert cfg.node.state_dir == os.path.abspath("relative/node-state")


def test_explicit_values_are_kept() -> None:
    cfg = config.from_dict(
        two_backends(
            driver_name="cinder.csi.example.org",
            default_backend="second",
            volume_types={"gold": {"extra_specs": {"tier": "gold", "replicas": 3}}},
            node={
                "max_volumes": 7,
                "multipath": True,
                "topology": {"topology.csi-driver.cinder/zone": "a"},
            },
        )
    )

    assert cfg.driver_name == "cinder.csi.example.org"
    assert cfg.default_backend == "second"
    assert cfg.node.max_volumes == 7
    assert cfg.node.multipath is True
    assert cfg.has_topology
    # extra_specs values become strings, as Cinder stores them.
    assert dict(cfg.volume_types["gold"]["extra_specs"]) == {"tier": "gold", "replicas": "3"}
    assert dict(cfg.volume_types["gold"]["qos_specs"]) == {}


# --- invalid input: each names its key -----------------------------------------------------

INVALID: list[Any] = [
    pytest.param(["a list"], "top level", id="top-level-not-mapping"),
    pytest.param({"bogus": 1}, "bogus", id="unknown-top-level-key"),
    pytest.param({"backends": {"first": {}}}, "backends", id="backends-not-list"),
    pytest.param({"backends": ["first"]}, "backends[0]", id="backend-not-mapping"),
    pytest.param(
        {"backends": [backend("first"), {"name": "second"}]},
        "backends[1].driver",
        id="backend-driver-missing",
    ),
    pytest.param({"backends": [{"driver": DRIVER}]}, "backends[0].name", id="backend-name-missing"),
    pytest.param({"backends": [backend("")]}, "backends[0].name", id="backend-name-empty"),
    pytest.param(
        {"backends": [backend("first", pool="x")]}, "backends[0].pool", id="backend-unknown-key"
    ),
    pytest.param(
        {"backends": [backend("same"), backend("same")]}, "backends", id="duplicate-backend-names"
    ),
    pytest.param(
        two_backends(default_backend="third"), "default_backend", id="default-backend-unknown"
    ),
    pytest.param(
        {"default_backend": "first"}, "default_backend", id="default-backend-without-backends"
    ),
    pytest.param(
        {"storage": {"output_all_backend_info": True}},
        "storage.output_all_backend_info",
        id="storage-output-all-backend-info",
    ),
    pytest.param(
        {"storage": {"attach_only": True}}, "storage.attach_only", id="storage-attach-only"
    ),
    pytest.param({"storage": "sqlite"}, "storage", id="storage-not-mapping"),
    pytest.param({"node": {"max_volumes": -1}}, "node.max_volumes", id="max-volumes-negative"),
    pytest.param({"node": {"max_volumes": True}}, "node.max_volumes", id="max-volumes-bool"),
    pytest.param({"node": {"max_volumes": "3"}}, "node.max_volumes", id="max-volumes-string"),
    pytest.param({"node": {"max_volumes": 2.5}}, "node.max_volumes", id="max-volumes-float"),
    pytest.param({"node": {"multipath": "yes"}}, "node.multipath", id="multipath-not-bool"),
    pytest.param({"node": {"state_dir": ""}}, "node.state_dir", id="state-dir-empty"),
    pytest.param({"node": {"zone": "a"}}, "node.zone", id="node-unknown-key"),
    pytest.param(
        {"node": {"topology": {"zone": 1}}},
        "node.topology.zone",
        id="node-topology-value-not-string",
    ),
    pytest.param({"node": {"local_roots": "/srv"}}, "node.local_roots", id="local-roots-not-list"),
    pytest.param(
        {"node": {"local_roots": ["relative/dir"]}}, "node.local_roots[0]", id="local-root-relative"
    ),
    pytest.param({"signing_key_file": ""}, "signing_key_file", id="signing-key-file-empty"),
    pytest.param({"node": {"mount_roots": []}}, "node.mount_roots", id="mount-roots-empty"),
    pytest.param(
        {"node": {"mount_roots": ["kubelet"]}}, "node.mount_roots[0]", id="mount-root-relative"
    ),
    pytest.param({"shutdown_grace_seconds": 0}, "shutdown_grace_seconds", id="shutdown-grace-zero"),
    pytest.param(
        {"shutdown_grace_seconds": True}, "shutdown_grace_seconds", id="shutdown-grace-bool"
    ),
    pytest.param(
        {"reconcile_interval_seconds": -1}, "reconcile_interval_seconds", id="reconcile-negative"
    ),
    pytest.param(
        {"reconcile_delay_seconds": "soon"}, "reconcile_delay_seconds", id="reconcile-delay-text"
    ),
    pytest.param({"grpc_workers": 0}, "grpc_workers", id="grpc-workers-zero"),
    pytest.param({"grpc_workers": 2000}, "grpc_workers", id="grpc-workers-too-many"),
    pytest.param({"grpc_workers": "8"}, "grpc_workers", id="grpc-workers-text"),
    pytest.param({"grpc_workers": True}, "grpc_workers", id="grpc-workers-bool"),
    pytest.param({"driver_name": "-leading-dash"}, "driver_name", id="driver-name-leading-dash"),
    pytest.param({"driver_name": "has space"}, "driver_name", id="driver-name-space"),
    pytest.param({"driver_name": "a" * 64}, "driver_name", id="driver-name-too-long"),
    pytest.param({"driver_name": 42}, "driver_name", id="driver-name-not-string"),
    pytest.param({"driver_name": ""}, "driver_name", id="driver-name-empty"),
    pytest.param(
        {"volume_types": {"x": {"extra_specs": ["tier=gold"]}}},
        "volume_types.x.extra_specs",
        id="extra-specs-not-mapping",
    ),
    pytest.param(
        {"volume_types": {"x": {"qos_specs": "fast"}}},
        "volume_types.x.qos_specs",
        id="qos-specs-not-mapping",
    ),
    pytest.param(
        {"volume_types": {"x": {"extra": {}}}}, "volume_types.x.extra", id="volume-type-unknown-key"
    ),
    pytest.param(
        {"backends": [backend("first", options={"volume_driver": DRIVER})]},
        "backends[0].options.volume_driver",
        id="options-volume-driver",
    ),
    pytest.param(
        {"backends": [backend("first", options={"volume_backend_name": "x"})]},
        "backends[0].options.volume_backend_name",
        id="options-volume-backend-name",
    ),
    pytest.param(
        {"backends": [backend("first", topology={"zone": "a"})]},
        "backends[0].topology",
        id="backend-topology-not-list",
    ),
    pytest.param(
        {"backends": [backend("first", topology=["zone-a"])]},
        "backends[0].topology[0]",
        id="backend-topology-entry-not-mapping",
    ),
]


@pytest.mark.parametrize(("raw", "key"), INVALID)
def test_invalid_config_names_the_key(raw: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=names_key(key)):
        config.from_dict(raw)


def test_duplicate_backend_message_names_the_name() -> None:
    with pytest.raises(ConfigError, match="'same' is used twice"):
        config.from_dict({"backends": [backend("same"), backend("other"), backend("same")]})


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError (the CLI's start-up) see configuration errors too."""
    assert issubclass(ConfigError, ValueError)


# --- load(path) ------------------------------------------------------------------------------


def test_load_reads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "backends:\n"
        f"  - name: only\n    driver: {DRIVER}\n"
        "    options: {file_volumes_dir: /srv/volumes}\n"
        "node:\n  state_dir: /var/lib/test-node\n  max_volumes: 4\n"
    )
    cfg = config.load(str(path))

    assert cfg.default_backend == "only"
    assert dict(cfg.backends[0].options) == {"file_volumes_dir": "/srv/volumes"}
    assert cfg.node.state_dir == "/var/lib/test-node"
    assert cfg.node.max_volumes == 4


def test_load_of_an_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")

    assert config.load(str(path)).driver_name == config.DEFAULT_DRIVER_NAME


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(
            lambda d: d / "missing.yaml", "cannot read configuration file", id="missing-file"
        ),
        pytest.param(lambda d: d, "cannot read configuration file", id="a-directory"),
        pytest.param(
            lambda d: _write(d / "bad.yaml", "backends: [\n  - name: x\n"),
            "is not valid YAML",
            id="invalid-yaml",
        ),
        pytest.param(
            lambda d: _write(d / "tabs.yaml", "node:\n\tmax_volumes: 1\n"),
            "is not valid YAML",
            id="yaml-with-tab-indent",
        ),
    ],
)
def test_load_refuses_unreadable_or_malformed_files(
    make: Any, expected: str, tmp_path: Path
) -> None:
    path = make(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(expected)) as raised:
        config.load(str(path))
    assert str(path) in str(raised.value)


def test_load_prefixes_the_file_to_the_key_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", "backends:\n  - name: x\n")

    with pytest.raises(ConfigError) as raised:
        config.load(str(path))
    assert str(raised.value).startswith(f"{path}: backends[0].driver: missing")


def test_load_refuses_a_yaml_scalar_document(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.yaml", "just a string\n")

    with pytest.raises(ConfigError, match=re.escape(f"{path}: top level: expected a mapping")):
        config.load(str(path))


REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_configurations_are_valid() -> None:
    """`make run`'s embedded default and the documented example load as they are."""
    embedded = config.load(str(REPO / "config" / "embedded.yaml"))
    assert [b.name for b in embedded.backends] == ["embedded"]
    assert embedded.backends[0].driver == "csi_driver.storage.drivers.file.FileDriver"
    example = config.load(str(REPO / "config" / "example.yaml"))
    assert example.default_backend == "lvm"
    assert {b.name for b in example.backends} == {"lvm", "ceph"}
    assert example.has_topology and "gold" in example.volume_types


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- load(path, path, ...): several files merged in order --------------------------------------
# In Kubernetes the backends' credentials come from a Secret and the rest from a ConfigMap,
# mounted as two files; the later file merges into the earlier one.

CONFIGMAP = f"""\
driver_name: cinder.csi.example.org
storage:
  persistence_config: {{storage: etcd, endpoints: ["https://etcd:2379"], prefix: /csi/}}
  file_locks_path: /var/lib/csi-driver/locks
backends:
  - name: lvm
    driver: {DRIVER}
    options: {{volume_group: cinder-volumes, target_helper: lioadm}}
    topology: [{{zone: a}}]
  - name: ceph
    driver: {DRIVER}
    options: {{rbd_pool: volumes, rbd_user: csi}}
node:
  max_volumes: 8
  local_roots: [/srv/a, /srv/b]
"""
SECRET = """\
storage:
  persistence_config: {user: csi, password: s3cret}
backends:
  - name: ceph
    options: {rbd_keyring_conf: /etc/ceph/keyring, rbd_user: csi-rw}
  - name: lvm
    options: {chap_password: chap-s3cret}
    topology: [{zone: b}]
"""


def _files(tmp_path: Path, *texts: str) -> list[str]:
    return [str(_write(tmp_path / f"config-{i}.yaml", text)) for i, text in enumerate(texts)]


def test_load_merges_mappings_key_by_key_and_backends_by_name(tmp_path: Path) -> None:
    cfg = config.load(*_files(tmp_path, CONFIGMAP, SECRET))

    assert cfg.driver_name == "cinder.csi.example.org"
    assert dict(cfg.storage["persistence_config"]) == {
        "storage": "etcd", "endpoints": ["https://etcd:2379"], "prefix": "/csi/",
        "user": "csi", "password": "s3cret",
    }  # fmt: skip
    assert cfg.storage["file_locks_path"] == "/var/lib/csi-driver/locks"
    assert [b.name for b in cfg.backends] == ["lvm", "ceph"]  # the first file's order
    lvm, ceph = cfg.backends
    assert dict(lvm.options) == {"volume_group": "cinder-volumes", "target_helper": "lioadm",
                                 "chap_password": "chap-s3cret"}  # fmt: skip
    assert [dict(s) for s in lvm.topology] == [{"zone": "b"}]  # a list: replaced
    assert dict(ceph.options) == {"rbd_pool": "volumes", "rbd_user": "csi-rw",
                                  "rbd_keyring_conf": "/etc/ceph/keyring"}  # fmt: skip
    assert ceph.driver == DRIVER
    assert cfg.node.max_volumes == 8


def test_a_later_file_appends_new_backends_and_replaces_other_lists(tmp_path: Path) -> None:
    later = f"backends:\n  - {{name: extra, driver: {DRIVER}}}\nnode:\n  local_roots: [/srv/c]\n"
    cfg = config.load(*_files(tmp_path, CONFIGMAP, later))

    assert [b.name for b in cfg.backends] == ["lvm", "ceph", "extra"]
    assert cfg.default_backend == "lvm"
    assert cfg.node.local_roots == ("/srv/c",)
    assert cfg.node.max_volumes == 8


def test_a_later_file_can_change_a_backends_driver(tmp_path: Path) -> None:
    later = "backends:\n  - {name: ceph, driver: other.Driver}\n"
    cfg = config.load(*_files(tmp_path, CONFIGMAP, later))

    assert cfg.backend("ceph").driver == "other.Driver"  # type: ignore[union-attr]
    assert cfg.backend("ceph").options["rbd_pool"] == "volumes"  # type: ignore[union-attr]


def test_a_driver_may_come_from_any_file(tmp_path: Path) -> None:
    """The first file may name a backend without its driver if a later one gives it."""
    first = "backends:\n  - {name: lvm, options: {volume_group: vg}}\n"
    cfg = config.load(*_files(tmp_path, first, f"backends:\n  - {{name: lvm, driver: {DRIVER}}}\n"))

    assert cfg.backends[0].driver == DRIVER
    assert dict(cfg.backends[0].options) == {"volume_group": "vg"}


def test_an_empty_later_file_changes_nothing(tmp_path: Path) -> None:
    alone, *_ = paths = _files(tmp_path, CONFIGMAP, "")

    assert config.load(*paths) == config.load(alone)


MERGE_ERRORS: list[Any] = [
    pytest.param(
        "backends:\n  - {name: lvm, options: {x: 1}}\n  - {name: new, options: {y: 2}}\n",
        [1], "backends[1].driver: missing", id="new-backend-without-driver",
    ),
    pytest.param("backends:\n  - {options: {x: 1}}\n", [1], "backends[0].name: missing",
                 id="backend-without-name"),
    pytest.param("backends:\n  - {name: ceph}\n  - {name: ceph}\n", [1],
                 "backends: the name 'ceph' is used twice", id="same-name-twice-in-one-file"),
    pytest.param("backends: {ceph: {}}\n", [1], "backends: expected a list",
                 id="backends-not-list"),
    pytest.param("- a list\n", [1], "top level: expected a mapping", id="top-level-not-mapping"),
    # Found once merged: every file that set the key is named.
    pytest.param("node: {max_volumes: -2}\n", [0, 1], "node.max_volumes:",
                 id="validation-after-merge"),
    pytest.param("backends:\n  - {name: ceph, options: {volume_driver: x}}\n", [0, 1],
                 "backends[1].options.volume_driver:", id="bad-merged-backend"),
    pytest.param("default_backend: nfs\n", [1], "default_backend:", id="key-only-later"),
]  # fmt: skip


@pytest.mark.parametrize(("later", "culprits", "message"), MERGE_ERRORS)
def test_merge_errors_name_the_file_and_key(
    tmp_path: Path, later: str, culprits: list[int], message: str
) -> None:
    paths = _files(tmp_path, CONFIGMAP, later)

    with pytest.raises(ConfigError) as raised:
        config.load(*paths)
    named = ", ".join(paths[i] for i in culprits)
    assert str(raised.value).startswith(f"{named}: {message}")


def test_a_merged_key_error_names_every_file_that_set_it(tmp_path: Path) -> None:
    paths = _files(tmp_path, "node: {max_volumes: 3}\n", "node: {multipath: maybe}\n")

    with pytest.raises(ConfigError) as raised:
        config.load(*paths)
    assert str(raised.value).startswith(f"{paths[0]}, {paths[1]}: node.multipath:")


def test_a_missing_later_file_is_named(tmp_path: Path) -> None:
    paths = [*_files(tmp_path, CONFIGMAP), str(tmp_path / "secret.yaml")]

    with pytest.raises(ConfigError, match=re.escape(f"cannot read configuration file {paths[1]}")):
        config.load(*paths)


def test_the_split_example_in_example_yaml_merges(tmp_path: Path) -> None:
    """The Secret file shown in config/example.yaml's header merges as it says."""
    example = REPO / "config" / "example.yaml"
    header = example.read_text().split("holding only:\n", 1)[1].split("\n\n", 1)[0]
    secret = _write(tmp_path / "secret.yaml",
                    "\n".join(line[2:] for line in header.splitlines()) + "\n")  # fmt: skip

    cfg = config.load(str(example), str(secret))

    ceph = cfg.backend("ceph")
    assert ceph is not None and ceph.options["rbd_keyring_conf"].startswith("/etc/csi-driver/")
    assert ceph.options["rbd_pool"] == "volumes"
    assert cfg.storage["persistence_config"]["password"] == "..."
    assert cfg.storage["persistence_config"]["storage"] == "sqlite"


def test_the_server_runs_calls_on_grpc_workers_threads() -> None:
    from csi_driver import server

    grpc_server, executor, _ = server.build_server(config.from_dict({"grpc_workers": 3}), "node")
    try:
        assert executor._max_workers == 3
    finally:
        grpc_server.stop(0)
        executor.shutdown()
