"""What only the Kubernetes store has to prove, on the session's real kube-apiserver:
object names, what ``kubectl get`` shows, namespaces, RBAC, races between processes,
an API server that stops in the middle of a stream of writes, and the healing of
claims and writes that a failure left behind. (The shared contract runs on it in
test_contract*.py.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from csi_support.kube_store import CRDS, ensure_crds, kube_store, kubectl, new_namespace
from csi_support.stores import conn, ids, snap, vol

from csi_driver.storage.exceptions import NameInUse, StoreError, StoreUnavailable
from csi_driver.storage.persistence import load_store
from csi_driver.storage.persistence.base import VOLUME
from csi_driver.storage.persistence.kubernetes import (
    GROUP,
    KubernetesStore,
    label_value,
    object_name,
)
from csi_driver.storage.persistence.kubernetes.api import _Maybe
from csi_driver.storage.persistence.kubernetes.undo import _InDoubt

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def plane(request: pytest.FixtureRequest) -> Any:
    plane = request.getfixturevalue("kube_apiserver")
    ensure_crds(plane)
    return plane


@pytest.fixture
def store(request: pytest.FixtureRequest, plane: Any) -> Any:
    instance = kube_store(request)
    yield instance
    instance.close()


def objects(plane: Any, store: KubernetesStore, resource: str) -> list[dict]:
    out = kubectl(plane, "get", f"{resource}.{GROUP}", "-n", store.namespace, "-o", "json")
    return json.loads(out)["items"]


# -- names, labels, what kubectl shows ---------------------------------------------
WEIRD_IDS = [
    "UPPER-case",
    "vol-données",
    "a" * 64,
    "x" * 300,
    "-leading",
    "trailing-",
    "dot.ted",
    "under_score",
    "h-looks-like-a-hash",
    "sp ace/slash",
    "a\x00b",
    "🚀",
]


def test_object_names_are_dns_labels_whatever_the_id() -> None:
    import re

    label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
    for record_id in [*WEIRD_IDS, "v1", "0b6f2a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"]:
        assert label.fullmatch(object_name(record_id)), record_id
    # an id that already is a DNS label is its own name: kubectl shows the real id
    assert (
        object_name("0b6f2a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
        == "0b6f2a9e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
    )
    # no id that is kept as is can look like a hashed one
    assert object_name("h-looks-like-a-hash") != "h-looks-like-a-hash"
    assert len({object_name(i) for i in WEIRD_IDS}) == len(WEIRD_IDS)
    assert label_value("lvm") == "lvm" and label_value("бэкенд").startswith("h.")


def test_weird_ids_round_trip(plane: Any, store: KubernetesStore) -> None:
    store.write(
        volumes=[vol(i, backend="b 1", name=f"n {i}") for i in WEIRD_IDS],
        snapshots=[snap(i, WEIRD_IDS[0], backend="b 1", name=i) for i in WEIRD_IDS],
        connections=[conn(i, WEIRD_IDS[1]) for i in WEIRD_IDS],
    )
    for record_id in WEIRD_IDS:
        assert ids(store.get_volumes(volume_id=record_id)) == [record_id]
        assert ids(store.get_volumes(name=f"n {record_id}")) == [record_id]
        assert ids(store.get_snapshots(snapshot_id=record_id, volume_id=WEIRD_IDS[0])) == [
            record_id
        ]
    assert ids(store.get_volumes(backend="b 1")) == WEIRD_IDS
    assert len(ids(store.get_connections(volume_id=WEIRD_IDS[1]))) == len(WEIRD_IDS)
    listed = [r["id"] for r in store.iterate(VOLUME, page_size=5)]
    assert sorted(listed) == sorted(WEIRD_IDS)
    names = {o["metadata"]["name"] for o in objects(plane, store, "csivolumes")}
    assert names == {object_name(i) for i in WEIRD_IDS}
    for record_id in WEIRD_IDS:
        store.delete_volume(record_id)
    assert store.get_volumes() == []


def test_kubectl_get_shows_printer_columns(plane: Any, store: KubernetesStore) -> None:
    store.set_volume(vol("v1", backend="lvm", name="pvc-1", size=3, status="available"))
    store.set_snapshot(snap("s1", "v1", name="snap-1", volume_size=3, status="creating"))
    store.set_connection(conn("c1", "v1", status="connected", attached_host="node-1"))
    store.set_value("initiator", "iqn.x")
    ns = ["-n", store.namespace]
    lines = kubectl(plane, "get", "csivolumes", *ns).splitlines()
    assert lines[0].split() == ["NAME", "VOLUME-NAME", "BACKEND", "SIZE", "STATUS", "AGE"]
    assert lines[1].split()[:5] == ["v1", "pvc-1", "lvm", "3", "available"]
    lines = kubectl(plane, "get", "csisnapshots", *ns).splitlines()
    assert lines[0].split()[:6] == ["NAME", "SNAPSHOT-NAME", "BACKEND", "VOLUME", "SIZE", "STATUS"]
    assert lines[1].split()[:6] == ["s1", "snap-1", "lvm", "v1", "3", "creating"]
    lines = kubectl(plane, "get", "csiconnections", *ns).splitlines()
    assert lines[0].split()[:5] == ["NAME", "VOLUME", "BACKEND", "HOST", "STATUS"]
    assert lines[1].split()[:5] == ["c1", "v1", "lvm", "node-1", "connected"]
    wide = kubectl(plane, "get", "csivolumes", *ns, "-o", "wide").splitlines()
    assert wide[0].split()[-1] == "ID" and wide[1].split()[-1] == "v1"
    # the category lists every kind; a label selects by backend
    everything = kubectl(plane, "get", "csi-driver", *ns, "-o", "name").split()
    assert len(everything) == 4
    by_label = kubectl(plane, "get", "csivolumes", *ns, "-l", f"{GROUP}/backend=lvm", "-o", "name")
    assert by_label.split() == [f"csivolume.{GROUP}/v1"]


def test_the_record_is_in_spec_never_in_annotations(plane: Any, store: KubernetesStore) -> None:
    record = vol("v1", size=1, provider_auth="CHAP user s3cr3t", nested={"a": [1, 2.5]})
    store.set_volume(record)
    (obj,) = objects(plane, store, "csivolumes")
    assert not obj["metadata"].get("annotations")
    assert json.loads(obj["spec"]["record"]) == record
    assert obj["spec"]["id"] == "v1" and obj["spec"]["size"] == 1
    assert obj["metadata"]["labels"][f"{GROUP}/backend"] == "lvm"


def test_crds_are_structural_and_versioned() -> None:
    seen = set()
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]
        assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert all("type" in p for p in props.values())
        seen.add(spec["names"]["kind"])
    assert seen == {"CsiVolume", "CsiSnapshot", "CsiConnection", "CsiKeyValue"}


# -- configuration, namespaces, errors ---------------------------------------------
def test_loaded_from_persistence_config(plane: Any) -> None:
    namespace = new_namespace(plane)
    store = load_store({"storage": "kubernetes", "namespace": namespace,
                        "kubeconfig": plane.kubeconfig})  # fmt: skip
    try:
        assert isinstance(store, KubernetesStore)
        store.set_volume(vol("v1"))
        assert ids(store.get_volumes()) == ["v1"]
    finally:
        store.close()


def test_namespaces_are_separate_stores(request: pytest.FixtureRequest, plane: Any) -> None:
    one, two = kube_store(request), kube_store(request)
    try:
        one.set_volume(vol("v1", name="n"))
        one.set_value("k", "1")
        two.set_volume(vol("v1", name="other"))
        two.create_unique(VOLUME, vol("v2", name="n"))
        assert ids(one.get_volumes(name="n")) == ["v1"]
        assert ids(two.get_volumes()) == ["v1", "v2"]
        assert two.get_value("k") is None and one.get_value("k") == "1"
        two.delete_volume("v1")
        assert ids(one.get_volumes()) == ["v1"]
    finally:
        one.close()
        two.close()


def test_unreachable_server_raises_store_unavailable(tmp_path: Path, plane: Any) -> None:
    config = yaml.safe_load(Path(plane.kubeconfig).read_text())
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    store = KubernetesStore(namespace="nowhere", kubeconfig=str(path), timeout=2)
    started = time.monotonic()
    for call in (
        lambda: store.get_volumes(),
        lambda: store.set_volume(vol("v1")),
        lambda: store.create_unique(VOLUME, vol("v1", name="n")),
        lambda: store.list_page(VOLUME, limit=5),
        lambda: store.delete_volume("v1"),
        lambda: store.set_value("k", "v"),
    ):
        with pytest.raises(StoreUnavailable, match="unreachable"):
            call()
    assert time.monotonic() - started < 10


def test_missing_namespace_or_crds_are_named(plane: Any) -> None:
    store = KubernetesStore(namespace="no-such-namespace-here", kubeconfig=plane.kubeconfig)
    try:
        assert store.get_volumes() == []  # listing an empty namespace is fine
        with pytest.raises(StoreError, match="namespace"):
            store.set_volume(vol("v1"))
    finally:
        store.close()


def _token_kubeconfig(plane: Any, namespace: str, account: str, path: Path) -> str:
    kubectl(plane, "create", "serviceaccount", account, "-n", namespace)
    token = kubectl(plane, "create", "token", account, "-n", namespace).strip()
    admin = yaml.safe_load(Path(plane.kubeconfig).read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _readme_role() -> dict:
    text = (CRDS / "README.md").read_text()
    block = text.split("```yaml")[2].split("```")[0]
    return next(doc for doc in yaml.safe_load_all(block) if doc["kind"] == "Role")


def test_readme_role_is_enough_and_a_missing_verb_is_named(plane: Any, tmp_path: Path) -> None:
    namespace = new_namespace(plane)
    role = _readme_role()
    role["metadata"]["namespace"] = namespace
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(role))
    kubectl(plane, "create", "rolebinding", "meta", "-n", namespace,
            f"--role={role['metadata']['name']}", f"--serviceaccount={namespace}:ctrl")  # fmt: skip
    config = _token_kubeconfig(plane, namespace, "ctrl", tmp_path / "ctrl.kubeconfig")
    store = KubernetesStore(namespace=namespace, kubeconfig=config)
    try:
        # every operation of the store, with exactly the README's rules
        store.create_unique(VOLUME, vol("v1", name="n1", size=1))
        with pytest.raises(NameInUse):
            store.create_unique(VOLUME, vol("v2", name="n1"))
        store.write(volumes=[vol("v1", name="renamed")], connections=[conn("c1", "v1")])
        store.set_snapshot(snap("s1", "v1"))
        store.set_value("k", "v")
        assert store.get_value("k") == "v"
        assert ids(store.list_page(VOLUME, limit=5).records) == ["v1"]
        assert ids(store.connections_of(["v1"])) == ["c1"]
        store.delete_snapshot("s1")
        store.delete_value("k")
        store.delete_volume("v1")
        assert store.get_volumes() == []
    finally:
        store.close()
    # a Role without "delete": the error names the verb and the resource
    role["metadata"]["name"] = "no-delete"
    role["rules"][0]["verbs"] = ["get", "list", "create", "update"]
    kubectl(plane, "apply", "-f", "-", stdin=json.dumps(role))
    kubectl(plane, "create", "rolebinding", "meta2", "-n", namespace, "--role=no-delete",
            f"--serviceaccount={namespace}:ctrl2")  # fmt: skip
    config = _token_kubeconfig(plane, namespace, "ctrl2", tmp_path / "ctrl2.kubeconfig")
    store = KubernetesStore(namespace=namespace, kubeconfig=config)
    try:
        store.set_volume(vol("v9"))
        with pytest.raises(StoreError, match=r"delete.*csivolumes") as caught:
            store.delete_volume("v9")
        assert not isinstance(caught.value, StoreUnavailable)
        assert ids(store.get_volumes()) == ["v9"]
    finally:
        store.close()


# -- failures part-way, lost answers ---------------------------------------------------
def test_a_write_failing_part_way_is_undone(store: KubernetesStore) -> None:
    store.write(volumes=[vol("v1", size=1)], connections=[conn("c1", "v1", size=1)])
    before = store.get_volumes(), store.get_connections()
    too_big = conn("c2", "v1", blob="x" * 4_000_000)  # over the request size limit
    with pytest.raises(StoreError) as caught:
        store.write(volumes=[vol("v1", size=2), vol("v2")], connections=[conn("c1", "v1"), too_big])
    assert not isinstance(caught.value, StoreUnavailable)
    assert (store.get_volumes(), store.get_connections()) == before


def _lose_answers(store: KubernetesStore, methods: set[str], count: int, then_down: bool) -> list:
    """Make the next ``count`` writes of ``methods`` reach the server but lose their
    answer; with ``then_down`` the server then 'stays unreachable' until ``up()``."""
    real = store._request
    state = {"lost": 0, "down": False}

    def request(method: str, path: str, **kwargs: Any) -> Any:
        if state["down"]:
            raise StoreUnavailable("test: server down")
        result = real(method, path, **kwargs)
        if method in methods and state["lost"] < count:
            state["lost"] += 1
            state["down"] = then_down
            raise _Maybe(StoreUnavailable("test: answer lost"))
        return result

    store._request = request  # type: ignore[method-assign]
    return [state]


def test_a_lost_answer_is_settled_by_reading_the_write_back(store: KubernetesStore) -> None:
    _lose_answers(store, {"POST", "PUT", "DELETE"}, count=5, then_down=False)
    store.set_volume(vol("v1", size=1))  # POST applied, answer lost: read back, done
    store.set_volume(vol("v1", size=2))  # PUT likewise
    store.create_unique(VOLUME, vol("v2", name="n"))
    assert [(r["id"], r.get("size")) for r in store.get_volumes()] == [("v1", 2), ("v2", None)]
    store.delete_volume("v1")
    assert ids(store.get_volumes()) == ["v2"]


@pytest.mark.parametrize("answer", ["lost", "kept"])
def test_a_deleted_record_is_not_read_back_from_an_older_cache(
    store: KubernetesStore, answer: str
) -> None:
    """A delete answers with a Status, not the resourceVersion it made (and a lost
    answer with nothing), so no watch-cache version is known to hold it: the store's
    filtered reads go to etcd (no resourceVersion) until it writes that kind again,
    whose version is then newer than the delete's."""
    store.set_volume(vol("v1"))
    store.set_volume(vol("v2"))
    real = store._request
    deletes: list[str] = []
    reads: list[str | None] = []  # each filtered read's resourceVersion (None: etcd)

    def request(method: str, path: str, **kwargs: Any) -> Any:
        result = real(method, path, **kwargs)
        if method == "DELETE" and not deletes:
            deletes.append(path)
            if answer == "lost":
                raise _Maybe(StoreUnavailable("test: answer lost"))
        query = dict(kwargs.get("query") or ())
        if method == "GET" and path == store._path("csivolumes"):
            reads.append(query.get("resourceVersion"))
        return result

    store._request = request  # type: ignore[method-assign]
    store.delete_volume("v1")
    assert ids(store.get_volumes()) == ["v2"]
    assert deletes and reads == [None]
    store.set_volume(vol("v3"))
    now = int(real("GET", store._path("csivolumes", "v3"))[1]["metadata"]["resourceVersion"])
    reads.clear()
    assert ids(store.get_volumes()) == ["v2", "v3"]
    assert reads and reads[0] is not None and int(reads[0]) >= now


