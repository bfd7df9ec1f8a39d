"""The publish_context signature (csi_driver/publish_context.py) and the node's checks of
a local connection (csi_driver/node_trust.py), in-process: what is accepted, what is
refused, and that a refusal names the cause without touching anything."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from csi_driver import errors, node_trust, publish_context
from csi_driver.storage import Connection
from csi_driver.storage.backend import AttachOnlyBackend

DOCUMENT = '{"format":"csi-driver","class":"Connection"}'


def _key_file(tmp_path: Path, *lines: str, mode: int = 0o600, name: str = "key") -> str:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    path.chmod(mode)
    return str(path)


def test_a_signature_verifies_with_the_same_key_only(tmp_path: Path) -> None:
    keys = publish_context.load(_key_file(tmp_path, "k" * 32))
    other = publish_context.load(_key_file(tmp_path, "o" * 32, name="other"))
    signature = keys.sign(DOCUMENT)

    assert signature.startswith("hmac-sha256:")
    assert keys.verify(DOCUMENT, signature)
    assert not other.verify(DOCUMENT, signature)
    assert not keys.verify(DOCUMENT + " ", signature)
    assert not keys.verify(DOCUMENT, "")
    assert not keys.verify(DOCUMENT, signature.replace("hmac-sha256:", "sha1:"))


def test_rotation_first_line_signs_every_line_verifies(tmp_path: Path) -> None:
    old = publish_context.load(_key_file(tmp_path, "old-key-" * 4))
    signed_before = old.sign(DOCUMENT)
    rotated = publish_context.load(
        _key_file(tmp_path, "new-key-" * 4, "", "old-key-" * 4, name="rotated")
    )

    assert rotated.verify(DOCUMENT, signed_before)
    assert rotated.sign(DOCUMENT) != signed_before
    assert not old.verify(DOCUMENT, rotated.sign(DOCUMENT))


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        pytest.param((), "holds no key", id="empty"),
        pytest.param(("short",), "shorter than 16 bytes", id="short-key"),
        pytest.param(("k" * 32, "short"), "line 2", id="short-second-key"),
    ],
)
def test_unusable_key_files_stop_the_start(tmp_path: Path, lines: tuple[str, ...],
                                           named: str) -> None:  # fmt: skip
    with pytest.raises(publish_context.SigningKeyError, match=named):
        publish_context.load(_key_file(tmp_path, *lines))


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(publish_context.SigningKeyError, match="cannot read"):
        publish_context.load(str(tmp_path / "absent"))


def test_a_key_file_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        publish_context.load(_key_file(tmp_path, "k" * 32, mode=0o644))
    assert "make it 0600" in caplog.text
    assert "k" * 32 not in caplog.text


# -- local connections: only under the node's roots -----------------------------------------


def _local(tmp_path: Path, device_path: str) -> Connection:
    """A connection as a node loads it: its backend an attach-only stand-in."""
    record = {
        "id": "c1", "backend": "files", "volume_id": "v1", "status": "connected",
        "attach_mode": "rw", "connector": {"host": "n"},
        "connection_info": {"driver_volume_type": "local",
                            "data": {"device_path": device_path, "volume_id": "v1"}},
    }  # fmt: skip
    return Connection(AttachOnlyBackend("files"), record)


def test_local_device_under_a_root_is_canonical(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    root.mkdir()
    (root / "volume-v1").write_bytes(b"\0" * 4096)
    (tmp_path / "link").symlink_to(root)

    found = node_trust.local_device(_local(tmp_path, str(tmp_path / "link" / "volume-v1")),
                                    [str(root)])  # fmt: skip

    assert found == os.path.realpath(root / "volume-v1")


@pytest.mark.parametrize(
    "where",
    [
        "outside",
        "dotdot",
        "escaping-symlink",
        "the-root-itself",
        "a-directory",
        "another-volumes-file",
        "no-root",
    ],
)
def test_local_device_elsewhere_is_refused(tmp_path: Path, where: str) -> None:
    root = tmp_path / "volumes"
    (root / "volume-v1").mkdir(parents=True)  # named for the volume, but a directory
    (root / "snapshot-9").write_bytes(b"another volume's data")
    outside = tmp_path / "outside-v1"
    outside.write_bytes(b"host data")
    (root / "escape-v1").symlink_to(outside)
    path = {
        "outside": str(outside), "dotdot": f"{root}/../outside-v1",
        "escaping-symlink": str(root / "escape-v1"), "the-root-itself": str(root),
        "a-directory": str(root / "volume-v1"), "another-volumes-file": str(root / "snapshot-9"),
        "no-root": str(root / "volume-v1"),
    }[where]  # fmt: skip
    roots = [] if where == "no-root" else [str(root)]

    with pytest.raises(errors.InvalidRequest):
        node_trust.local_device(_local(tmp_path, path), roots)
    assert outside.read_bytes() == b"host data"


def test_a_missing_volume_file_is_not_found(tmp_path: Path) -> None:
    """Deleted behind the node's back (or a stage racing DeleteVolume): NOT_FOUND."""
    root = tmp_path / "volumes"
    root.mkdir()

    with pytest.raises(errors.ObjectNotFound, match="does not exist"):
        node_trust.local_device(_local(tmp_path, str(root / "volume-v1")), [str(root)])
