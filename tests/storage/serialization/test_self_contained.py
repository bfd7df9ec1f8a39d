"""Backend configuration in documents: a name reference by default, the full driver
configuration with ``setup(output_all_backend_info=True)``, which lets ``load`` configure a
missing backend itself, in this process or in a fresh one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from csi_driver import storage

# Options beyond file_volumes_dir, one of them secret, that a full dump must carry.
OPTIONS = {
    "reserved_percentage": 5,
    "volume_clear": "none",
    "max_over_subscription_ratio": "2.0",
    "chap_password": "s3cr3t-chap-pass",
}

CHILD = textwrap.dedent(
    """
    import json, sys
    from csi_driver import storage

    doc_path, locks, store_path = sys.argv[1:4]
    storage.setup(persistence_config={"storage": "sqlite", "path": store_path},
                  file_locks_path=locks)
    assert not storage.Backend.backends, storage.Backend.backends
    with open(doc_path) as f:
        data = f.read()
    result = storage.load(data, save=True)
    objects = result if isinstance(result, list) else [result]
    out = {"classes": [type(o).__name__ for o in objects],
           "ids": [o.id for o in objects],
           "configured": sorted(storage.Backend.backends),
           "drivers": {n: b.volume_driver for n, b in storage.Backend.backends.items()},
           "config": {n: b._full_config() for n, b in storage.Backend.backends.items()},
           "stored_volumes": [v["id"] for v in storage.runtime.store().get_volumes()],
           "stored_snapshots": [s["id"] for s in storage.runtime.store().get_snapshots()]}
    if isinstance(result, storage.Volume):
        out["snapshots"] = [s.id for s in result.snapshots]
        out["same_backend"] = result.backend is storage.Backend.backends[result.backend_name]
        out["new_snapshot"] = result.create_snapshot(name="made-in-child").status
    print("RESULT " + json.dumps(out))
    for backend in list(storage.Backend.backends.values()):
        backend.close()
    """
)


def run_child(env, doc_text):
    doc_path = env.tmp_path / "doc.json"
    doc_path.write_text(doc_text)
    environ = dict(os.environ, OS_CINDER_DISABLE_EVENTLET_PATCHING="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(doc_path), str(env.locks), str(env.tmp_path / "c.db")],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0][len("RESULT ") :])


def backend_entries(value):
    doc = json.loads(value) if isinstance(value, str) else value
    return doc["backends"]


def all_documents(populated):
    docs = {"library": storage.dumps(), "library-json": storage.jsons()}
    for key in ("backend", "vol", "snap", "conn"):
        docs[key] = populated[key].dumps
        docs[key + "-json"] = populated[key].jsons
    return docs


# ---------------------------------------------------------------------------------
# Default: backends referenced by name only
# ---------------------------------------------------------------------------------
def test_default_backend_entries_hold_only_the_name_and_volumes(env, populated):
    for name, text in all_documents(populated).items():
        entries = backend_entries(text)
        assert entries, name
        for entry in entries:
            assert entry["volume_backend_name"] == env.BACKEND, name
            assert set(entry) <= {"volume_backend_name", "volumes"}, (name, entry)


def test_default_dumps_never_contain_driver_options(env):
    backend = env.backend(**OPTIONS)
    vol = backend.create_volume(size=1)
    vol.create_snapshot()
    docs = [storage.dumps(), backend.dumps, vol.dumps, vol.snapshots[0].dumps]
    for text in docs:
        assert "volume_driver" not in text
        assert env.DRIVER not in text
        for option in ("file_volumes_dir", *OPTIONS):
            assert option not in text
        assert OPTIONS["chap_password"] not in text


@pytest.mark.parametrize("key", ["backend", "vol", "snap", "conn"])
def test_loading_without_the_backend_configured_names_it(env, populated, key):
    data = populated[key].dumps
    populated["backend"].close()
    assert env.BACKEND not in storage.Backend.backends
    with pytest.raises(storage.SerializationError) as info:
        storage.load(data, save=True)
    assert env.BACKEND in str(info.value)
    assert not storage.Backend.backends


def test_library_document_without_its_backends_configured_names_them(env, populated):
    data = storage.dumps()
    populated["backend"].close()
    with pytest.raises(storage.SerializationError, match=env.BACKEND):
        storage.load(data)


def test_loading_by_name_uses_the_configured_backend(env, populated):
    loaded = storage.load(populated["vol"].dumps)
    assert loaded.backend is populated["backend"]
    assert list(storage.Backend.backends) == [env.BACKEND]


# ---------------------------------------------------------------------------------
# output_all_backend_info=True: self-contained documents
# ---------------------------------------------------------------------------------
@pytest.fixture
def full(env):
    """A backend with several options, a volume, a snapshot; full dumps switched on."""
    env.setup(output_all_backend_info=True)
    backend = env.backend(**OPTIONS)
    vol = backend.create_volume(size=1, name="self-contained")
    snap = vol.create_snapshot(name="snap")
    return {"backend": backend, "vol": vol, "snap": snap}


def expected_config(env):
    return {
        "volume_backend_name": env.BACKEND,
        "volume_driver": env.DRIVER,
        "file_volumes_dir": env.volumes_dir(),
        **OPTIONS,
    }


@pytest.mark.parametrize("key", ["library", "backend", "vol", "snap"])
def test_full_dump_carries_driver_and_every_option(env, full, key):
    text = storage.dumps() if key == "library" else full[key].dumps
    [entry] = backend_entries(text)
    entry = {k: v for k, v in entry.items() if k != "volumes"}
    assert entry == expected_config(env)


def test_full_json_carries_driver_and_every_option_too(env, full):
    [entry] = full["vol"].json["backends"]
    assert entry["volume_driver"] == env.DRIVER
    assert entry["chap_password"] == OPTIONS["chap_password"]


def test_switching_full_dumps_off_again_drops_the_options(env, full):
    env.setup(output_all_backend_info=False)
    text = full["vol"].dumps
    for entry in backend_entries(text):
        assert set(entry) <= {"volume_backend_name", "volumes"}
    assert "volume_driver" not in text
    assert OPTIONS["chap_password"] not in text


def test_full_volume_document_loads_in_a_fresh_process(env, full):
    out = run_child(env, full["vol"].dumps)
    assert out["classes"] == ["Volume"]
    assert out["ids"] == [full["vol"].id]
    assert out["configured"] == [env.BACKEND]
    assert out["drivers"] == {env.BACKEND: env.DRIVER}
    assert out["config"][env.BACKEND] == expected_config(env)
    assert out["snapshots"] == [full["snap"].id]
    assert out["same_backend"] is True
    assert out["stored_volumes"] == [full["vol"].id]
    assert full["snap"].id in out["stored_snapshots"]
    assert out["new_snapshot"] == "available"  # the configured driver works


def test_full_library_document_loads_in_a_fresh_process(env, full):
    second = env.backend("ser-file-2")
    other = second.create_volume(size=1)
    out = run_child(env, storage.dumps())
    assert out["classes"] == ["Backend", "Backend"]
    assert out["ids"] == [env.BACKEND, "ser-file-2"]
    assert out["configured"] == sorted([env.BACKEND, "ser-file-2"])
    assert sorted(out["stored_volumes"]) == sorted([full["vol"].id, other.id])


def test_name_only_document_fails_in_a_fresh_process(env, populated):
    doc_path = env.tmp_path / "doc.json"
    doc_path.write_text(populated["vol"].dumps)
    code = (
        "import sys\nfrom csi_driver import storage\n"
        "storage.setup(file_locks_path=sys.argv[2])\n"
        "try:\n    storage.load(open(sys.argv[1]).read())\n"
        "except storage.SerializationError as exc:\n    print('REFUSED', exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(doc_path), str(env.locks)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout
    assert env.BACKEND in proc.stdout


def test_full_document_configures_the_closed_backend_in_this_process(env, full):
    data = full["vol"].dumps
    old = full["backend"]
    old.close()
    assert not storage.Backend.backends

    loaded = storage.load(data)

    assert isinstance(loaded, storage.Volume)
    backend = storage.Backend.backends[env.BACKEND]
    assert backend is not old
    assert loaded.backend is backend
    assert backend.volume_driver == env.DRIVER
    assert backend._full_config() == expected_config(env)
    assert [s.id for s in loaded.snapshots] == [full["snap"].id]
    assert backend.get_volume(full["vol"].id).id == full["vol"].id  # from the store
    assert loaded.create_snapshot(name="after-reload").status == "available"


def test_full_document_reuses_a_configured_backend(env, full):
    loaded = storage.Volume.load(full["vol"].dumps)
    assert loaded.backend is full["backend"]
    assert list(storage.Backend.backends) == [env.BACKEND]


def test_full_backend_document_loads_after_close_with_save(env, full):
    data = full["backend"].dumps
    full["backend"].close()
    env.fresh_store(output_all_backend_info=True)
    loaded = storage.load(data, save=True)
    assert isinstance(loaded, storage.Backend)
    assert loaded is storage.Backend.backends[env.BACKEND]
    assert loaded is not full["backend"]
    assert [v.id for v in loaded.volumes] == [full["vol"].id]
    assert env.ids()[0] == [full["vol"].id]


def test_full_document_with_a_broken_driver_is_refused_and_configures_nothing(env, full):
    doc = full["vol"].dump
    full["backend"].close()
    doc["backends"][0]["volume_driver"] = "no.such.module.Driver"
    before = env.contents()
    with pytest.raises(storage.SerializationError) as info:
        storage.load(doc, save=True)
    assert env.BACKEND in str(info.value)
    assert not storage.Backend.backends
    assert env.contents() == before


def test_failed_load_leaves_no_backend_configured_from_the_document(env, full):
    env.backend("ser-file-2").create_volume(size=1)
    doc = json.loads(storage.dumps())
    for backend in list(storage.Backend.backends.values()):
        backend.close()
    doc["backends"][1]["volume_driver"] = "no.such.module.Driver"
    with pytest.raises(storage.SerializationError, match="ser-file-2"):
        storage.load(doc)
    assert not storage.Backend.backends