def test_an_in_doubt_write_is_undone_when_the_server_answers_again(
    store: KubernetesStore,
) -> None:
    store.write(volumes=[vol("v1", size=1)], connections=[conn("c1", "v1", size=1)])
    before = store.get_volumes(), store.get_connections()
    [state] = _lose_answers(store, {"PUT", "POST"}, count=1, then_down=True)
    with pytest.raises(StoreUnavailable) as caught:
        store.write(volumes=[vol("v1", size=2)], connections=[conn("c2", "v1")])
    assert isinstance(caught.value, StoreUnavailable) and not isinstance(caught.value, _InDoubt)
    assert store._pending  # the undo waits for the server
    with pytest.raises(StoreUnavailable):
        store.get_volumes()
    state["down"] = False
    assert (store.get_volumes(), store.get_connections()) == before
    assert not store._pending
    # a delete in doubt is undone too: the record comes back at its place
    del store._request  # the real one again
    store.set_volume(vol("v3"))
    [state] = _lose_answers(store, {"DELETE"}, count=1, then_down=True)
    with pytest.raises(StoreUnavailable):
        store.delete_volume("v1")
    del store._request
    assert ids(store.get_volumes()) == ["v1", "v3"]


# -- unique names: stale claims, two processes -----------------------------------------
def test_a_claim_whose_creator_died_is_healed(request: pytest.FixtureRequest, plane: Any) -> None:
    store = kube_store(request, claim_timeout=1.0)
    try:
        # the creator died between its claim and its record
        path = store._claim_path(VOLUME, "pvc-1")
        name = path.rsplit("/", 1)[1]
        value = json.dumps({"id": "dead", "bound": False})
        spec = {"key": "name-claim/volume/pvc-1", "value": value, "writeId": "w"}
        assert store._create("csikeyvalues", name, spec, "w", "name-claim") is not None
        started = time.monotonic()
        store.create_unique(VOLUME, vol("v1", name="pvc-1"))
        assert 0.9 < time.monotonic() - started < 15
        assert ids(store.get_volumes(name="pvc-1")) == ["v1"]
        # a claim bound to a record that is gone (deleted without releasing it)
        store._request("DELETE", store._path("csivolumes", "v1"))
        # A raw DELETE is another writer's as far as the store knows: its filtered reads
        # (the API server's watch cache) show it a moment later, under load not at once.
        deadline = time.monotonic() + 10
        while store.get_volumes(name="pvc-1") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_volumes(name="pvc-1") == []
        started = time.monotonic()
        store.create_unique(VOLUME, vol("v2", name="pvc-1"))
        assert time.monotonic() - started < 1
        with pytest.raises(NameInUse) as caught:
            store.create_unique(VOLUME, vol("v3", name="pvc-1"))
        assert caught.value.existing_id == "v2"
    finally:
        store.close()


