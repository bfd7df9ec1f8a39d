"""Which mirror this machine's apt uses for a suite, read from its own sources.

The image builds and the nvmetcli download must reach Debian through the mirror the
machine is configured with (a project file may not name a registry host), so they ask
this script instead of hard-coding one:

    apt_sources.py uri bookworm              -> the URI serving bookworm
    apt_sources.py keyring bookworm          -> its Signed-By keyring ("" if none)
    apt_sources.py line bookworm unstable    -> a one-line sources.list entry for
                                                `unstable`, same mirror, components and
                                                keyring as `bookworm`

Enabled ``deb`` entries of /etc/apt/sources.list, sources.list.d/*.list (one-line
format) and sources.list.d/*.sources (deb822) are read, in apt's order.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

APT_ETC = Path("/etc/apt")


@dataclass(frozen=True)
class Entry:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str


def _one_line(text: str) -> list[Entry]:
    entries = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        options: dict[str, str] = {}
        if words and words[0].startswith("["):
            bracket = []
            while words:
                bracket.append(words.pop(0))
                if bracket[-1].endswith("]"):
                    break
            for option in " ".join(bracket).strip("[] ").split():
                key, _, value = option.partition("=")
                options[key] = value
        if len(words) >= 2:
            uri, suite, *components = words
            entries.append(Entry(uri, (suite,), tuple(components), options.get("signed-by", "")))
    return entries


def _deb822(text: str) -> list[Entry]:
    entries = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append(
                Entry(
                    uri,
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                    fields.get("signed-by", ""),
                )
            )
    return entries


def entries(etc: Path = APT_ETC) -> list[Entry]:
    """Every enabled deb entry, in the order apt reads the files."""
    found = []
    main = etc / "sources.list"
    if main.is_file():
        found += _one_line(main.read_text())
    parts = etc / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        if path.suffix == ".list":
            found += _one_line(path.read_text())
        elif path.suffix == ".sources":
            found += _deb822(path.read_text())
    return found


def serving(suite: str, etc: Path = APT_ETC) -> Entry:
    for entry in entries(etc):
        if suite in entry.suites:
            return entry
    raise SystemExit(f"apt_sources: no enabled deb entry for suite {suite!r} under {etc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("uri", "keyring", "line"))
    parser.add_argument("suite", help="a suite the machine's apt already uses")
    parser.add_argument("new_suite", nargs="?", help="line: the suite to write (default: SUITE)")
    parser.add_argument("--etc", type=Path, default=APT_ETC, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    entry = serving(args.suite, args.etc)
    if args.what == "uri":
        print(entry.uri.rstrip("/"))
    elif args.what == "keyring":
        print(entry.signed_by)
    else:
        options = f"[signed-by={entry.signed_by}] " if entry.signed_by else ""
        components = " ".join(entry.components) or "main"
        print(f"deb {options}{entry.uri} {args.new_suite or args.suite} {components}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
