"""Cinder is imported by ``cinder_adapter`` only, and never by importing the package:
a node that only attaches serialized connections needs os-brick, not Cinder."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import csi_driver

PACKAGE_DIR = Path(csi_driver.__file__).resolve().parent
# Modules allowed to import Cinder, relative to the package directory.
ALLOWED = {
    "storage/cinder_adapter.py",  # the adapter
    "storage/drivers/file.py",  # a Cinder volume driver itself
}


def cinder_imports(path: Path) -> list[str]:
    """``line: statement`` of every import of ``cinder`` or ``cinder.*`` in a file,
    including imports inside functions and ``TYPE_CHECKING`` blocks."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name == "cinder" or name.startswith("cinder.") for name in names):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_ast_scan_sees_the_adapter_imports() -> None:
    # The scan must find what is there, or the next test would pass vacuously.
    assert cinder_imports(PACKAGE_DIR / "storage" / "cinder_adapter.py")
    assert cinder_imports(PACKAGE_DIR / "storage" / "drivers" / "file.py")


def test_only_the_cinder_adapter_and_the_file_driver_import_cinder() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(sources) > 10
    offenders = {
        str(path.relative_to(PACKAGE_DIR)): imports
        for path in sources
        if str(path.relative_to(PACKAGE_DIR)) not in ALLOWED and (imports := cinder_imports(path))
    }
    assert offenders == {}


def test_importing_the_storage_package_does_not_import_cinder() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import csi_driver.storage
        from csi_driver import storage
        storage.setup(persistence_config={"storage": "memory"})
        loaded = sorted(m for m in sys.modules if m == "cinder" or m.startswith("cinder."))
        print(json.dumps({"cinder": loaded, "storage": "csi_driver.storage" in sys.modules}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = result.stdout.strip().splitlines()[-1]
    assert report == '{"cinder": [], "storage": true}'