def test_a_winner_whose_claim_was_taken_over_gives_way(store: KubernetesStore) -> None:
    """A creator so slow that its claim was found stale takes its own record back."""
    real_bind = store._bind

    def slow_bind(claim: Any, spec: Any, write_id: str) -> bool:
        # meanwhile another caller removed our claim as stale and a record took the name
        store._request("DELETE", store._path("csikeyvalues", claim.name))
        store.set_volume(vol("other", name="pvc"))
        store._bind = real_bind  # type: ignore[method-assign]
        return real_bind(claim, spec, write_id)

    store._bind = slow_bind  # type: ignore[method-assign]
    with pytest.raises(NameInUse) as caught:
        store.create_unique(VOLUME, vol("slow", name="pvc"))
    assert caught.value.existing_id == "other"
    assert ids(store.get_volumes()) == ["other"]


RACER = textwrap.dedent(
    """
    import json, sys, threading, time
    from csi_driver.storage.exceptions import NameInUse
    from csi_driver.storage.persistence.kubernetes import KubernetesStore
    namespace, kubeconfig, tag, start_at = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    store = KubernetesStore(namespace=namespace, kubeconfig=kubeconfig)
    store.get_volumes(volume_id="warm-up")  # connect before the start line
    out, errors = [], []
    def creator(n):
        try:
            time.sleep(max(0.0, start_at - time.time()))
            record = {"id": f"{tag}-{n}", "backend": "lvm", "name": "contended"}
            store.create_unique("volume", record)
            out.append(f"{tag}-{n}")
        except NameInUse as exc:
            out.append(exc.existing_id)
        except BaseException as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=creator, args=(n,)) for n in range(10)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps({"outcomes": out, "errors": errors}))
    """
)


