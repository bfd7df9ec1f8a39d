"""Loading the e2e harnesses (scripts that are also modules) and reporting their timings.

The harnesses under ``e2e/`` are not a package: tests load each by path, once, under
a module name of their own, and print how long their servers took to start and stop.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def load_by_path(module_name: str, path: Path) -> ModuleType:
    """The module in ``path``, loaded once and registered as ``module_name``."""
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def report_timings(terminalreporter: Any, title: str, timings: dict[str, list[float]]) -> None:
    """One line per event: min / max seconds over its runs (pytest_terminal_summary)."""
    if not timings:
        return
    terminalreporter.section(f"{title} (seconds: min / max over n)")
    for label, values in timings.items():
        terminalreporter.line(
            f"{label:<40} {min(values):7.3f} / {max(values):7.3f}  n={len(values)}"
        )
