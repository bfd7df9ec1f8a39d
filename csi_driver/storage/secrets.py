"""Keeping secrets (passwords, CHAP secrets, keyrings, tokens) out of logs and dumps.

Two layers, because Cinder drivers and os-brick log on their own:

- key-based masking of ``key=value`` / ``'key': 'value'`` text (oslo's
  ``strutils.mask_password``) and of Cinder's ``provider_auth`` form
  ``CHAP <user> <secret>``;
- literal masking of every secret value this process has been given (backend
  options declared secret, CHAP secrets, keyrings in connection info), so that a
  password logged in an unexpected shape is still hidden.

``install_log_masking()`` puts both on every log record created in the process,
whoever created it; the work is done only when a record is formatted.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_utils import strutils

MASK = "***"

# Parts of option or field names whose values are secret. Matched on the lower-cased name.
_SECRET_NAME_PARTS = (
    "password",
    "passwd",
    "secret",
    "token",
    "keyring",
    "private_key",
    "credential",
    "passphrase",
    "cephkey",
    "chap",
)
# Names that contain a secret-looking part but hold no secret.
_NOT_SECRET_NAMES = frozenset(
    {"secret_uuid", "rbd_secret_uuid", "secret_type", "chap_enabled", "use_chap_auth"}
)

_CHAP_RE = re.compile(r"(CHAP\s+\S+\s+)\S+")
# A Ceph keyring's secret line; drivers log keyrings inside dict reprs, where the
# newlines are escaped and the whole keyring no longer matches, so the key is masked too.
_KEYRING_KEY_RE = re.compile(r"^\s*key\s*=\s*(\S+)\s*$", re.MULTILINE)
_MAX_LITERALS = 4096
_MIN_LITERAL_LEN = 4


def is_secret_name(name: str) -> bool:
    """True when a field or option with this name holds a secret."""
    low = name.lower()
    if low in _NOT_SECRET_NAMES:
        return False
    return any(part in low for part in _SECRET_NAME_PARTS)


class _Literals:
    """A bounded set of secret strings, compiled into one regex on change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._regex: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if len(value) < _MIN_LITERAL_LEN:
            return
        with self._lock:
            if value in self._values:
                self._values.move_to_end(value)
                return
            self._values[value] = None
            while len(self._values) > _MAX_LITERALS:
                self._values.popitem(last=False)
            self._regex = None

    def mask(self, text: str) -> str:
        regex = self._regex
        if regex is None:
            with self._lock:
                if not self._values:
                    return text
                ordered = sorted(self._values, key=len, reverse=True)
                regex = self._regex = re.compile("|".join(map(re.escape, ordered)))
        return regex.sub(MASK, text)


_literals = _Literals()


def remember(value: Any) -> None:
    """Register a secret value so that it is masked wherever it is logged."""
    if isinstance(value, str):
        _literals.add(value)
        match = _CHAP_RE.match(value)
        if match:
            _literals.add(value[match.end(1) :])
        for key in _KEYRING_KEY_RE.findall(value):
            _literals.add(key)


def remember_secrets_in(data: Any) -> None:
    """Register every value held under a secret-looking key, at any depth."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if (isinstance(key, str) and is_secret_name(key) and isinstance(value, str)) or (
                key == "provider_auth" and isinstance(value, str)
            ):
                remember(value)
            else:
                remember_secrets_in(value)
    elif isinstance(data, list | tuple):
        for item in data:
            remember_secrets_in(item)


def mask_text(text: str) -> str:
    """Hide every secret this module can recognise in a piece of text."""
    text = strutils.mask_password(text, secret=MASK)
    text = _CHAP_RE.sub(r"\1" + MASK, text)
    return _literals.mask(text)


def masked(data: Any, extra_secret_names: Iterable[str] = ()) -> Any:
    """A deep copy of ``data`` with secret values replaced by ``***``."""
    extra = frozenset(extra_secret_names)

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if isinstance(key, str) and (key in extra or is_secret_name(key)) and item:
                    out[key] = MASK
                elif key == "provider_auth" and isinstance(item, str):
                    out[key] = _CHAP_RE.sub(r"\1" + MASK, item)
                else:
                    out[key] = walk(item)
            return out
        if isinstance(value, list | tuple):
            return [walk(item) for item in value]
        return value

    return walk(data)


class _MaskingLogRecord(logging.LogRecord):
    """A log record whose message and traceback text come out masked."""

    def getMessage(self) -> str:
        return mask_text(super().getMessage())

    @property
    def exc_text(self) -> str | None:  # type: ignore[override]
        text = self.__dict__.get("_exc_text")
        if text is None and self.exc_info and self.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*self.exc_info)).rstrip("\n")
            text = self.__dict__["_exc_text"] = mask_text(text)
        return text

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self.__dict__["_exc_text"] = mask_text(value) if value else value


_installed = False
_install_lock = threading.Lock()


def install_log_masking() -> None:
    """Make every log record of this process mask secrets when formatted.

    Idempotent. Records from a factory someone else installed before are left to
    that factory, after which ours masks the message and traceback.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        if previous is logging.LogRecord:
            logging.setLogRecordFactory(_MaskingLogRecord)
        else:
            classes: dict[type, type] = {}

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                cls = type(record)
                if cls not in classes:
                    classes[cls] = type("Masking" + cls.__name__, (_MaskingLogRecord, cls), {})
                exc_text = record.__dict__.pop("exc_text", None)
                record.__class__ = classes[cls]
                record.exc_text = exc_text
                return record

            logging.setLogRecordFactory(factory)
        _installed = True
