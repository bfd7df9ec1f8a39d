"""Generate every protobuf/gRPC stub package from the pinned protos (``make proto``).

Run with grpc_tools importable, from anywhere: ``.venv/bin/python proto/generate.py``.
Each proto is copied under its package's path in a scratch directory, so the modules
protoc writes import each other as ``csi_driver.csi_pb.*``. protoc is given only that
directory and protobuf's own types (shipped with grpc_tools): a pinned proto importing
anything else, such as the gogo options of k8s.io/kubelet v0.33 and older, is refused
here rather than half-supported. The output is never edited by hand, nor committed.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
_INIT = '"""Generated from {proto} by `make proto`; do not edit."""\n\n{constant} = "{version}"\n'


@dataclasses.dataclass(frozen=True)
class Stubs:
    """One pinned proto and the package generated from it (paths from the repo root)."""

    proto: str
    #: The pin (module, version, go.sum hash) that ``make proto-verify`` checks.
    pin: str
    package: str
    #: The constant ``__init__.py`` gives the pinned version under.
    constant: str


STUBS = (
    Stubs("proto/csi.proto", "proto/SOURCE", "csi_driver/csi_pb", "SPEC_VERSION"),
    Stubs(
        "proto/pluginregistration/api.proto",
        "proto/pluginregistration/SOURCE",
        "csi_driver/kubelet/registration_pb",
        "API_VERSION",
    ),
)


class GenerationError(RuntimeError):
    """A proto cannot be turned into stubs; the message names the file."""


def pinned_version(pin: Path) -> str:
    for line in pin.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        if key == "version" and value.strip():
            return value.strip()
    raise GenerationError(f"{pin}: no 'version' line")


def check_imports(proto: Path) -> None:
    """Only protobuf's own types may be imported (they come with grpc_tools)."""
    for name in _IMPORT.findall(proto.read_text(encoding="utf-8")):
        if not name.startswith("google/protobuf/"):
            raise GenerationError(
                f"{proto} imports {name!r}: only google/protobuf/* is available to protoc "
                "here; generating it would need that proto pinned too"
            )


def generate(stubs: Stubs, root: Path = ROOT) -> list[Path]:
    """Write the stub modules and ``__init__.py`` of one package; returns the files."""
    from grpc_tools import protoc

    proto = root / stubs.proto
    check_imports(proto)
    version = pinned_version(root / stubs.pin)
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="csi-proto-") as scratch:
        source = Path(scratch, "in", stubs.package, proto.name)
        source.parent.mkdir(parents=True)
        shutil.copyfile(proto, source)
        out = Path(scratch, "out")
        out.mkdir()
        code = protoc.main([
            "grpc_tools.protoc", f"-I{scratch}/in", f"-I{well_known}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            f"{stubs.package}/{proto.name}",
        ])  # fmt: skip
        if code != 0:
            raise GenerationError(f"protoc failed on {stubs.proto} (exit {code})")
        package = root / stubs.package
        package.mkdir(parents=True, exist_ok=True)
        written = []
        for generated in sorted(Path(out, stubs.package).iterdir()):
            shutil.copyfile(generated, package / generated.name)
            written.append(package / generated.name)
    init = package / "__init__.py"
    init.write_text(_INIT.format(proto=stubs.proto, constant=stubs.constant, version=version))
    return [*written, init]


def main() -> int:
    try:
        for stubs in STUBS:
            files = generate(stubs)
            print(f"{stubs.proto} -> {', '.join(str(f.relative_to(ROOT)) for f in files)}")
    except (GenerationError, OSError) as exc:
        print(f"proto/generate.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