def test_twenty_creators_in_two_processes_make_one_record(
    plane: Any, store: KubernetesStore
) -> None:
    start_at = time.time() + 4
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, store.namespace, plane.kubeconfig, tag, str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for tag in ("p1", "p2")
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [r["errors"] for r in results] == [[], []]
    outcomes = [o for r in results for o in r["outcomes"]]
    stored = store.get_volumes(name="contended")
    assert len(stored) == 1
    assert outcomes == [stored[0]["id"]] * 20
    assert len(store.get_volumes()) == 1


# -- the API server stopped in the middle of a stream of writes --------------------------
def test_apiserver_stopped_for_10s_mid_stream(plane: Any, store: KubernetesStore) -> None:
    """Writes in the outage fail with StoreUnavailable, none is half-applied, writes after
    the restart succeed, and the final content is exactly what callers were told."""
    rng = random.Random(5)
    volumes: dict[str, dict] = {}  # what callers were told is stored
    connections: dict[str, dict] = {}
    log: list[tuple[float, str, str]] = []  # (time, operation, outcome)
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            vid = f"v{rng.randrange(40):03d}"
            choice = rng.random()
            try:
                if choice < 0.5:
                    record = vol(vid, size=n)
                    store.set_volume(record)
                    volumes[vid] = record
                    op = "set"
                elif choice < 0.8:  # two records in one write
                    record, connection = (
                        vol(vid, size=n, status="in-use"),
                        conn(f"c{vid}", vid, n=n),
                    )
                    store.write(volumes=[record], connections=[connection])
                    volumes[vid], connections[f"c{vid}"] = record, connection
                    op = "write2"
                else:
                    store.delete_volume(vid)
                    volumes.pop(vid, None)
                    op = "delete"
                log.append((time.monotonic(), op, "ok"))
            except StoreUnavailable:
                log.append((time.monotonic(), "?", "unavailable"))
                time.sleep(0.05)
            except BaseException as exc:  # reported in the test's thread
                failures.append(exc)
                return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(3)
        stopped_at = time.monotonic()
        plane.stop()
        down_at = time.monotonic()
        time.sleep(10)
        restart_at = time.monotonic()
        plane.start()
        up_at = time.monotonic()
        time.sleep(5)
    finally:
        stop.set()
        thread.join(timeout=60)
        plane.start()
    assert failures == []
    before = [o for t, o, _ in log if t < stopped_at]
    during = [outcome for t, _, outcome in log if down_at < t < restart_at]
    after = [outcome for t, _, outcome in log if t > up_at + 1]
    assert len(before) > 10
    assert during and set(during) == {"unavailable"}
    assert after and set(after) == {"ok"}, after[:20]
    final_volumes = {r["id"]: r for r in store.get_volumes()}
    final_connections = {r["id"]: r for r in store.get_connections()}
    assert final_volumes == volumes
    assert final_connections == connections
    assert not store._pending
