"""Container images for the single-node test cluster, made without an engine or a registry.

Why: the node's containerd has no registry to pull from and the machine has no Docker
engine, so the images a test pod needs are written here as OCI image archives (one
uncompressed layer, Python's standard library only) and imported with
``ctr -n k8s.io images import``. The index's manifest carries the annotation
``io.containerd.image.name``: that is what names the image on import.

- ``pause_image()``: the pod sandbox image (``pause.c`` compiled static with gcc), the
  one containerd's CRI pins (``cluster.py up --node`` imports it).
- ``busybox_image()``: Debian's busybox-static with one symlink per applet, for test pods
  (sh, sleep, mount, wget with TLS, ...).

Both are cached under ``~/.cache/csi-driver/images/`` as ``<name>-<tag>.tar``; the tag
is a digest of what went in (the C source, the busybox binary), so a change makes a new
image and an unchanged input is a cache hit. Layers are reproducible (uid/gid 0, mtime
0, sorted entries).

As a script: ``python e2e/cluster/images.py pause|busybox [--cache-dir DIR]`` prints
``<archive> <image reference>``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_CACHE = Path.home() / ".cache" / "csi-driver" / "images"
REPOSITORY = "localhost/csi-e2e"
PAUSE_SOURCE = Path(__file__).resolve().with_name("pause.c")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
_FORMAT = "1"  # bump when the archive layout below changes: every tag changes with it
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class ImageError(RuntimeError):
    """An image could not be built; the message names the missing tool or package."""


@dataclass(frozen=True)
class Image:
    """An OCI archive on disk and the reference it is imported as."""

    archive: Path
    ref: str


class Layer:
    """An uncompressed layer tar built in memory, entry by entry, owned by root."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        # closed by close(), which returns the bytes
        self._tar = tarfile.open(fileobj=self._buffer, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def directory(self, path: str, mode: int = 0o755) -> None:
        self._add(tarfile.TarInfo(path), tarfile.DIRTYPE, mode)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        self._add(info, tarfile.REGTYPE, mode, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        info = tarfile.TarInfo(path)
        info.linkname = target
        self._add(info, tarfile.SYMTYPE, 0o777)

    def _add(
        self, info: tarfile.TarInfo, kind: bytes, mode: int, data: io.BytesIO | None = None
    ) -> None:
        info.type, info.mode, info.mtime = kind, mode, 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self._tar.addfile(info, data)

    def close(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def write_oci_archive(
    out: Path,
    ref: str,
    layer: bytes,
    *,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] | None = None,
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
) -> None:
    """Write a one-layer OCI image archive (oci-layout, index.json, blobs) atomically."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    blobs: dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": list(entrypoint) if entrypoint else None,
                   "Cmd": list(cmd) if cmd else None, "Env": list(env), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created_by": "e2e/cluster/images.py"}],
    }  # fmt: skip
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(_json(config), "application/vnd.oci.image.config.v1+json"),
        "layers": [layer_desc],
    }
    manifest_desc = blob(_json(manifest), "application/vnd.oci.image.manifest.v1+json")
    tag = ref.rpartition(":")[2]
    manifest_desc["platform"] = {"architecture": arch, "os": "linux"}
    manifest_desc["annotations"] = {"io.containerd.image.name": ref,
                                    "org.opencontainers.image.ref.name": tag}  # fmt: skip
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [manifest_desc]}  # fmt: skip
    files = {"oci-layout": _json({"imageLayoutVersion": "1.0.0"}), "index.json": _json(index)}
    files.update({f"blobs/sha256/{d.removeprefix('sha256:')}": data for d, data in blobs.items()})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", delete=False) as tmp:
        try:
            with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as archive:
                for directory in ("blobs", "blobs/sha256"):
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    archive.addfile(info)
                for name, data in files.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(data), 0o644, 0
                    archive.addfile(info, io.BytesIO(data))
            tmp.flush()
            os.fchmod(tmp.fileno(), 0o644)
            os.replace(tmp.name, out)
        except BaseException:
            os.unlink(tmp.name)
            raise


def archive_image_names(archive: Path) -> list[str]:
    """The names an image archive gives its images on import (OCI or docker-archive)."""
    names: list[str] = []
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name.removeprefix("./") not in ("index.json", "manifest.json"):
                    continue
                extracted = tar.extractfile(member)
                document = json.loads(extracted.read()) if extracted else None
                if isinstance(document, dict):  # OCI index
                    for manifest in document.get("manifests", []):
                        notes = manifest.get("annotations", {})
                        name = notes.get("io.containerd.image.name") or notes.get(
                            "org.opencontainers.image.ref.name", ""
                        )
                        if "/" in name or ":" in name:  # a full reference, not a bare tag
                            names.append(name)
                elif isinstance(document, list):  # docker-archive manifest.json
                    names += [tag for entry in document for tag in entry.get("RepoTags") or []]
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise ImageError(f"{archive}: not a readable image archive: {exc}") from None
    return list(dict.fromkeys(names))


def pause_image(cache_dir: Path = IMAGE_CACHE) -> Image:
    """The pause image, compiled and packed on the first call for a given pause.c."""
    flags = ["-static", "-Os", "-s", "-Wall", "-Werror"]
    source = PAUSE_SOURCE.read_bytes()
    tag = _tag(source, " ".join(flags).encode())
    image = Image(cache_dir / f"pause-{tag}.tar", f"{REPOSITORY}/pause:{tag}")
    if image.archive.exists():
        return image
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc is not installed; run 'make node-deps' (gcc, libc6-dev)")
    with tempfile.TemporaryDirectory(prefix="pause-") as tmp:
        binary = Path(tmp) / "pause"
        done = subprocess.run([gcc, *flags, "-o", str(binary), str(PAUSE_SOURCE)],
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise ImageError(f"gcc could not build {PAUSE_SOURCE} (libc6-dev installed? "
                             f"'make node-deps'):\n{done.stderr.strip()}")  # fmt: skip
        layer = Layer()
        layer.file("pause", binary.read_bytes(), 0o755)
    write_oci_archive(image.archive, image.ref, layer.close(), entrypoint=["/pause"], env=())
    return image


def busybox_image(
    cache_dir: Path = IMAGE_CACHE,
    busybox: Path = BUSYBOX,
    *,
    name: str = "busybox",
    extra: dict[str, Path] | None = None,
    ref: str | None = None,
    entrypoint: Sequence[str] | None = None,
    cmd: Sequence[str] = ("sh",),
) -> Image:
    """A busybox userland image (sh as its command), packed on the first call.

    ``extra`` adds executables: image path (``usr/local/bin/kubectl``) -> host file; a
    static one runs as is (e.g. kubectl, to call the API server the way a pod's client
    does: busybox's wget cannot, its TLS offers only SHA-1 signatures); one at
    ``bin/<applet>`` replaces that applet. ``ref``: the
    reference to import it as (default ``<REPOSITORY>/<name>:<digest>``), for a test
    suite that asks for fixed names; ``entrypoint`` and ``cmd`` as in an image config.
    """
    extra = extra or {}
    try:
        binary = busybox.read_bytes()
        added = {path.strip("/"): source.read_bytes() for path, source in sorted(extra.items())}
    except OSError as exc:
        raise ImageError(f"{exc}; run 'make node-deps' (busybox-static)") from None
    config = _json({"ref": ref, "entrypoint": entrypoint, "cmd": list(cmd)})
    tag = _tag(binary, config, *(p.encode() + b"\0" + data for p, data in added.items()))
    image = Image(cache_dir / f"{name}-{tag}.tar", ref or f"{REPOSITORY}/{name}:{tag}")
    if image.archive.exists():
        return image
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True,
                            timeout=30, check=True).stdout.split()  # fmt: skip
    directories = {"bin", "dev", "etc", "proc", "root", "sys", "tmp", "var"}
    for path in added:
        directories.update(str(d) for d in Path(path).parents if str(d) != ".")
    layer = Layer()
    for directory in sorted(directories):  # parents first
        layer.directory(directory, 0o1777 if directory == "tmp" else 0o755)
    layer.file("bin/busybox", binary, 0o755)
    for path, data in added.items():
        layer.file(path, data, 0o755)
    for applet in sorted(set(listed) - {"busybox"}):
        if f"bin/{applet}" not in added:  # an added program replaces the applet
            layer.symlink(f"bin/{applet}", "busybox")
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    write_oci_archive(
        image.archive,
        image.ref,
        layer.close(),
        entrypoint=entrypoint,
        cmd=cmd,
        env=("PATH=/usr/local/bin:/bin",),
    )
    return image


def _tag(*parts: bytes) -> str:
    digest = hashlib.sha256(_FORMAT.encode())
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:12]


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("image", choices=("pause", "busybox"))
    parser.add_argument("--cache-dir", type=Path, default=IMAGE_CACHE)
    args = parser.parse_args(argv)
    build = pause_image if args.image == "pause" else busybox_image
    try:
        image = build(args.cache_dir)
    except ImageError as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    print(image.archive, image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
