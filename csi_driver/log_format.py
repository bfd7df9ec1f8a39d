"""One log record, one line: a formatter that escapes line breaks and control characters.

Requests carry strings the plugin did not choose (names, ids, paths) and error messages
quote them. Written raw, a newline in a volume id starts a line that looks like a record
of its own, and an escape sequence rewrites the terminal showing the log. Escaping the
whole formatted text, traceback included, keeps every record on exactly one line.
"""

from __future__ import annotations

import logging

#: The line format of every command of the plugin.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: C0 controls, DEL, C1 controls, and the Unicode line and paragraph separators
#: (str.splitlines and some log viewers break lines there too).
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]
ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROLS
}


def one_line(text: str) -> str:
    """``text`` with every line break and control character written as an escape."""
    return text.translate(ESCAPES)


class OneLineFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose output never spans lines (backslashes are left as
    they are: an escape in the log may also have been sent literally)."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))
