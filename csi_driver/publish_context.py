"""The publish_context document the controller hands the node: its keys, and its
signature.

Kubernetes keeps publish_context in the VolumeAttachment's status, so whoever may write
that object could otherwise hand a node any "connection" to attach: another tenant's
iSCSI target, or a host file to format. With a key configured, the controller signs
the serialized Connection (HMAC-SHA256) and the node attaches only what carries a valid
signature. The key lives in a file both roles read (in Kubernetes a Secret mounted into
the controller and node pods): its first line signs, and every line verifies, so a key
is rotated by adding the new one below, moving it to the top, then dropping the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat

from csi_driver.config import ConfigError
from csi_driver.storage import secrets

LOG = logging.getLogger(__name__)

#: publish_context key holding the serialized Connection (its ``jsons`` form).
CONNECTION_KEY = "connection"
#: publish_context key holding the signature of the serialized connection.
SIGNATURE_KEY = "signature"
_SCHEME = "hmac-sha256:"
#: Fewer bytes than this cannot be a key anyone generated for the purpose.
MIN_KEY_BYTES = 16


class SigningKeyError(ConfigError):
    """The key file is missing, unreadable or holds no usable key (stops the start-up)."""


class Keys:
    """The keys read from one file: ``sign`` uses the first, ``verify`` tries all."""

    def __init__(self, keys: list[bytes], path: str) -> None:
        self._keys = keys
        self.path = path

    def sign(self, document: str) -> str:
        return _SCHEME + hmac.new(self._keys[0], document.encode(), hashlib.sha256).hexdigest()

    def verify(self, document: str, signature: str) -> bool:
        if not signature.startswith(_SCHEME):
            return False
        given = signature[len(_SCHEME) :].encode()
        return any(
            hmac.compare_digest(given, hmac.new(k, document.encode(), hashlib.sha256)
                                .hexdigest().encode())
            for k in self._keys
        )  # fmt: skip


def load(path: str) -> Keys:
    """Read the key file (one key per line; blank lines ignored)."""
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            lines = handle.read().splitlines()
    except OSError as exc:
        raise SigningKeyError(f"signing_key_file {path}: cannot read it: {exc.strerror}") from None
    keys = [line.strip() for line in lines if line.strip()]
    if not keys:
        raise SigningKeyError(f"signing_key_file {path}: holds no key")
    short = [n for n, k in enumerate(keys, 1) if len(k) < MIN_KEY_BYTES]
    if short:
        raise SigningKeyError(
            f"signing_key_file {path}: line {short[0]} holds a key shorter than "
            f"{MIN_KEY_BYTES} bytes (generate one with e.g. `head -c 32 /dev/urandom | base64`)"
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        LOG.warning("signing_key_file %s can be read by other users (mode %o); make it 0600",
                    path, stat.S_IMODE(mode))  # fmt: skip
    for key in keys:
        secrets.remember(key.decode(errors="replace"))
    return Keys(keys, path)
